"""Stripe's webhook: POST /billing/stripe/webhook.

The signature is verified (``stripe.Webhook.construct_event`` with STRIPE_WEBHOOK_SECRET) before anything is
read; a bad or missing one is a 400 and nothing is written. An event we act on is recorded first (StripeEvent's
unique event id), in the same transaction as its effect, so a duplicate or a replay does nothing, and a failure
leaves no record and Stripe delivers it again. Event types we do not act on are acknowledged and ignored.
"""

import datetime
import logging

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from rest_framework.exceptions import APIException

from vajra.errors import error_body

from .invoices import invoice_transition
from .models import Invoice, StripeEvent
from .standing import account_paid, account_past_due

log = logging.getLogger(__name__)


def _when(stripe_invoice, field):
    transitions = getattr(stripe_invoice, "status_transitions", None)
    stamp = getattr(transitions, field, None) if transitions is not None else None
    return datetime.datetime.fromtimestamp(stamp, tz=datetime.UTC) if stamp else timezone.now()


def _local_invoice(stripe_invoice):
    invoice = Invoice.objects.filter(stripe_invoice_id=stripe_invoice.id).first()
    if invoice is None:  # created on Stripe, but its id never stored locally (the response was lost)
        metadata = stripe_invoice.metadata.to_dict() if getattr(stripe_invoice, "metadata", None) else {}
        invoice = Invoice.objects.filter(id=metadata.get("vajra_invoice_id", ""), stripe_invoice_id="").first()
        if invoice is not None:
            Invoice.objects.filter(id=invoice.id, stripe_invoice_id="").update(stripe_invoice_id=stripe_invoice.id)
    return invoice


def _move(invoice, to, at, event_id):
    try:
        invoice_transition(invoice_id=invoice.id, to=to, at=at, already_ok=True, stripe_event_id=event_id)
    except APIException as exc:  # e.g. paid on Stripe after we voided it here: logged for an operator
        log.warning("Stripe says invoice %s is %s, but here: %s", invoice.number, to, exc.detail)
        return f"ignored: {exc.detail}"
    return f"invoice {invoice.number} {to}"


def _paid(invoice, stripe_invoice, event_id):
    result = _move(invoice, Invoice.PAID, _when(stripe_invoice, "paid_at"), event_id)
    account_paid(tenant=invoice.tenant_id)
    return result


def _payment_failed(invoice, stripe_invoice, event_id):
    account_past_due(tenant=invoice.tenant_id)  # the grace period before suspension counts from the first failure
    return f"payment failed for invoice {invoice.number}"


def _voided(invoice, stripe_invoice, event_id):
    return _move(invoice, Invoice.VOID, _when(stripe_invoice, "voided_at"), event_id)


def _uncollectible(invoice, stripe_invoice, event_id):
    return _move(invoice, Invoice.UNCOLLECTIBLE, None, event_id)


HANDLERS = {
    "invoice.paid": _paid,
    "invoice.payment_failed": _payment_failed,
    "invoice.voided": _voided,
    "invoice.marked_uncollectible": _uncollectible,
}


@transaction.atomic
def stripe_event_handle(*, event):
    """Acts on a verified event once. Returns what happened, for the response and the log."""
    handler = HANDLERS.get(event.type)
    if handler is None:
        return f"ignored: {event.type} is not an event VAJRA acts on"
    try:
        with transaction.atomic():
            StripeEvent.objects.create(event_id=event.id, type=event.type)
    except IntegrityError:
        return f"ignored: event {event.id} was already handled"
    stripe_invoice = event.data.object
    invoice = _local_invoice(stripe_invoice)
    if invoice is None:
        return f"ignored: Stripe invoice {stripe_invoice.id} is not one of VAJRA's"
    return handler(invoice, stripe_invoice, event.id)


def _refused(message):
    return JsonResponse(error_body(message, status_code=400, code="bad_signature"), status=400)


@csrf_exempt
@require_POST
def stripe_webhook(request):
    if not settings.STRIPE_WEBHOOK_SECRET:  # an empty secret would let anyone sign
        return _refused("Stripe webhooks are not configured here (STRIPE_WEBHOOK_SECRET is unset).")
    signature = request.headers.get("Stripe-Signature")
    if not signature:
        return _refused("Missing Stripe-Signature header.")
    try:
        event = stripe.Webhook.construct_event(request.body, signature, settings.STRIPE_WEBHOOK_SECRET)
    except stripe.SignatureVerificationError:
        return _refused("The Stripe-Signature does not verify with this endpoint's secret.")
    except ValueError:  # signed, but not a Stripe event
        return _refused("The payload is not a Stripe event.")
    result = stripe_event_handle(event=event)
    log.info("Stripe event %s %s: %s", event.id, event.type, result)
    return JsonResponse({"received": True, "result": result})
