"""Invoice pages: the list on the billing page, an invoice as a page and as a PDF, the operator actions (void,
write off; paid out of band in local-only mode: billing/invoice_actions.py) and the Stripe billing portal for payment
methods.

Reading needs ``billing.read`` (owners, admins, billing viewers); acting is for platform staff only, whatever their
role in the tenant. Another tenant's invoice is a 404 (``billing.access``); an action the invoice's state does not
allow is a 409.
"""

import logging

import stripe
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from rest_framework.exceptions import APIException

from tenants.views import tenant_member_required

from . import pdf
from .access import access_invoice, tenant_invoices
from .document import document_context, invoice_preview
from .invoice_actions import ACTIONS, invoice_operate, operator_actions
from .stripe_sync import portal_url, stripe_enabled

log = logging.getLogger(__name__)

INVOICES_SHOWN = 36


def _require(principal, action, what):
    if not principal.can(action):
        raise PermissionDenied(f"Your role '{principal.role}' cannot {what}.")


def billing_invoices(*, principal):
    """The billing page's invoice part: the upcoming invoice and the list (for billing.read), the local-only
    notice, who may manage payment methods."""
    readable = principal.can("billing.read")
    upcoming = invoice_preview(tenant=principal.tenant) if readable else None
    return {
        "invoices_readable": readable,
        "upcoming": document_context(*upcoming) if upcoming else None,
        "invoices": list(tenant_invoices(tenant=principal.tenant)[:INVOICES_SHOWN]) if readable else [],
        "stripe_on": stripe_enabled(),
        "billing_manage": principal.can("billing.manage"),
    }


def _invoice_page(request, invoice, *, status=200):
    context = {**document_context(invoice), "actions": operator_actions(request.user, invoice),
               "stripe_on": stripe_enabled()}
    return render(request, "billing/invoice.html", context, status=status)


@tenant_member_required
def invoice_detail(request, invoice_id):
    _require(request.principal, "billing.read", "see invoices")
    invoice = access_invoice(tenant=request.principal.tenant, invoice_id=invoice_id)
    return _invoice_page(request, invoice)


@tenant_member_required
def invoice_pdf(request, invoice_id):
    _require(request.principal, "billing.read", "see invoices")
    invoice = access_invoice(tenant=request.principal.tenant, invoice_id=invoice_id)
    body = pdf.invoice_pdf(context=document_context(invoice), base_url=request.build_absolute_uri("/"))
    response = HttpResponse(body, content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{invoice.number}.pdf"'
    return response


@require_POST
@tenant_member_required
def invoice_action(request, invoice_id, action):
    if action not in ACTIONS:
        raise Http404(f"No invoice action '{action}'.")
    to, _, done = ACTIONS[action]
    principal = request.principal
    invoice = access_invoice(tenant=principal.tenant, invoice_id=invoice_id)  # another tenant's: 404 first
    try:
        invoice = invoice_operate(invoice=invoice, to=to, user=request.user)
    except APIException as exc:
        messages.error(request, exc.detail)
        return _invoice_page(request, access_invoice(tenant=principal.tenant, invoice_id=invoice_id),
                             status=exc.status_code)
    except stripe.StripeError as exc:
        log.warning("invoice %s: Stripe refused to %s it: %s", invoice.number, action, exc)
        messages.error(request, f"Stripe refused: {exc.user_message or exc}. Nothing was changed.")
        return _invoice_page(request, invoice, status=502)
    messages.success(request, f"Invoice {invoice.number} {done}.")
    return redirect("invoice", invoice_id=invoice.id)


@require_POST
@tenant_member_required
def billing_portal(request):
    """Owners and admins manage payment methods on Stripe's billing portal; it returns to the billing page."""
    _require(request.principal, "billing.manage", "manage payment methods")
    if not stripe_enabled():
        messages.error(request, "Payments are not connected (local-only mode): there is no payment method to manage.")
        return redirect("billing")
    try:
        url = portal_url(tenant=request.principal.tenant, return_url=request.build_absolute_uri(reverse("billing")))
    except stripe.StripeError as exc:
        log.warning("billing portal for tenant %s: %s", request.principal.tenant.pk, exc)
        messages.error(request, "Stripe's billing portal is unavailable right now; try again in a minute.")
        return redirect("billing")
    return redirect(url)
