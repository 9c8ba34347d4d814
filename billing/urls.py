from django.urls import path

from . import invoice_views, usage_views, views, webhooks

urlpatterns = [
    path("billing/", views.billing, name="billing"),
    path("billing/plan/", usage_views.plan, name="plan"),
    path("billing/plan/spend-cap", usage_views.spend_cap, name="spend-cap"),
    path("billing/invoices/<str:invoice_id>/", invoice_views.invoice_detail, name="invoice"),
    path("billing/invoices/<str:invoice_id>/pdf", invoice_views.invoice_pdf, name="invoice-pdf"),
    path("billing/invoices/<str:invoice_id>/<slug:action>", invoice_views.invoice_action, name="invoice-action"),
    path("billing/portal", invoice_views.billing_portal, name="billing-portal"),
    path("billing/stripe/webhook", webhooks.stripe_webhook, name="stripe-webhook"),
]
