"""The Nodes and Base models pages, for platform staff: runtime nodes and base models are shared by every tenant."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from rest_framework.exceptions import APIException

from adapters.model_imports import base_model_import_start, recent_imports
from adapters.models import BaseModelImport

from .catalog import base_models_with_nodes
from .models import Node


@login_required
def nodes(request):
    # Nodes are shared by every tenant: only platform staff may see them.
    if not request.user.is_staff:
        raise PermissionDenied("The Nodes page is for platform staff.")
    return render(request, "inference/nodes.html", {"nodes": Node.objects.order_by("name")})


class BaseModelImportForm(forms.Form):
    name = forms.CharField(max_length=64, help_text="The model id tenants name, e.g. qwen2-0.5b-instruct.")
    source = forms.CharField(max_length=1000, help_text="A path inside the import folder (a Hugging Face directory, "
                             "a .zip or .tar of one, a .gguf file) or an s3:// URL.")


@login_required
def base_models(request):
    """Every base model with the nodes serving it, the import form, and recent imports with their progress (the
    page reloads itself while one runs)."""
    if not request.user.is_staff:
        raise PermissionDenied("The Base models page is for platform staff.")
    form = BaseModelImportForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            row = base_model_import_start(user=request.user, **form.cleaned_data)
        except APIException as exc:
            form.add_error("source" if getattr(exc, "param", None) == "source" else "name", str(exc.detail))
        else:
            messages.success(request, f"Importing {row.name}: progress is shown below.")
            return redirect("base-models")
    imports = recent_imports(limit=20)
    return render(request, "inference/base_models.html", {
        "catalog": base_models_with_nodes(), "form": form, "imports": imports,
        "running": any(i.status == BaseModelImport.RUNNING for i in imports)}, status=400 if form.errors else 200)
