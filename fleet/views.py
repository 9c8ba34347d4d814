"""The Nodes page, for platform staff: runtime nodes are shared by every tenant."""

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import render

from .models import Node


@login_required
def nodes(request):
    # Nodes are shared by every tenant: only platform staff may see them.
    if not request.user.is_staff:
        raise PermissionDenied("The Nodes page is for platform staff.")
    return render(request, "inference/nodes.html", {"nodes": Node.objects.order_by("name")})
