"""Stripe, against the Stripe fake over real HTTP (tests/stripe_fake.py: localstripe, extended
for what it lacks), with the real ``stripe`` client: a customer once per tenant, invoice + items + finalize with
idempotency keys from local ids, a retry that charges once, the webhook (signature, paid, failed, void,
uncollectible, duplicates and replays, unknown types), the billing portal, and local-only mode."""

import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import stripe
from django.test import Client
from django.urls import reverse

from billing.invoices import invoice_transition
from billing.models import BillingAccount, Invoice, StripeEvent, UsageEvent
from billing.stripe_sync import (
    TASK_SYNC,
    StripeMismatch,
    customer_for,
    invoice_stripe_sync,
    invoices_stripe_sync_pending,
    stripe_client,
)
from tests.billing_helpers import PERIOD, WEBHOOK_SECRET, base_model, close, invoice_of, stripe_signature, usage
from tests.factories import make_adapter

ROOT = Path(__file__).resolve().parent.parent


def posts(fake, path):
    return [entry for entry in fake.journal() if entry["method"] == "POST" and entry["path"] == path]


def close_and_sync(sent_tasks, django_capture_on_commit_callbacks):
    """The period close, then the Stripe sync tasks it queued after commit, run here."""
    with django_capture_on_commit_callbacks(execute=True):
        closed, _ = close()
    synced = [args[0] for name, args in sent_tasks if name == TASK_SYNC]
    assert synced == closed
    for invoice_id in synced:
        invoice_stripe_sync(invoice_id=invoice_id)
    return closed


@pytest.fixture
def acme_usage(acme, alice, plan):
    bot = make_adapter(acme, base_model(), "support-bot")
    usage(acme, "3.3333333333", tier="hot", adapter=bot)
    usage(acme, "1.3333333333", tier="cold", adapter=bot)
    usage(acme, "-0.0190000000", kind=UsageEvent.SLO_CREDIT, tier="hot")
    return acme


@pytest.fixture
def synced_invoice(stripe_on, acme_usage, sent_tasks, django_capture_on_commit_callbacks):
    close_and_sync(sent_tasks, django_capture_on_commit_callbacks)
    return invoice_of(acme_usage)


# ---- customer, invoice, items, finalize ------------------------------------------------------------------------

def test_a_customer_is_created_once_per_tenant(stripe_on, acme, alice):
    first = customer_for(tenant=acme)
    assert customer_for(tenant=acme) == first
    assert BillingAccount.objects.get(tenant=acme).stripe_customer_id == first
    created = posts(stripe_on, "/v1/customers")
    assert len(created) == 1
    assert created[0]["idempotency_key"] == f"vajra-customer-{acme.pk}"
    assert created[0]["params"]["email"] == "alice@acme.test"
    assert created[0]["params"]["metadata"] == {"vajra_tenant_id": str(acme.pk), "vajra_tenant": "acme"}


def test_period_close_creates_the_invoice_its_items_and_finalizes_with_idempotency_keys(synced_invoice, stripe_on):
    invoice = synced_invoice
    lines = list(invoice.lines.order_by("position"))
    calls = [(e["path"], e["idempotency_key"]) for e in stripe_on.journal() if e["method"] == "POST"]
    assert calls == [
        ("/v1/customers", f"vajra-customer-{invoice.tenant_id}"),
        ("/v1/invoices", f"vajra-{invoice.id}-invoice"),
        *[("/v1/invoiceitems", f"vajra-{invoice.id}-item-{line.position}") for line in lines],
        (f"/v1/invoices/{invoice.stripe_invoice_id}/finalize", f"vajra-{invoice.id}-finalize"),
    ]
    items = posts(stripe_on, "/v1/invoiceitems")
    assert [int(item["params"]["amount"]) for item in items] == [int(line.amount * 100) for line in lines]
    assert [item["params"]["invoice"] for item in items] == [invoice.stripe_invoice_id] * len(lines)
    created = posts(stripe_on, "/v1/invoices")[0]["params"]
    assert created["pending_invoice_items_behavior"] == "exclude"
    assert created["metadata"] == {"vajra_invoice_id": invoice.id, "vajra_invoice_number": "VAJ-202610-0001"}

    remote = stripe_client().v1.invoices.retrieve(invoice.stripe_invoice_id)
    assert remote.status == "open" and remote.amount_due == int(invoice.total * 100) == 465
    assert invoice.hosted_invoice_url == remote.hosted_invoice_url and invoice.hosted_invoice_url.startswith("http")


def test_syncing_again_does_nothing(synced_invoice, stripe_on):
    before = len(stripe_on.journal())
    assert invoice_stripe_sync(invoice_id=synced_invoice.id) == "skipped: already on Stripe"
    assert invoices_stripe_sync_pending(limit=10, seconds=10) == []
    assert len(stripe_on.journal()) == before


def test_a_sync_that_failed_halfway_is_finished_by_the_sweep_without_charging_twice(
        stripe_on, acme_usage, sent_tasks, django_capture_on_commit_callbacks):
    stripe_on.fail(r"/finalize$", times=1)
    with django_capture_on_commit_callbacks(execute=True):
        (invoice_id,), _ = close()
    with pytest.raises(stripe.APIError):
        invoice_stripe_sync(invoice_id=invoice_id)
    invoice = Invoice.objects.get(id=invoice_id)
    assert invoice.stripe_invoice_id and not invoice.hosted_invoice_url
    items_before = len(posts(stripe_on, "/v1/invoiceitems"))

    assert invoices_stripe_sync_pending(limit=10, seconds=10) == [invoice_id]

    invoice = Invoice.objects.get(id=invoice_id)
    assert invoice.hosted_invoice_url
    assert len(posts(stripe_on, "/v1/invoiceitems")) == items_before  # the lines already there were skipped
    remote = stripe_client().v1.invoices.retrieve(invoice.stripe_invoice_id)
    assert remote.status == "open" and remote.subtotal == int(invoice.total * 100)
    assert len(posts(stripe_on, "/v1/invoices")) == 1 and len(posts(stripe_on, "/v1/customers")) == 1


def test_a_lost_response_is_replayed_by_its_idempotency_key(stripe_on, acme_usage, sent_tasks,
                                                            django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        (invoice_id,), _ = close()
    invoice_stripe_sync(invoice_id=invoice_id)
    stripe_id = Invoice.objects.get(id=invoice_id).stripe_invoice_id
    # As if the invoice's create response had been lost: the same call again gets the same invoice back.
    again = stripe_client().v1.invoices.create(params=posts(stripe_on, "/v1/invoices")[0]["params"],
                                               options={"idempotency_key": f"vajra-{invoice_id}-invoice"})
    assert again.id == stripe_id
    assert len(stripe_client().v1.invoices.list(params={"limit": 100}).data) == 1


def test_a_draft_that_does_not_add_up_is_not_finalized(stripe_on, acme_usage, sent_tasks,
                                                      django_capture_on_commit_callbacks):
    stripe_on.fail(r"/finalize$", times=1)
    with django_capture_on_commit_callbacks(execute=True):
        (invoice_id,), _ = close()
    with pytest.raises(stripe.APIError):
        invoice_stripe_sync(invoice_id=invoice_id)
    invoice = Invoice.objects.get(id=invoice_id)
    customer = BillingAccount.objects.get(tenant=invoice.tenant).stripe_customer_id
    stripe_client().v1.invoice_items.create(params={"customer": customer, "invoice": invoice.stripe_invoice_id,
                                                    "amount": 999, "currency": "usd", "description": "stray"})
    with pytest.raises(StripeMismatch):
        invoice_stripe_sync(invoice_id=invoice_id)
    assert stripe_client().v1.invoices.retrieve(invoice.stripe_invoice_id).status == "draft"
    assert not Invoice.objects.get(id=invoice_id).hosted_invoice_url


def test_the_billing_page_shows_the_pay_link_of_an_open_invoice(synced_invoice, alice_client, dana_client):
    for client in (alice_client, dana_client):
        html = client.get(reverse("billing")).content.decode()
        assert "data-local-only" not in html
        assert f'href="{synced_invoice.hosted_invoice_url}"' in html and "data-pay-link" in html
    invoice_page = alice_client.get(reverse("invoice", args=[synced_invoice.id])).content.decode()
    assert "Pay this invoice" in invoice_page and "Mark paid" not in invoice_page
    invoice_transition(invoice_id=synced_invoice.id, to=Invoice.PAID)
    assert "data-pay-link" not in alice_client.get(reverse("billing")).content.decode()


# ---- dashboard actions with Stripe on --------------------------------------------------------------------------

@pytest.mark.parametrize("action,status,path", [
    ("void", Invoice.VOID, "void"),
    ("mark-uncollectible", Invoice.UNCOLLECTIBLE, "mark_uncollectible"),
])
def test_void_and_write_off_happen_on_stripe_too(synced_invoice, stripe_on, olga_client, action, status, path):
    response = olga_client.post(reverse("invoice-action", args=[synced_invoice.id, action]))
    assert response.status_code == 302
    assert invoice_of(synced_invoice.tenant).status == status
    call = posts(stripe_on, f"/v1/invoices/{synced_invoice.stripe_invoice_id}/{path}")
    assert [c["idempotency_key"] for c in call] == [f"vajra-{synced_invoice.id}-{path.removeprefix('mark_')}"]
    assert stripe_client().v1.invoices.retrieve(synced_invoice.stripe_invoice_id).status == status


def test_paid_is_stripes_word_when_stripe_is_on(synced_invoice, olga_client, unchanged_db):
    with unchanged_db():
        response = olga_client.post(reverse("invoice-action", args=[synced_invoice.id, "mark-paid"]))
    assert response.status_code == 409 and b"collected by Stripe" in response.content


def test_an_invoice_still_being_sent_to_stripe_cannot_be_voided_yet(stripe_on, acme_usage, olga_client,
                                                                   sent_tasks, unchanged_db):
    (invoice_id,), _ = close()  # its sync task never ran
    with unchanged_db():
        response = olga_client.post(reverse("invoice-action", args=[invoice_id, "void"]))
    assert response.status_code == 409 and b"still being sent to Stripe" in response.content


def test_stripe_refusing_an_action_changes_nothing(synced_invoice, stripe_on, olga_client, unchanged_db):
    stripe_on.fail(r"/void$", times=1)
    with unchanged_db():
        response = olga_client.post(reverse("invoice-action", args=[synced_invoice.id, "void"]))
    assert response.status_code == 502 and b"Nothing was changed" in response.content


# ---- the webhook -----------------------------------------------------------------------------------------------

def event_payload(event_type, stripe_invoice, event_id=None):
    return json.dumps({
        "id": event_id or f"evt_{event_type.replace('.', '_')}_{stripe_invoice['id']}", "object": "event",
        "api_version": stripe.api_version, "created": int(time.time()), "livemode": False, "pending_webhooks": 1,
        "type": event_type, "data": {"object": stripe_invoice},
    }).encode()


def deliver(payload, signature="sign", **headers):
    """POSTs like Stripe does: no session, CSRF checks on (the endpoint must be exempt)."""
    if signature == "sign":
        signature = stripe_signature(payload)
    if signature is not None:
        headers["HTTP_STRIPE_SIGNATURE"] = signature
    return Client(enforce_csrf_checks=True).post(reverse("stripe-webhook"), data=payload,
                                                 content_type="application/json", **headers)


def remote_invoice(invoice, **changes):
    remote = stripe_client().v1.invoices.retrieve(invoice.stripe_invoice_id).to_dict()
    remote.pop("lines", None)
    return {**remote, **changes}


def test_invoice_paid_marks_it_paid_and_the_account_active(synced_invoice):
    BillingAccount.objects.filter(tenant=synced_invoice.tenant).update(standing=BillingAccount.PAST_DUE)
    paid_at = int(time.time()) - 60
    response = deliver(event_payload("invoice.paid", remote_invoice(
        synced_invoice, status="paid", status_transitions={"paid_at": paid_at})))
    assert response.status_code == 200 and response.json()["received"] is True
    invoice = invoice_of(synced_invoice.tenant)
    assert invoice.status == Invoice.PAID and int(invoice.paid_at.timestamp()) == paid_at
    account = BillingAccount.objects.get(tenant=synced_invoice.tenant)
    assert account.standing == BillingAccount.ACTIVE and account.past_due_since is None


def test_payment_failed_puts_the_account_past_due(synced_invoice):
    response = deliver(event_payload("invoice.payment_failed", remote_invoice(synced_invoice)))
    assert response.status_code == 200
    account = BillingAccount.objects.get(tenant=synced_invoice.tenant)
    assert account.standing == BillingAccount.PAST_DUE and account.past_due_since is not None
    assert invoice_of(synced_invoice.tenant).status == Invoice.OPEN


@pytest.mark.parametrize("event_type,status", [
    ("invoice.voided", Invoice.VOID),
    ("invoice.marked_uncollectible", Invoice.UNCOLLECTIBLE),
])
def test_void_and_uncollectible_events(synced_invoice, event_type, status):
    assert deliver(event_payload(event_type, remote_invoice(synced_invoice))).status_code == 200
    invoice = invoice_of(synced_invoice.tenant)
    assert invoice.status == status and (invoice.voided_at is not None) == (status == Invoice.VOID)


def test_an_invoice_found_by_its_metadata_when_its_stripe_id_was_never_stored(synced_invoice):
    stripe_id = synced_invoice.stripe_invoice_id
    Invoice.objects.filter(id=synced_invoice.id).update(stripe_invoice_id="")
    synced_invoice.stripe_invoice_id = stripe_id
    assert deliver(event_payload("invoice.paid", remote_invoice(synced_invoice))).status_code == 200
    invoice = invoice_of(synced_invoice.tenant)
    assert invoice.status == Invoice.PAID and invoice.stripe_invoice_id == stripe_id


def test_duplicates_and_replays_are_ignored(synced_invoice):
    payload = event_payload("invoice.voided", remote_invoice(synced_invoice))
    assert deliver(payload).status_code == 200
    before = (invoice_of(synced_invoice.tenant).voided_at, StripeEvent.objects.count())
    again = deliver(payload)  # the same event, signed afresh (Stripe's retry)
    assert again.status_code == 200 and "already handled" in again.json()["result"]
    assert (invoice_of(synced_invoice.tenant).voided_at, StripeEvent.objects.count()) == before
    stale = deliver(payload, signature=stripe_signature(payload, timestamp=int(time.time()) - 3600))
    assert stale.status_code == 400  # a captured request replayed later: outside the signature's tolerance


@pytest.mark.parametrize("signature", [
    None,
    "",
    "t=1,v1=deadbeef",
    "bad secret",
    "tampered",
])
def test_a_bad_or_missing_signature_is_400_and_changes_nothing(synced_invoice, unchanged_db, signature):
    payload = event_payload("invoice.paid", remote_invoice(synced_invoice, status="paid"))
    if signature == "bad secret":
        signature = stripe_signature(payload, secret="whsec_someone_else")
    elif signature == "tampered":
        signature = stripe_signature(payload)
        payload = payload.replace(b'"invoice.paid"', b'"invoice.voided"')
    with unchanged_db():
        response = deliver(payload, signature=signature)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_signature"


def test_without_a_webhook_secret_every_event_is_refused(synced_invoice, settings, unchanged_db):
    settings.STRIPE_WEBHOOK_SECRET = ""
    payload = event_payload("invoice.paid", remote_invoice(synced_invoice))
    with unchanged_db():
        assert deliver(payload, signature=stripe_signature(payload, secret="")).status_code == 400


def test_unknown_event_types_are_acknowledged_and_ignored(synced_invoice, unchanged_db):
    payload = event_payload("customer.subscription.updated", {"id": "sub_123", "object": "subscription"})
    with unchanged_db():
        response = deliver(payload)
    assert response.status_code == 200 and response.json()["result"].startswith("ignored")


def test_a_signed_body_that_is_not_an_event_is_400(stripe_on, db, unchanged_db):
    with unchanged_db():
        assert deliver(b"not json").status_code == 400


def test_an_event_for_an_invoice_that_is_not_ours_is_acknowledged(synced_invoice):
    foreign = {"id": "in_elsewhere", "object": "invoice", "metadata": {}}
    response = deliver(event_payload("invoice.paid", foreign))
    assert response.status_code == 200 and "not one of VAJRA's" in response.json()["result"]
    assert invoice_of(synced_invoice.tenant).status == Invoice.OPEN


def test_a_paid_event_for_a_void_invoice_is_logged_not_applied(synced_invoice):
    invoice_transition(invoice_id=synced_invoice.id, to=Invoice.VOID)
    response = deliver(event_payload("invoice.paid", remote_invoice(synced_invoice)))
    assert response.status_code == 200 and "is final" in response.json()["result"]
    assert invoice_of(synced_invoice.tenant).status == Invoice.VOID


# ---- billing portal and local-only mode ------------------------------------------------------------------------

def test_the_billing_portal_link(stripe_on, acme, alice, alice_client):
    html = alice_client.get(reverse("billing")).content.decode()
    assert reverse("billing-portal") in html
    response = alice_client.post(reverse("billing-portal"))
    assert response.status_code == 302 and response["Location"].startswith(f"{stripe_on.url}/p/session/")
    (session,) = posts(stripe_on, "/v1/billing_portal/sessions")
    assert session["params"] == {"customer": BillingAccount.objects.get(tenant=acme).stripe_customer_id,
                                 "return_url": "http://testserver/billing/"}


def test_a_billing_viewer_cannot_open_the_portal(stripe_on, dana_client, unchanged_db):
    assert reverse("billing-portal") not in dana_client.get(reverse("billing")).content.decode()
    with unchanged_db():
        assert dana_client.post(reverse("billing-portal")).status_code == 403
    assert stripe_on.journal() == []


def test_local_only_mode(local_only, acme_usage, alice_client, sent_tasks, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        (invoice_id,), _ = close()
    assert sent_tasks == []  # nothing queued for Stripe
    assert invoices_stripe_sync_pending(limit=10, seconds=10) == []
    html = alice_client.get(reverse("billing")).content.decode()
    assert "Local-only mode" in html and "data-local-only" in html
    assert "VAJ-202610-0001" in html and "data-pay-link" not in html and reverse("billing-portal") not in html
    response = alice_client.post(reverse("billing-portal"))
    assert response.status_code == 302 and response["Location"] == reverse("billing")
    assert Invoice.objects.get(id=invoice_id).stripe_invoice_id == ""
    assert invoice_of(acme_usage).total == Decimal("4.65")
    assert invoice_of(acme_usage).period == PERIOD


# ---- settings --------------------------------------------------------------------------------------------------

def run_django(code, **env):
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "VAJRA_", "STRIPE_"))}
    return subprocess.run([sys.executable, "-c", f"import django; django.setup(); {code}"], cwd=ROOT,
                          env={**base, "DJANGO_SETTINGS_MODULE": "vajra.settings", **env},
                          capture_output=True, text=True, timeout=120)


def test_stripe_settings():
    alias = run_django("from django.conf import settings; print(settings.STRIPE_SECRET_KEY)",
                       STRIPE_API_KEY="sk_test_old_name", STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
    assert alias.returncode == 0 and alias.stdout.strip() == "sk_test_old_name", alias.stderr[-500:]
    for env, name in (({"STRIPE_SECRET_KEY": "pk_test_publishable", "STRIPE_WEBHOOK_SECRET": "w"},
                       "STRIPE_SECRET_KEY"),
                      ({"STRIPE_SECRET_KEY": "sk_test_x"}, "STRIPE_WEBHOOK_SECRET")):
        result = run_django("", **env)
        assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr
        assert name in result.stderr.splitlines()[-1]
