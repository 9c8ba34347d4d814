"""Dashboard pages for adapters: the list with uploads, an adapter's page with its versions, tier and delete."""

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from rest_framework.exceptions import APIException

from billing.plans import tier_info
from tenants.forms import add_service_error
from tenants.views import tenant_member_required
from vajra.errors import error_body, error_response

from . import access, downloads, url_import
from .forms import AdapterImportForm, AdapterTierForm, AdapterUploadForm
from .models import Adapter
from .services import adapter_delete, adapter_set_tier, adapter_upload
from .storage_quota import storage_usage

TIER_PLACES = {
    Adapter.HOT: "Pinned in GPU memory on a node, never evicted",
    Adapter.WARM: "Node-local disk and pinned host RAM; copied to the GPU on demand",
    Adapter.COLD: "Object storage only; fetched on its first request",
}


def tier_infos(tenant):
    """Each tier's card under the tenant's plan, once per page (not once per adapter)."""
    return {tier: tier_info(tier, tenant=tenant) for tier, _ in Adapter.TIER_CHOICES}


def _tiers(tenant):
    return [{**tier_info(tier, tenant=tenant), "label": label, "place": TIER_PLACES[tier]}
            for tier, label in Adapter.TIER_CHOICES]


def require_adapters_view(principal):
    if not principal.can("adapters.view"):
        raise PermissionDenied(f"Your role '{principal.role}' in {principal.tenant.name} does not include adapters; "
                               "ask an owner or admin.")


def _adapters_page(request, form, *, status=200, import_form=None):
    rows = list(access.tenant_adapters(tenant=request.principal.tenant))
    infos = tier_infos(request.principal.tenant)
    for adapter in rows:
        adapter.tier_info = infos[adapter.tier]
    used, limit = storage_usage(request.principal.tenant)
    context = {"adapters": rows, "form": form, "tiers": _tiers(request.principal.tenant),
               "can_write": request.principal.can("adapters.write"), "storage_used": used, "storage_limit": limit,
               "import_form": import_form or AdapterImportForm(prefix="import"),
               "import_allowed": bool(url_import.import_allow()),
               "imports": list(url_import.tenant_imports(tenant=request.principal.tenant)[:10])}
    return render(request, "inference/adapters.html", context, status=status)


def _wants_json(request):
    """upload.js asks for JSON, to show errors inline; a plain form post (no JavaScript) gets pages."""
    return "application/json" in request.headers.get("Accept", "")


def _form_error_json(form):
    field, errors = next(iter(form.errors.as_data().items()))
    error = errors[0]
    if field == "__all__":
        param, message = None, error.messages[0]
    else:
        param, message = field, f"{form[field].label}: {error.messages[0]}"
    return JsonResponse(error_body(message, status_code=400, code=error.code or "invalid", param=param), status=400)


@tenant_member_required
def adapters(request):
    """The tenant's adapters; POST uploads one: a new adapter, or a new version of one with that name."""
    principal = request.principal
    require_adapters_view(principal)
    if request.method != "POST":
        return _adapters_page(request, AdapterUploadForm())
    form = AdapterUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _form_error_json(form) if _wants_json(request) else _adapters_page(request, form, status=400)
    try:
        base_model = access.access_base_model(name=form.cleaned_data["base_model"])
        version = adapter_upload(principal=principal, base_model=base_model, **form.service_kwargs())
    except APIException as exc:  # the validator's refusals carry its code, e.g. shape_mismatch
        if _wants_json(request):
            return error_response(exc)
        add_service_error(form, exc)
        return _adapters_page(request, form, status=exc.status_code)
    adapter = version.adapter
    messages.success(request, f"Uploaded {adapter.name} v{version.number}: rank {version.rank} on "
                              f"{', '.join(version.target_modules)}, for {base_model.name}.")
    if _wants_json(request):
        return JsonResponse({"adapter": adapter.name, "version": version.number, "redirect": reverse("adapters"),
                             "url": reverse("adapter-detail", args=[adapter.name])}, status=201)
    return redirect("adapters")


@require_POST
@tenant_member_required
def adapter_import(request):
    """Starts an import by URL; the adapters page shows its status and bytes received."""
    principal = request.principal
    require_adapters_view(principal)
    form = AdapterImportForm(request.POST, prefix="import")
    if not form.is_valid():
        return _adapters_page(request, AdapterUploadForm(), status=400, import_form=form)
    try:
        row = url_import.adapter_import_create(
            principal=principal, base_model=access.access_base_model(name=form.cleaned_data["base_model"]),
            name=form.cleaned_data["name"], url=form.cleaned_data["url"],
            description=form.cleaned_data["description"])
    except APIException as exc:  # the URL refused: not allowed, not https, a private address, ...
        add_service_error(form, exc)
        return _adapters_page(request, AdapterUploadForm(), status=exc.status_code, import_form=form)
    messages.success(request, f"Importing {row.name} from {row.url}: its status is under Imports below.")
    return redirect("adapters")


# What apps above adapters add to an adapter's page, registered from their AppConfig.ready (adapters imports
# neither): fleet, where the current version is held; training, the job that made each trained version.
# Each is called with (adapter, versions) and returns context entries.
detail_facts = []


def detail_page(request, name, tier_form=None, *, status=200):
    adapter = access.access_adapter(tenant=request.principal.tenant, name=name)
    versions = list(adapter.versions.order_by("-number"))
    context = {
        "adapter": adapter,
        "tier": tier_info(adapter.tier, tenant=adapter.tenant_id),
        "tiers": _tiers(request.principal.tenant),
        "versions": versions,
        "tier_form": tier_form or AdapterTierForm(initial={"tier": adapter.tier}),
        "can_write": request.principal.can("adapters.write"),
    }
    for facts in detail_facts:
        context.update(facts(adapter, versions))
    return render(request, "inference/adapter_detail.html", context, status=status)


@tenant_member_required
def adapter_detail(request, name):
    require_adapters_view(request.principal)
    return detail_page(request, name)


@tenant_member_required
def adapter_version_download(request, name, number):
    """The version's PEFT folder as a zip, for the Download button of each version."""
    require_adapters_view(request.principal)
    return downloads.version_download(tenant=request.principal.tenant, name=name, number=number)


@require_POST
@tenant_member_required
def adapter_tier(request, name):
    principal = request.principal
    require_adapters_view(principal)
    access.access_adapter(tenant=principal.tenant, name=name)  # another tenant's adapter: 404 before anything
    form = AdapterTierForm(request.POST)
    if not form.is_valid():
        return detail_page(request, name, form, status=400)
    try:
        adapter = adapter_set_tier(principal=principal, name=name, tier=form.cleaned_data["tier"])
    except APIException as exc:  # hot with no node capacity left: 409 no_hot_capacity
        form.add_error(None, str(exc.detail))  # not a mistake in the form: shown above it
        return detail_page(request, name, form, status=exc.status_code)
    info = tier_info(adapter.tier, tenant=adapter.tenant_id)
    messages.success(request, f"{adapter.name} is now {adapter.tier}: {info['units_per_query']} units per query, "
                              f"adapter ready within {info['adapter_ready_ms_guarantee']} ms.")
    return redirect("adapter-detail", name=adapter.name)


@require_POST
@tenant_member_required
def adapter_remove(request, name):
    principal = request.principal
    require_adapters_view(principal)
    try:
        adapter = adapter_delete(principal=principal, name=name)
    except APIException as exc:
        messages.error(request, exc.detail)
        return detail_page(request, name, status=exc.status_code)
    messages.success(request, f"Deleted {adapter.name}: requests naming it now get 404. Its versions stay in the "
                              "request history and on invoices.")
    return redirect("adapters")


