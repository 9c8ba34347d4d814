"""OpenAPI shapes of the invoice API's answers, field for field as billing.document.invoice_json and line_json build
them: amounts are decimal strings in the invoice's currency."""

from rest_framework import serializers

from vajra.schema import enum, shape

from .models import Invoice

LineOut = shape("InvoiceLine", {
    "kind": serializers.CharField(), "description": serializers.CharField(),
    "tier": serializers.CharField(allow_null=True), "adapter": serializers.CharField(allow_null=True),
    "usage_period": serializers.CharField(allow_null=True, help_text="YYYY-MM: usage of an earlier month."),
    "quantity": serializers.CharField(), "unit": serializers.CharField(),
    "amount": serializers.CharField(help_text="In cents' places."),
    "amount_exact": serializers.CharField(help_text="The ledger's exact sum, 10 places.")})

Issuer = shape("InvoiceIssuer", {
    "name": serializers.CharField(), "address": serializers.ListField(child=serializers.CharField()),
    "email": serializers.CharField(), "tax_id": serializers.CharField()})

SAVED_STATUSES = [status for status, _ in Invoice.STATUS_CHOICES if status != Invoice.DRAFT]


def _invoice_fields(lines):
    return {
        "object": enum("invoice", "invoice.upcoming"),
        "id": serializers.CharField(allow_null=True, help_text="null for the upcoming invoice."),
        "number": serializers.CharField(allow_null=True), "status": enum(*SAVED_STATUSES, "upcoming"),
        "period": serializers.CharField(help_text="YYYY-MM"), "period_start": serializers.DateField(),
        "period_end": serializers.DateField(), "currency": serializers.CharField(),
        "subtotal": serializers.CharField(), "credits": serializers.CharField(), "total": serializers.CharField(),
        "issued_at": serializers.DateTimeField(allow_null=True), "due_on": serializers.DateField(allow_null=True),
        "payment_terms": serializers.CharField(), "issuer": Issuer,
        "paid_at": serializers.DateTimeField(allow_null=True), "voided_at": serializers.DateTimeField(allow_null=True),
        "pay_url": serializers.URLField(allow_null=True, help_text="Stripe's page to pay an open invoice."),
        "pdf_url": serializers.URLField(allow_null=True), **({"lines": LineOut.__class__(many=True)} if lines else {}),
    }


InvoiceSummaryOut = shape("InvoiceSummary", _invoice_fields(lines=False))
InvoiceOut = shape("Invoice", _invoice_fields(lines=True))
InvoiceListOut = shape("InvoiceList", {"object": enum("list"),
                                                   "data": InvoiceSummaryOut.__class__(many=True)})
