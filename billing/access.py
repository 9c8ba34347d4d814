"""The one way to reach a tenant's invoices: every view and task goes through these. Another tenant's invoice is
a 404 (never a 403), so a caller cannot learn that it exists; drafts are the period close's business only."""

from django.http import Http404

from .models import Invoice


def tenant_invoices(*, tenant):
    return Invoice.objects.filter(tenant=tenant).exclude(status=Invoice.DRAFT).order_by("-period")


def access_invoice(*, tenant, invoice_id, lock=False):
    qs = tenant_invoices(tenant=tenant).filter(id=invoice_id)
    invoice = (qs.select_for_update() if lock else qs).first()
    if invoice is None:
        raise Http404(f"No invoice {invoice_id} in this tenant.")
    return invoice
