"""The one way to reach each tenant-owned inference resource. Another tenant's adapter,
version or request is a 404 that never says it exists."""

import re

from django.http import Http404

from .models import Adapter, AdapterImport, AdapterVersion, BaseModel

# A version number past nine digits names no version (and would overflow the database's integer).
MODEL_REF = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]{0,63})(?:@v?(?P<version>\d{1,9}))?$")


def access_base_model(*, name):
    base = BaseModel.objects.filter(name=name).first()
    if base is None:  # a handful of rows: JSON containment is not portable to SQLite, a scan is fine
        base = next((b for b in BaseModel.objects.all() if name in b.aliases), None)
    if base is None:
        raise Http404(f"No base model '{name}'. GET /v1/models lists the models you can use.")
    return base


def tenant_adapters(*, tenant):
    return (Adapter.objects.filter(tenant=tenant, deleted_at__isnull=True)
            .select_related("base_model", "current_version").order_by("name"))


def access_adapter(*, tenant, name, lock=False):
    qs = Adapter.objects.filter(tenant=tenant, name=name, deleted_at__isnull=True).select_related(
        "base_model", "current_version")
    adapter = (qs.select_for_update(of=("self",)) if lock else qs).first()
    if adapter is None:
        raise Http404(f"No adapter '{name}' in this tenant.")
    return adapter


def access_adapter_version(*, tenant, ref):
    """``name`` (the current version) or ``name@vN`` / ``name@N`` (that exact version), ready to serve."""
    match = MODEL_REF.match(ref or "")
    if not match:
        raise Http404(f"No adapter '{ref}' in this tenant.")
    adapter = access_adapter(tenant=tenant, name=match["name"])
    if match["version"] is None:
        version = adapter.current_version
        if version is None:
            raise Http404(f"Adapter '{adapter.name}' has no ready version yet.")
    else:
        version = AdapterVersion.objects.filter(adapter=adapter, number=int(match["version"])).first()
        if version is None:
            raise Http404(f"Adapter '{adapter.name}' has no version {match['version']}.")
    if version.status != AdapterVersion.READY:
        raise Http404(f"Version {version.number} of '{adapter.name}' is {version.status}, not ready.")
    version.adapter = adapter
    return version


def access_adapter_import(*, tenant, import_id):
    row = AdapterImport.objects.filter(tenant=tenant, id=import_id).select_related("base_model", "version").first()
    if row is None:
        raise Http404(f"No adapter import '{import_id}' in this tenant.")
    return row


def tenant_versions(*, tenant, base_model=None):
    qs = AdapterVersion.objects.filter(adapter__tenant=tenant, adapter__deleted_at__isnull=True).select_related(
        "adapter", "adapter__base_model")
    if base_model is not None:
        qs = qs.filter(adapter__base_model=base_model)
    return qs.order_by("adapter__name", "-number")




def overview_adapters(principal, rows):
    """The Overview's adapters: the first ``rows`` and how many, for roles that see adapters."""
    if not principal.can("adapters.view"):
        return {"adapters": None, "adapter_count": None}
    adapters = tenant_adapters(tenant=principal.tenant)
    return {"adapters": list(adapters.select_related("current_version")[:rows]), "adapter_count": adapters.count()}
