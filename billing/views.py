"""The Billing page: tier cards under the tenant's plan and its invoices (the Usage page is serving's)."""

from django.shortcuts import render

from tenants.views import tenant_member_required

from .invoice_views import billing_invoices
from .plans import TIERS, plan_for, tier_info


@tenant_member_required
def billing(request):
    context = {
        "tiers": [tier_info(tier, tenant=request.principal.tenant) for tier in TIERS],
        "granularity_ms": plan_for(request.principal.tenant).billing_granularity_ms,
        **billing_invoices(principal=request.principal),
    }
    return render(request, "billing/billing.html", context)
