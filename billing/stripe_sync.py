"""Stripe, through the official client: a customer per tenant, each finalized invoice sent as a Stripe invoice
with one invoice item per line, the billing portal, and voiding or writing off an invoice there too.

Every creating call carries an idempotency key derived from local ids, and every Stripe id is stored as soon as it
exists, so a retry (a lost response, a worker killed mid-sync, Stripe down for a while) never charges twice: the
customer once per tenant ("vajra-customer-<tenant pk>"), then per invoice "vajra-<invoice id>-invoice", one item
per line "vajra-<invoice id>-item-<line position>" (lines already on the Stripe draft are skipped, which holds
beyond Stripe's 24 h key window too) and "vajra-<invoice id>-finalize". Before finalizing, the Stripe draft's
subtotal must equal the local total to the cent, or nothing is finalized and the mismatch is logged.

The Stripe invoice is created before its items, which name it (``invoice=``), with pending items excluded: a
customer's stray pending items can never slip onto it. Without STRIPE_SECRET_KEY this module is never called.
"""

import logging
import time
from decimal import Decimal

import stripe
from django.conf import settings
from django.db import transaction

from tenants.models import Membership
from tenants.roles import OWNER
from vajra.errors import Conflict

from .models import BillingAccount, Invoice
from .plans import account_for

log = logging.getLogger(__name__)

TASK_SYNC = "control.invoice_stripe_sync"


class StripeMismatch(Exception):
    """The Stripe draft does not add up to the local invoice: it is left unfinalized for an operator."""


def stripe_enabled():
    return bool(settings.STRIPE_SECRET_KEY)


def stripe_client():
    options = {"base_addresses": {"api": settings.STRIPE_API_BASE}} if settings.STRIPE_API_BASE else {}
    return stripe.StripeClient(settings.STRIPE_SECRET_KEY, max_network_retries=settings.STRIPE_MAX_NETWORK_RETRIES,
                               **options)


def cents(amount):
    return int((Decimal(amount) * 100).to_integral_value())


def send_stripe_sync(*, invoice_id):
    """After commit, queue the invoice's Stripe sync on the control queue (nothing in local-only mode)."""
    if not stripe_enabled():
        return

    def send():
        from vajra.celery import app

        app.send_task(TASK_SYNC, args=[invoice_id], queue="control")

    transaction.on_commit(send)


def customer_for(*, tenant, client=None):
    """The tenant's Stripe customer id, created once (and stored at once) if it has none."""
    account = account_for(tenant, create=True)
    if account.stripe_customer_id:
        return account.stripe_customer_id
    client = client or stripe_client()
    owner = (Membership.objects.filter(tenant=tenant, role=OWNER).select_related("user").order_by("created_at")
             .first())
    params = {"name": tenant.name, "metadata": {"vajra_tenant_id": str(tenant.pk), "vajra_tenant": tenant.slug}}
    if owner is not None:
        params["email"] = owner.user.email
    customer = client.v1.customers.create(params=params, options={"idempotency_key": f"vajra-customer-{tenant.pk}"})
    BillingAccount.objects.filter(pk=account.pk, stripe_customer_id="").update(stripe_customer_id=customer.id)
    return BillingAccount.objects.values_list("stripe_customer_id", flat=True).get(pk=account.pk)


def _stripe_draft(client, invoice, customer):
    if invoice.stripe_invoice_id:
        return client.v1.invoices.retrieve(invoice.stripe_invoice_id)
    remote = client.v1.invoices.create(params={
        "customer": customer,
        "currency": invoice.currency,
        "collection_method": "charge_automatically",
        "auto_advance": False,  # Stripe leaves the draft alone while its items are added; finalize turns it on
        "pending_invoice_items_behavior": "exclude",
        "description": f"VAJRA usage, {invoice.period:%B %Y} (invoice {invoice.number})",
        "metadata": {"vajra_invoice_id": invoice.id, "vajra_invoice_number": invoice.number},
    }, options={"idempotency_key": f"vajra-{invoice.id}-invoice"})
    Invoice.objects.filter(id=invoice.id, stripe_invoice_id="").update(stripe_invoice_id=remote.id)
    invoice.stripe_invoice_id = remote.id
    return remote


def _lines_on_stripe(client, stripe_invoice_id):
    positions = set()
    for line in client.v1.invoices.line_items.list(stripe_invoice_id, params={"limit": 100}).auto_paging_iter():
        metadata = line.metadata.to_dict() if line.metadata else {}
        if "vajra_line" in metadata:
            positions.add(metadata["vajra_line"])
    return positions


def invoice_stripe_sync(*, invoice_id):
    """Sends an open invoice to Stripe and finalizes it there; stores the Stripe id and the pay link. Safe to
    repeat at any point. Returns what it did."""
    invoice = Invoice.objects.select_related("tenant").get(id=invoice_id)
    if invoice.status != Invoice.OPEN:
        return f"skipped: {invoice.status}"
    if invoice.hosted_invoice_url:
        return "skipped: already on Stripe"
    client = stripe_client()
    customer = customer_for(tenant=invoice.tenant, client=client)
    remote = _stripe_draft(client, invoice, customer)
    if remote.status == "draft":
        present = _lines_on_stripe(client, remote.id)
        for line in invoice.lines.all():
            if str(line.position) in present:
                continue
            client.v1.invoice_items.create(params={
                "customer": customer,
                "invoice": remote.id,
                "amount": cents(line.amount),
                "currency": invoice.currency,
                "description": line.description,
                "metadata": {"vajra_invoice_id": invoice.id, "vajra_line": str(line.position)},
            }, options={"idempotency_key": f"vajra-{invoice.id}-item-{line.position}"})
        remote = client.v1.invoices.retrieve(remote.id)
        if remote.subtotal != cents(invoice.total):
            log.error("invoice %s: the Stripe draft %s adds up to %s cents, not %s: not finalized", invoice.number,
                      remote.id, remote.subtotal, cents(invoice.total))
            raise StripeMismatch(f"Stripe invoice {remote.id} subtotal {remote.subtotal} != {cents(invoice.total)}")
        remote = client.v1.invoices.finalize_invoice(remote.id, params={"auto_advance": True},
                                                     options={"idempotency_key": f"vajra-{invoice.id}-finalize"})
    Invoice.objects.filter(id=invoice.id, hosted_invoice_url="").update(
        hosted_invoice_url=remote.hosted_invoice_url or "")
    log.info("invoice %s on Stripe as %s (%s)", invoice.number, remote.id, remote.status)
    return f"finalized on Stripe: {remote.status}"


def invoices_stripe_sync_pending(*, limit, seconds):
    """Open invoices not finalized on Stripe yet, oldest first, at most ``limit``, starting none after ``seconds``:
    synced one by one. A failure is logged and left for the next run."""
    if not stripe_enabled():
        return []
    ids = list(Invoice.objects.filter(status=Invoice.OPEN, hosted_invoice_url="").order_by("finalized_at")
               .values_list("id", flat=True)[:limit])
    started, done = time.monotonic(), []
    for invoice_id in ids:
        if time.monotonic() - started > seconds:
            break
        try:
            invoice_stripe_sync(invoice_id=invoice_id)
        except (stripe.StripeError, StripeMismatch):
            log.exception("invoice %s: Stripe sync failed; retried next run", invoice_id)
            continue
        done.append(invoice_id)
    return done


def stripe_invoice_status(*, invoice, to):
    """Voids or writes off the invoice on Stripe too, so Stripe stops collecting it. One not finalized on Stripe yet
    is a 409 until its sync has finished: voided here meanwhile, the sync could still send it to be collected."""
    if not invoice.hosted_invoice_url:
        raise Conflict(f"Invoice {invoice.number} is still being sent to Stripe; try again in a few minutes.",
                       code="stripe_sync_pending")
    client = stripe_client()
    if to == Invoice.VOID:
        client.v1.invoices.void_invoice(invoice.stripe_invoice_id,
                                        options={"idempotency_key": f"vajra-{invoice.id}-void"})
    elif to == Invoice.UNCOLLECTIBLE:
        client.v1.invoices.mark_uncollectible(invoice.stripe_invoice_id,
                                              options={"idempotency_key": f"vajra-{invoice.id}-uncollectible"})
    else:
        raise Conflict(f"Invoice {invoice.number} is collected by Stripe: it is marked paid when Stripe says so.",
                       code="invoice_state")


def portal_url(*, tenant, return_url):
    """A Stripe billing portal session for the tenant's payment methods (a short-lived link)."""
    client = stripe_client()
    customer = customer_for(tenant=tenant, client=client)
    session = client.v1.billing_portal.sessions.create(params={"customer": customer, "return_url": return_url})
    return session.url
