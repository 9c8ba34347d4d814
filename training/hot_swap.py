"""Hot swap (VAJRA paper, Algorithm 3): a trained adapter becomes a new immutable version and the current one
in a single database transaction, then moves onto the nodes that hold the old one; rollback is the same swap
to an earlier version.

Why no request fails or sees mixed weights: a request resolves its adapter to one version when it is placed
(``adapter_ref`` names the version), versions are never overwritten, and a node keeps a version a running row
holds on the device until that row ends. So the swap is the pointer ``Adapter.current_version`` (the paper's
AtomicPointerSwap): requests placed before the commit run on the old version to their end, requests placed
after it get the new one. On the nodes the new version is loaded before the old one is let go: for a hot
adapter, ``runtime.set_tier(new, hot)`` carries ``runtime.set_tier(old, warm)`` as its Celery link, which the
node runs only after the new version is pinned.
"""

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction
from django.db.models import Max
from django.http import Http404
from django.utils import timezone

from adapters.access import access_adapter
from adapters.models import Adapter, AdapterVersion
from adapters.services import adapter_ref, adapter_storage, base_facts
from adapters.storage_quota import StorageQuotaExceeded, require_storage
from adapters.uploads import UploadDir, sha256_of
from fleet import runtime_client
from fleet.liveness import nodes_up
from fleet.placement import send_tier, version_key_of
from gpu_runtime.adapter_validation import CONFIG_FILE, WEIGHTS_FILE, AdapterRejected, validate_adapter
from tenants.audit import audit_record
from vajra.errors import Conflict

from .jobs import event, finish, output_key, storage_uri
from .models import TrainingJob

log = logging.getLogger(__name__)


class OutputRejected(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Output:
    storage_key: str
    sha256: str
    facts: object  # gpu_runtime.adapter_validation.AdapterFacts


def checked_output(job, adapter):
    """The job's final adapter, validated with the upload checks (torch-free) before any row is written. It must
    be the job's own output folder: a node's message never points the platform at another file."""
    key = f"{output_key(job)}/final"
    uri = (adapter or {}).get("uri") if isinstance(adapter, dict) else None
    if not isinstance(uri, str) or uri.rstrip("/") != storage_uri(key):
        raise OutputRejected("output_outside_job", f"the result names {uri!r}, not the job's folder {key}/.")
    storage = adapter_storage()
    with UploadDir() as tmp:
        try:
            for name in (CONFIG_FILE, WEIGHTS_FILE):
                with storage.open(f"{key}/{name}", "rb") as src, open(Path(tmp) / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        except OSError:
            raise OutputRejected("output_missing", f"{key}/ lacks {CONFIG_FILE} or {WEIGHTS_FILE}.") from None
        try:
            facts = validate_adapter(tmp, base_facts(job.base_model))
        except AdapterRejected as exc:
            raise OutputRejected(exc.code, exc.message) from None
        digest = sha256_of(Path(tmp) / WEIGHTS_FILE)
    if adapter.get("sha256") and adapter["sha256"] != digest:
        raise OutputRejected("output_mismatch", "the weights in storage are not the ones the node reported.")
    return Output(storage_key=key, sha256=digest, facts=facts)


def version_from_training(*, job_id, output, final_loss=None):
    """One transaction: the new version, the adapter's current version (the swap) and the job's success. A version
    past the tenant's storage quota fails the job (storage_quota_exceeded); its checkpoints and output stay in the
    job's folder."""
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().select_related("tenant").filter(pk=job_id).first()
        if job is None or job.status in TrainingJob.TERMINAL:
            return job
        try:  # the tenant's row is locked before the adapter's, in the order uploads take them
            require_storage(tenant=job.tenant, adding=output.facts.weights_bytes, lock=True)
        except StorageQuotaExceeded as exc:
            return finish(job, TrainingJob.FAILED, code=exc.default_code,
                          message=f"The trained adapter was not kept: {exc.detail}")
        adapter = Adapter.objects.select_for_update(of=("self",)).select_related("base_model", "current_version").get(
            pk=job.adapter_id)
        previous = adapter.current_version
        facts = output.facts
        version = AdapterVersion.objects.create(
            adapter=adapter, number=(adapter.versions.aggregate(n=Max("number"))["n"] or 0) + 1,
            status=AdapterVersion.READY, source=AdapterVersion.TRAINING, sha256=output.sha256,
            size_bytes=facts.weights_bytes, rank=facts.rank, alpha=facts.alpha, target_modules=facts.target_modules,
            dtype=facts.dtype, storage_key=output.storage_key, created_by=job.created_by)
        adapter.current_version = version
        adapter.save(update_fields=["current_version"])
        job.status, job.result_version, job.finished_at = TrainingJob.SUCCEEDED, version, timezone.now()
        job.trained_steps = job.steps.count()
        if isinstance(final_loss, int | float) and not isinstance(final_loss, bool):
            job.last_loss = final_loss
        job.save(update_fields=["status", "result_version", "finished_at", "trained_steps", "last_loss"])
        event(job, f"Succeeded: {adapter.name} v{version.number} is now current"
                   f"{f' (was v{previous.number})' if previous else ''}.")
        _swap_on_commit(adapter, previous, version)
    return job


@transaction.atomic
def adapter_rollback(*, principal, adapter_name, version_number):
    """Makes an earlier ready version current again (one API call, one button); the nodes follow as for a
    trained version."""
    principal.require("adapters.write")
    adapter = access_adapter(tenant=principal.tenant, name=adapter_name, lock=True)
    version = adapter.versions.filter(number=version_number).first()
    if version is None:
        raise Http404(f"Adapter '{adapter.name}' has no version {version_number}.")
    if version.pk == adapter.current_version_id:
        raise Conflict(f"v{version.number} is already the current version of '{adapter.name}'.",
                       code="already_current", param="version")
    if version.status != AdapterVersion.READY:
        raise Conflict(f"v{version.number} of '{adapter.name}' is {version.status}, not ready; it cannot be served.",
                       code="version_not_ready", param="version")
    previous = adapter.current_version
    adapter.current_version = version
    adapter.save(update_fields=["current_version"])
    audit_record(tenant=adapter.tenant_id, principal=principal, action="adapter.made_current",
                 target_type="adapter_version", target_id=version.pk, target_name=f"{adapter.name}@v{version.number}",
                 details={"previous": f"v{previous.number}" if previous else None})
    log.info("adapter %s rolled back from v%s to v%s by %s", adapter, previous and previous.number, version.number,
             principal.user or principal.api_key)
    _swap_on_commit(adapter, previous, version)
    return adapter


def _swap_on_commit(adapter, old, new):
    new.adapter = adapter
    if old is not None:
        old.adapter = adapter
    transaction.on_commit(lambda: swap_on_nodes(adapter, old, new))


def holders(adapter, version):
    """Up nodes holding ``version`` per their last heartbeat: on the device for a hot adapter (where it is
    pinned), on the device or in host RAM for a warm one."""
    token = version_key_of(version)
    tiers = ("device",) if adapter.tier == Adapter.HOT else ("device", "host")
    return [node for node in nodes_up().filter(base_model=adapter.base_model.name)
            if any(token in ((node.state.get("resident") or {}).get(tier) or []) for tier in tiers)]


def swap_on_nodes(adapter, old, new):
    """After commit: hot, pin the new version where the old one is pinned, then demote the old one to warm;
    warm, prefetch the new version where the old one is. Nowhere known (or a first version): the tier's usual
    placement. Cold adapters live in object storage: nothing to move."""
    if adapter.tier == Adapter.COLD or adapter.deleted_at is not None:
        return
    nodes = holders(adapter, old) if old is not None else []
    if not nodes:
        send_tier(new)
        return
    new_ref = adapter_ref(new)
    for node in nodes:
        if adapter.tier == Adapter.HOT:
            runtime_client.send_swap_hot(new_ref, adapter_ref(old), node_name=node.name)
        else:
            runtime_client.send_prefetch(new_ref, node_name=node.name)
