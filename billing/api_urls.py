"""/api/v1/billing/... routes (billing/api.py, billing/invoice_api.py)."""

from django.urls import path

from . import api, invoice_api

urlpatterns = [
    path("billing/metering", api.MeteringView.as_view(), name="api-v1-billing-metering"),
    path("billing/invoices", invoice_api.InvoiceListView.as_view(), name="api-v1-billing-invoices"),
    path("billing/invoices/upcoming", invoice_api.UpcomingInvoiceView.as_view(),
         name="api-v1-billing-invoice-upcoming"),
    path("billing/invoices/<str:invoice_id>", invoice_api.InvoiceDetailView.as_view(),
         name="api-v1-billing-invoice"),
    path("billing/invoices/<str:invoice_id>/pdf", invoice_api.InvoicePDFView.as_view(),
         name="api-v1-billing-invoice-pdf"),
]
