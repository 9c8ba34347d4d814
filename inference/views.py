"""Dashboard pages for adapters, the playground, training, and (staff only) runtime nodes."""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import render

from tenants.views import tenant_member_required

from .models import Node


@tenant_member_required
def adapters(request):
    return render(request, "inference/adapters.html", {"tiers": list(settings.VAJRA_TIER_UNITS.items())})


@tenant_member_required
def playground(request):
    return render(request, "inference/playground.html")


@tenant_member_required
def training(request):
    return render(request, "inference/training.html")


@login_required
def nodes(request):
    # Nodes are shared by every tenant: only platform staff may see them.
    if not request.user.is_staff:
        raise PermissionDenied("The Nodes page is for platform staff.")
    return render(request, "inference/nodes.html", {"nodes": Node.objects.order_by("name")})
