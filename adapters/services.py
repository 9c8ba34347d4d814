"""Writes for adapters and their versions: upload, tier change, delete (keyword-only, atomic).

Each service is its unit of work: it opens its own transaction and takes the row locks it needs (the adapter's,
SELECT ... FOR UPDATE) inside it, so a caller passes the adapter's name, never a row it locked itself."""

import logging
import uuid
from pathlib import Path

from django.core.files import File
from django.core.files.storage import storages
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from billing.plans import plan_limits
from gpu_runtime.adapter_validation import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterRejected,
    BaseFacts,
    max_weights_bytes,
    validate_adapter,
)
from gpu_runtime.contract import AdapterRef, adapter_id_of
from tenants.audit import audit_record
from vajra.errors import Conflict, InvalidRequest

from . import access, tier_moves
from .models import Adapter, AdapterVersion
from .storage_quota import require_storage, storage_release
from .uploads import UploadDir, sha256_of, unpack_upload, upload_cap

log = logging.getLogger(__name__)


def adapter_storage():
    return storages["adapters"]


def base_facts(base_model):
    return BaseFacts.from_manifest({"name": base_model.name, "architecture": base_model.architecture},
                                   aliases=tuple(base_model.aliases))


def version_uri(version):
    """Where a runtime node fetches a version's files: a local path or an s3:// URI."""
    storage = adapter_storage()
    try:
        return "file://" + storage.path(version.storage_key)
    except NotImplementedError:  # remote storage
        return f"s3://{storage.bucket_name}/{version.storage_key}"


def adapter_ref(version):
    """The runtime's AdapterRef of a version (gpu_runtime.contract)."""
    return AdapterRef(adapter_id=adapter_id_of(version.adapter_id), version=version.number, uri=version_uri(version),
                      tier=version.adapter.tier)


def _refused(exc):
    return InvalidRequest(f"{exc.message} [{exc.code}]", param="file", code=exc.code)


def adapter_upload(*, principal, base_model, name, files, description=""):
    """Validates the upload (no torch), stores the two files, and records a new immutable version (the
    adapter is created on its first upload). ``files`` are (name, UploadedFile or bytes) pairs, read as streams.
    Nothing is written unless every check passes."""
    principal.require("adapters.write")
    return adapter_store(principal=principal, base_model=base_model, name=name, files=files, description=description)


def adapter_store(*, principal, base_model, name, files, description="", details=None):
    """What an upload does once the principal may write adapters (checked at the upload, or when a URL import was
    accepted): validate, store, record the version. ``details`` go into the audit entry."""
    tenant = principal.tenant
    base = base_facts(base_model)
    with UploadDir() as tmp:
        try:
            unpack_upload(files, tmp, cap=upload_cap(base))
            facts = validate_adapter(tmp, base, max_weights_bytes=max_weights_bytes(base))
        except AdapterRejected as exc:
            raise _refused(exc) from None
        require_storage(tenant=tenant, adding=facts.weights_bytes)  # before anything is stored
        storage = adapter_storage()
        key = f"adapters/t{tenant.pk}/{uuid.uuid4().hex}"
        saved = []
        try:
            for file_name in (CONFIG_FILE, WEIGHTS_FILE):
                with open(Path(tmp) / file_name, "rb") as f:
                    saved.append(storage.save(f"{key}/{file_name}", File(f)))
            return _record_version(principal=principal, base_model=base_model, name=name, description=description,
                                   facts=facts, sha256=sha256_of(Path(tmp) / WEIGHTS_FILE), storage_key=key,
                                   details=details)
        except BaseException:
            for path in saved:  # the database said no: leave no orphaned files behind
                storage.delete(path)
            raise


@transaction.atomic
def _record_version(*, principal, base_model, name, description, facts, sha256, storage_key, details=None):
    tenant = principal.tenant
    require_storage(tenant=tenant, adding=facts.weights_bytes, lock=True)  # again, under the tenant's lock
    adapter = (Adapter.objects.select_for_update().filter(tenant=tenant, name=name, deleted_at__isnull=True).first())
    if adapter is None:
        limits = plan_limits(tenant)
        if Adapter.objects.filter(tenant=tenant, deleted_at__isnull=True).count() >= limits.max_adapters:
            raise Conflict(f"The plan '{limits.plan}' allows {limits.max_adapters} adapters and this tenant has "
                           f"them all; delete one or upgrade the plan.", code="adapter_quota", param="name")
        adapter = Adapter.objects.create(tenant=tenant, base_model=base_model, name=name, description=description)
    elif adapter.base_model_id != base_model.pk:
        raise InvalidRequest(f"Adapter '{name}' is for base model '{adapter.base_model.name}', not "
                             f"'{base_model.name}'; choose another name.", param="base_model", code="base_mismatch")
    previous = adapter.current_version
    number = (adapter.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    version = AdapterVersion.objects.create(
        adapter=adapter, number=number, status=AdapterVersion.READY, sha256=sha256,
        size_bytes=facts.weights_bytes, rank=facts.rank, alpha=facts.alpha, target_modules=facts.target_modules,
        dtype=facts.dtype, storage_key=storage_key, created_by=principal.user,
    )
    adapter.current_version = version
    if description:
        adapter.description = description
    adapter.save(update_fields=["current_version", "description"])
    audit_record(tenant=tenant, principal=principal, action="adapter.uploaded", target_type="adapter_version",
                 target_id=version.pk, target_name=f"{adapter.name}@v{number}",
                 details={"base_model": base_model.name, "rank": facts.rank, "size_bytes": facts.weights_bytes,
                          "sha256": sha256, **(details or {})})
    _apply_tier_on_commit(version)
    if previous is not None and adapter.tier != Adapter.COLD:  # the old version no longer needs its place
        previous.adapter = adapter
        _apply_tier_on_commit(previous, tier=Adapter.COLD)
    return version


@transaction.atomic
def adapter_set_tier(*, principal, name, tier):
    """Changes the tier of the tenant's adapter ``name`` under its row lock; hot needs a node with hot capacity
    left (409 otherwise). Another tenant's adapter is a 404."""
    adapter = access.access_adapter(tenant=principal.tenant, name=name, lock=True)
    principal.require("adapters.write")
    if tier not in dict(Adapter.TIER_CHOICES):
        raise InvalidRequest(f"tier must be one of cold, warm, hot; got {tier!r}.", param="tier", code="invalid_tier")
    if tier == Adapter.HOT:
        tier_moves.check_hot(base_model=adapter.base_model, adapter=adapter)
    old = adapter.tier
    adapter.tier = tier
    adapter.save(update_fields=["tier"])
    if old != tier:
        audit_record(tenant=adapter.tenant_id, principal=principal, action="adapter.tier_changed",
                     target_type="adapter", target_id=adapter.pk, target_name=adapter.name,
                     details={"name": adapter.name, "old": old, "new": tier})
    if adapter.current_version_id:
        adapter.current_version.adapter = adapter
        _apply_tier_on_commit(adapter.current_version)
    return adapter


def _apply_tier_on_commit(version, tier=None):
    tier_moves.send_on_commit(version, tier)


@transaction.atomic
def adapter_delete(*, principal, name):
    """Stops serving the tenant's adapter ``name`` (under its row lock); its versions' rows stay for the request
    history and invoices, their files are removed once no request or training job in progress uses them
    (storage_quota.storage_release). Returns the deleted adapter."""
    adapter = access.access_adapter(tenant=principal.tenant, name=name, lock=True)
    principal.require("adapters.write")
    adapter.deleted_at = timezone.now()
    old_tier = adapter.tier
    adapter.tier = Adapter.COLD
    adapter.save(update_fields=["deleted_at", "tier"])
    current = adapter.current_version
    audit_record(tenant=adapter.tenant_id, principal=principal, action="adapter.deleted", target_type="adapter",
                 target_id=adapter.pk, target_name=adapter.name,
                 details={"versions": adapter.versions.count(), "current": current.number if current else None,
                          "tier": old_tier})
    tenant = principal.tenant
    transaction.on_commit(lambda: storage_release(tenant=tenant))
    if adapter.current_version_id:
        adapter.current_version.adapter = adapter
        _apply_tier_on_commit(adapter.current_version)
    return adapter
