"""A tenant's storage quota: the bytes of adapter weights and datasets it keeps, against its plan's
``storage_max_bytes``. Counted: every version of the tenant's adapters that are not deleted, and its datasets that
are not deleted (deleting an adapter or a dataset gives its bytes back to the quota)."""

from django.db.models import Sum
from rest_framework import status
from rest_framework.exceptions import APIException

from billing.plans import plan_limits
from tenants.models import Tenant

from .models import AdapterVersion, Dataset

CODE = "storage_quota_exceeded"


class StorageQuotaExceeded(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = CODE

    def __init__(self, detail, *, param="file"):
        super().__init__(detail, CODE)
        self.param = param


def storage_used(tenant):
    """Bytes the tenant keeps in storage now."""
    versions = AdapterVersion.objects.filter(adapter__tenant=tenant, adapter__deleted_at__isnull=True)
    datasets = Dataset.objects.filter(tenant=tenant, deleted_at__isnull=True)
    return ((versions.aggregate(n=Sum("size_bytes"))["n"] or 0)
            + (datasets.aggregate(n=Sum("size_bytes"))["n"] or 0))


def require_storage(*, tenant, adding, lock=False):
    """Refuses (413 storage_quota_exceeded, saying used and limit) when ``adding`` more bytes would take the tenant
    past its plan's storage quota. With ``lock`` (inside a transaction) the tenant's row is locked first, so two
    uploads at once cannot both take the last room."""
    if lock:
        Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
    limits = plan_limits(tenant)
    used = storage_used(tenant)
    if used + adding > limits.storage_max_bytes:
        raise StorageQuotaExceeded(
            f"This upload needs {adding} bytes, and the tenant uses {used} of the {limits.storage_max_bytes} bytes "
            f"of storage the plan '{limits.plan}' allows; delete adapters or datasets, or upgrade the plan.")
    return used


def storage_usage(tenant):
    """(used, limit) bytes, for the pages that show the plan's quotas."""
    return storage_used(tenant), plan_limits(tenant).storage_max_bytes
