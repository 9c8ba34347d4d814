"""Dashboard pages for usage and billing."""

from django.conf import settings
from django.shortcuts import render

from tenants.views import tenant_member_required


@tenant_member_required
def usage(request):
    return render(request, "billing/usage.html")


@tenant_member_required
def billing(request):
    context = {
        "tiers": list(settings.VAJRA_TIER_UNITS.items()),
        "granularity_ms": settings.VAJRA_BILLING_GRANULARITY_MS,
    }
    return render(request, "billing/billing.html", context)
