"""Operator actions on invoices: void, mark uncollectible, mark paid (received outside VAJRA). They belong to the
platform: its staff take them (the admin site, or the invoice page when signed in as staff) and Stripe's webhooks
take the same moves from Stripe's side (billing/webhooks.py). A tenant's members, owners included, view, download
and pay their invoices; they never change one."""

from types import SimpleNamespace

from django.core.exceptions import PermissionDenied

from vajra.errors import Conflict

from .invoices import check_transition, invoice_transition
from .models import Invoice
from .stripe_sync import stripe_enabled, stripe_invoice_status

# URL word -> (status it moves to, button, what happened)
ACTIONS = {
    "void": (Invoice.VOID, "Void", "voided"),
    "mark-uncollectible": (Invoice.UNCOLLECTIBLE, "Mark uncollectible", "marked uncollectible"),
    "mark-paid": (Invoice.PAID, "Mark paid (received outside VAJRA)", "marked paid"),
}


def is_operator(user):
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff)


def require_operator(user):
    if not is_operator(user):
        raise PermissionDenied("Voiding an invoice, writing it off or marking it paid is for platform operators; "
                               "your invoices are paid through their pay link.")


def operator_actions(user, invoice):
    """The actions ``user`` may take on ``invoice`` now: none unless an operator, and only what its state allows
    (paid is Stripe's to say when Stripe collects)."""
    if not is_operator(user):
        return []
    shown = []
    for word, (to, button, _) in ACTIONS.items():
        try:
            check_transition(invoice, to)
        except Conflict:
            continue
        if to == Invoice.PAID and stripe_enabled():
            continue
        shown.append({"word": word, "button": button})
    return shown


def invoice_operate(*, invoice, to, user):
    """An operator moves ``invoice`` to ``to``: on Stripe first when Stripe holds it, then here (audited as
    ``user``). 403 for anyone else, 409 when its state does not allow it; stripe.StripeError passes up."""
    require_operator(user)
    check_transition(invoice, to)
    if to == Invoice.PAID and stripe_enabled():
        raise Conflict(f"Invoice {invoice.number} is collected by Stripe: it is marked paid when Stripe reports "
                       "the payment.", code="invoice_state")
    if stripe_enabled():
        stripe_invoice_status(invoice=invoice, to=to)
    # With Stripe on, its webhook may have moved the invoice already: that is the same outcome.
    invoice, _ = invoice_transition(invoice_id=invoice.id, to=to, already_ok=stripe_enabled(),
                                    principal=SimpleNamespace(user=user, api_key=None))
    return invoice
