"""A tenant's storage quota: the bytes of adapter weights and datasets it keeps in object storage, against its plan's
``storage_max_bytes``. Counted: every version of the tenant's adapters, and its datasets, while their files are
stored. Deleting an adapter or a dataset hides it at once; its files are removed (and its bytes given back to the
quota) as soon as nothing uses them: no request in progress runs on a version, no training job in progress
continues from it or trains on the dataset. A row whose files are removed keeps its history with an empty
``storage_key``.

Datasets are training's, and requests and training jobs in progress are serving's and training's: those apps sit
above this one and register what they keep and what they use here when Django starts (``register_storage``)."""

from django.core.files.storage import storages
from django.db.models import Q, Sum
from rest_framework import status
from rest_framework.exceptions import APIException

from billing.plans import plan_limits
from gpu_runtime.adapter_validation import CONFIG_FILE, WEIGHTS_FILE
from tenants.models import Tenant

from .models import AdapterVersion

CODE = "storage_quota_exceeded"
_kept = []  # tenant -> bytes of files another app keeps in the tenant's storage
_released = []  # (tenant=, storage=, limit=) -> removes the files of that app's deleted rows that nothing uses
_version_users = []  # () -> an expression over AdapterVersion rows: their files are in use by that app's work


def register_storage(*, kept=None, release=None, version_in_use=None):
    """Called by the apps above this one from their AppConfig.ready (each callable as in the lists above)."""
    for registry, fn in ((_kept, kept), (_released, release), (_version_users, version_in_use)):
        if fn is not None and fn not in registry:
            registry.append(fn)


class StorageQuotaExceeded(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = CODE

    def __init__(self, detail, *, param="file"):
        super().__init__(detail, CODE)
        self.param = param


def storage_used(tenant):
    """Bytes the tenant keeps in storage now: a deleted adapter's versions and deleted datasets count until their
    files are removed."""
    versions = AdapterVersion.objects.filter(adapter__tenant=tenant).filter(
        Q(adapter__deleted_at__isnull=True) | ~Q(storage_key=""))
    return (versions.aggregate(n=Sum("size_bytes"))["n"] or 0) + sum(kept(tenant) for kept in _kept)


def storage_release(*, tenant, limit=100):
    """Removes the files of the tenant's deleted adapters' versions and deleted datasets that nothing uses any more
    (at most ``limit`` of each per call), and empties their ``storage_key``. A deleted adapter is never served,
    rolled back to or trained on again, so only requests and training jobs already in progress can need its files.
    Files go first: a failure after that leaves the key, and the next call removes nothing more and tries again."""
    versions = (AdapterVersion.objects.filter(adapter__tenant=tenant, adapter__deleted_at__isnull=False)
                .exclude(storage_key=""))
    for in_use in _version_users:
        versions = versions.exclude(in_use())
    storage = storages["adapters"]
    for pk, key in list(versions.values_list("pk", "storage_key")[:limit]):
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            storage.delete(f"{key}/{name}")
        AdapterVersion.objects.filter(pk=pk).update(storage_key="")
    for release in _released:
        release(tenant=tenant, storage=storage, limit=limit)


def storage_lock(tenant):
    """Locks the tenant's row (inside a transaction): the one lock every storage check takes, before any adapter's."""
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()


def require_storage(*, tenant, adding, lock=False, param="file"):
    """Refuses (413 storage_quota_exceeded, saying used and limit) when ``adding`` more bytes would take the tenant
    past its plan's storage quota. With ``lock`` (inside a transaction) the tenant's row is locked first, so two
    uploads at once cannot both take the last room."""
    if lock:
        storage_lock(tenant)
    storage_release(tenant=tenant)
    limits = plan_limits(tenant)
    used = storage_used(tenant)
    if used + adding > limits.storage_max_bytes:
        raise StorageQuotaExceeded(
            f"This needs {adding} bytes of storage, and the tenant uses {used} of the {limits.storage_max_bytes} bytes "
            f"of storage the plan '{limits.plan}' allows; delete adapters or datasets, or upgrade the plan.",
            param=param)
    return used


def storage_usage(tenant):
    """(used, limit) bytes, for the pages that show the plan's quotas."""
    return storage_used(tenant), plan_limits(tenant).storage_max_bytes
