"""The invoice as a document: what its page, its PDF and the invoice API show, and the upcoming invoice (the current
month so far, as it would be finalized now). An issued invoice shows the issuer and payment terms it was finalized
with (``Invoice.issuer``, ``payment_terms_days``, ``due_on``); the preview shows today's settings."""

import calendar
from datetime import date
from decimal import Decimal

from django.conf import settings
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from .invoices import due_on, issuer, ledger_lines, open_ledger, payment_terms, totals
from .models import Invoice
from .plans import next_period, period_of, period_start
from .stripe_sync import stripe_enabled


def period_end(period):
    return date(period.year, period.month, calendar.monthrange(period.year, period.month)[1])


def invoice_preview(*, tenant, now=None):
    """(an unsaved invoice, its lines) for the tenant's current month so far: the open ledger rows the next invoice
    would take if the month closed ``now``: its own month's, and an earlier month's only once that month's invoice is
    finalized (until then its open rows go on that month's own invoice). Writes nothing."""
    now = now or timezone.now()
    period = period_of(now)
    closed = Invoice.objects.filter(tenant=tenant, period__lt=period).exclude(status=Invoice.DRAFT).values("period")
    rows = open_ledger(tenant_id=tenant.pk, through=period).filter(Q(period=period) | Q(period__in=closed))
    lines, _, currency = ledger_lines(rows=rows, period=period, tenant_id=tenant.pk)
    subtotal, credits, total = totals(lines)
    terms = settings.VAJRA_INVOICE_PAYMENT_TERMS_DAYS
    invoice = Invoice(tenant=tenant, period=period, status=Invoice.DRAFT, currency=currency, subtotal=subtotal,
                      credits=credits, total=total, issuer=issuer(), payment_terms_days=terms,
                      due_on=due_on(period_start(next_period(period)), terms))  # issued when the month closes
    return invoice, lines


def document_context(invoice, lines=None):
    """What the invoice document shows: the page and the PDF render it alike."""
    lines = list(invoice.lines.all()) if lines is None else lines
    pay_url = invoice.hosted_invoice_url if invoice.status == Invoice.OPEN and stripe_enabled() else ""
    return {"invoice": invoice, "lines": lines, "tenant": invoice.tenant, "period_end": period_end(invoice.period),
            "ledger_sum": sum((line.amount_exact for line in lines), Decimal(0)), "pay_url": pay_url,
            "currency": invoice.currency.upper(), "issuer": invoice.issuer or issuer(),
            "payment_terms": payment_terms(invoice.payment_terms_days), "preview": invoice.status == Invoice.DRAFT}


def _money(value):
    return format(value, "f")


def _iso(moment):
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def line_json(line):
    return {"kind": line.kind, "description": line.description, "tier": line.tier or None,
            "adapter": line.adapter.name if line.adapter_id else None,
            "usage_period": line.usage_period.strftime("%Y-%m") if line.usage_period else None,
            "quantity": _money(Decimal(line.quantity or 0).normalize()), "unit": line.unit,
            "amount": _money(line.amount), "amount_exact": _money(line.amount_exact)}


def invoice_json(invoice, *, request, lines=None):
    """An invoice for the API: amounts are decimal strings (cents; a line's exact ledger sum at 10 places); with its
    lines when ``lines`` is given. An unsaved invoice is the upcoming one (no id, number or links)."""
    context = document_context(invoice, [] if lines is None else lines)
    saved = invoice.id is not None and invoice.status != Invoice.DRAFT
    body = {
        "object": "invoice" if saved else "invoice.upcoming", "id": invoice.id if saved else None,
        "number": invoice.number, "status": invoice.status if saved else "upcoming",
        "period": invoice.period.strftime("%Y-%m"), "period_start": invoice.period.isoformat(),
        "period_end": context["period_end"].isoformat(), "currency": invoice.currency,
        "subtotal": _money(invoice.subtotal), "credits": _money(invoice.credits), "total": _money(invoice.total),
        "issued_at": _iso(invoice.finalized_at), "due_on": invoice.due_on.isoformat() if invoice.due_on else None,
        "payment_terms": context["payment_terms"], "issuer": context["issuer"], "paid_at": _iso(invoice.paid_at),
        "voided_at": _iso(invoice.voided_at), "pay_url": context["pay_url"] or None,
        "pdf_url": request.build_absolute_uri(reverse("api-v1-billing-invoice-pdf", args=[invoice.id]))
        if saved else None,
    }
    if lines is not None:
        body["lines"] = [line_json(line) for line in lines]
    return body
