"""The invoice API, for dashboard sessions and API keys with ``billing:read`` (owners, admins, billing viewers):

    GET /api/v1/billing/invoices                 the tenant's invoices, newest month first (no drafts)
    GET /api/v1/billing/invoices/upcoming        the current month so far, as it would be invoiced now
    GET /api/v1/billing/invoices/{id}            one invoice with its lines
    GET /api/v1/billing/invoices/{id}/pdf        its PDF (the same document as the dashboard's)

Amounts are decimal strings in the invoice's currency; another tenant's invoice is a 404.
"""

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from vajra.negotiation import JSONErrors

from . import pdf
from .access import access_invoice, tenant_invoices
from .document import document_context, invoice_json, invoice_preview
from .invoice_schema import InvoiceListOut, InvoiceOut

INVOICES_LISTED = 120  # ten years of months


class InvoiceListView(APIView):
    required_action = "billing.read"

    @extend_schema(operation_id="billing_invoices_list", responses={200: InvoiceListOut},
                   description="The tenant's invoices, newest month first, without lines.")
    def get(self, request):
        invoices = tenant_invoices(tenant=request.auth.tenant)[:INVOICES_LISTED]
        return Response({"object": "list", "data": [invoice_json(i, request=request) for i in invoices]})


class UpcomingInvoiceView(APIView):
    required_action = "billing.read"

    @extend_schema(operation_id="billing_invoices_upcoming", responses={200: InvoiceOut},
                   description="The current month so far with its lines, as it would be invoiced if it closed now.")
    def get(self, request):
        invoice, lines = invoice_preview(tenant=request.auth.tenant)
        return Response(invoice_json(invoice, request=request, lines=lines))


class InvoiceDetailView(APIView):
    required_action = "billing.read"

    @extend_schema(operation_id="billing_invoices_retrieve", responses={200: InvoiceOut},
                   description="One invoice with its lines.")
    def get(self, request, invoice_id):
        invoice = access_invoice(tenant=request.auth.tenant, invoice_id=invoice_id)
        return Response(invoice_json(invoice, request=request, lines=list(invoice.lines.select_related("adapter"))))


class InvoicePDFView(APIView):
    required_action = "billing.read"
    content_negotiation_class = JSONErrors

    @extend_schema(operation_id="billing_invoices_pdf",
                   responses={(200, "application/pdf"): OpenApiResponse(OpenApiTypes.BINARY, description="The PDF")},
                   description="The invoice as a PDF, the document the dashboard shows.")
    def get(self, request, invoice_id):
        invoice = access_invoice(tenant=request.auth.tenant, invoice_id=invoice_id)
        body = pdf.invoice_pdf(context=document_context(invoice), base_url=request.build_absolute_uri("/"))
        response = HttpResponse(body, content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="{invoice.number}.pdf"'
        return response
