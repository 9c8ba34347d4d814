"""Writes for training datasets: upload (validated line by line, then stored), delete; and where a node reads one.

Validation is the runtime's own parser (gpu_runtime.datasets). Tokens are counted with the base model's
``tokenizer.json`` from the model store when the web has it (the ``tokenizers`` package, no torch); without it
they are counted as UTF-8 bytes, an upper bound, and no record is refused for length: the node counts exactly.
"""

import hashlib
import logging
import os
import secrets
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, Sum
from django.http import Http404
from django.utils import timezone

from adapters.access import access_base_model
from adapters.prompt_tokens import VARIANT, load_tokenizer
from adapters.services import adapter_storage
from adapters.storage_quota import require_storage, storage_release
from billing.plans import plan_limits
from gpu_runtime.datasets import LineError, ParsedDataset, parse_dataset
from tenants.audit import audit_record
from vajra.errors import Conflict, InvalidRequest

from . import access
from .models import Dataset, TrainingJob

log = logging.getLogger(__name__)

def token_counter(base_model):
    """``count(text) -> int`` with the base model's tokenizer, or None when the web does not have it."""
    if base_model is None:
        return None
    path = Path(settings.VAJRA_MODEL_STORE) / base_model.name / VARIANT / "tokenizer.json"
    try:
        tokenizer = load_tokenizer(str(path), path.stat().st_mtime_ns)
    except FileNotFoundError:
        return None
    except Exception:  # a damaged file: count bytes rather than refuse every upload
        log.exception("cannot read the tokenizer at %s; counting UTF-8 bytes instead", path)
        return None
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def _default_base_model():
    try:
        return access_base_model(name=settings.VAJRA_DEFAULT_BASE_MODEL)
    except Http404:  # no node has reported one yet: validate without a length check
        return None


def dataset_uri(dataset):
    """Where a runtime node reads the dataset: a local path or an s3:// URI."""
    storage = adapter_storage()
    try:
        return "file://" + storage.path(dataset.storage_key)
    except NotImplementedError:  # remote storage
        return f"s3://{storage.bucket_name}/{dataset.storage_key}"


def refusal(parsed):
    """The 400 for a dataset with bad lines: every listed line in the message and, structured, in ``lines``."""
    return InvalidRequest(
        f"The dataset has {parsed.error_count} problem(s): {parsed.summary()}. Fix them and upload the file again.",
        param="file", code="invalid_dataset", extra={"lines": [e.as_dict() for e in parsed.errors],
                                                     "lines_omitted": parsed.errors_omitted})


def validate_dataset(data, *, base_model, tenant):
    """Every problem of the file, under the size and record caps of the tenant's plan."""
    count = token_counter(base_model)
    limits = plan_limits(tenant)
    return parse_dataset(data, max_records=limits.dataset_max_records, max_bytes=limits.dataset_max_bytes,
                         count_tokens=count, keep_records=False, caps_of=f"the plan '{limits.plan}'",
                         max_tokens=base_model.context_length if base_model is not None and count else None)


def new_dataset_id():
    return "ds_" + secrets.token_hex(12)


def new_file_id():
    """A dataset uploaded through the OpenAI files API is named as OpenAI names a file."""
    return "file-" + secrets.token_hex(12)


def dataset_upload(*, principal, file, name=None, base_model=None, dataset_id=None):
    """Validates the JSONL file (every bad line is reported), stores it, and records the dataset. Nothing is
    written unless every line passes; ``base_model`` (default: the platform's) sets the context length;
    ``dataset_id`` (default: a new ``ds_`` id) names it."""
    principal.require("datasets.write")
    limits = plan_limits(principal.tenant)
    max_bytes = limits.dataset_max_bytes
    if file.size is not None and file.size > max_bytes:  # refused before it is read into memory
        raise refusal(ParsedDataset(format=None, errors=[LineError(
            None, "too_large", f"the file is {file.size} bytes; the plan '{limits.plan}' allows {max_bytes}")]))
    # Read as a stream, a line at a time, from the upload's temporary file (never whole into memory).
    stream = file.file if isinstance(file, File) else file
    parsed = validate_dataset(stream, base_model=base_model or _default_base_model(), tenant=principal.tenant)
    if parsed.errors:
        raise refusal(parsed)
    size_bytes, sha256 = _size_and_sha256(stream)
    tenant = principal.tenant
    require_storage(tenant=tenant, adding=size_bytes)  # before anything is stored
    dataset_id = dataset_id or new_dataset_id()
    storage = adapter_storage()
    stream.seek(0)
    key = storage.save(f"datasets/{tenant.pk}/{dataset_id}.jsonl", File(stream))
    try:
        return _record_dataset(
            principal=principal, dataset_id=dataset_id, storage_key=key, parsed=parsed, size_bytes=size_bytes,
            sha256=sha256, name=(name or os.path.basename(file.name or ""))[:200] or f"{dataset_id}.jsonl")
    except BaseException:
        storage.delete(key)  # the database said no: leave no orphaned file behind
        raise


def _size_and_sha256(stream):
    stream.seek(0)
    digest, size = hashlib.sha256(), 0
    while block := stream.read(1 << 20):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


@transaction.atomic
def _record_dataset(*, principal, dataset_id, storage_key, parsed, size_bytes, sha256, name):
    require_storage(tenant=principal.tenant, adding=size_bytes, lock=True)  # again, under the tenant's lock
    dataset = Dataset.objects.create(
        id=dataset_id, tenant=principal.tenant, name=name, format=parsed.format, records=parsed.record_count,
        size_bytes=size_bytes, tokens=parsed.tokens, tokens_exact=parsed.tokens_exact, sha256=sha256,
        storage_key=storage_key, created_by=principal.user)
    audit_record(tenant=principal.tenant, principal=principal, action="dataset.uploaded", target_type="dataset",
                 target_id=dataset.id, target_name=name,
                 details={"records": parsed.record_count, "size_bytes": size_bytes, "format": parsed.format})
    return dataset


@transaction.atomic
def dataset_delete(*, principal, dataset_id):
    """Hides the tenant's dataset ``dataset_id`` (404 for another tenant's), under its row lock, and after commit
    removes its file (storage_quota.storage_release); the jobs that trained on it keep the row. A job still using it
    keeps it (409)."""
    dataset = access.access_dataset(tenant=principal.tenant, dataset_id=dataset_id, lock=True)
    principal.require("datasets.write")
    jobs = access.tenant_training_jobs(tenant=principal.tenant)
    active = (jobs.filter(Q(dataset=dataset) | Q(validation_dataset=dataset), status__in=TrainingJob.ACTIVE)
              .values_list("id", flat=True).first())
    if active is not None:
        raise Conflict(f"Dataset {dataset.id} is used by training job {active}, which has not finished; cancel it "
                       "or wait for it to end.", code="dataset_in_use")
    dataset.deleted_at = timezone.now()
    dataset.save(update_fields=["deleted_at"])
    audit_record(tenant=dataset.tenant_id, principal=principal, action="dataset.deleted", target_type="dataset",
                 target_id=dataset.id, target_name=dataset.name, details={"records": dataset.records})
    tenant = principal.tenant
    transaction.on_commit(lambda: storage_release(tenant=tenant))
    return dataset


def datasets_kept_bytes(tenant):
    """Bytes of the tenant's dataset files in storage: a deleted dataset's count until its file is removed
    (adapters.storage_quota adds them to the tenant's storage)."""
    kept = Dataset.objects.filter(tenant=tenant).filter(Q(deleted_at__isnull=True) | ~Q(storage_key=""))
    return kept.aggregate(n=Sum("size_bytes"))["n"] or 0


def datasets_release(*, tenant, storage, limit):
    """Removes the files of the tenant's deleted datasets that no training job in progress trains on (at most
    ``limit``), and empties their ``storage_key`` (adapters.storage_quota.storage_release calls it)."""
    datasets = (Dataset.objects.filter(tenant=tenant, deleted_at__isnull=False).exclude(storage_key="")
                .exclude(Exists(TrainingJob.objects.filter(
                    Q(dataset=OuterRef("pk")) | Q(validation_dataset=OuterRef("pk")), status__in=TrainingJob.ACTIVE)))
                .values_list("pk", "storage_key")[:limit])
    for pk, key in list(datasets):
        storage.delete(key)
        Dataset.objects.filter(pk=pk).update(storage_key="")


def versions_in_training():
    """Adapter versions a training job in progress continues from: their files stay (adapters.storage_quota)."""
    return Exists(TrainingJob.objects.filter(base_version=OuterRef("pk"), status__in=TrainingJob.ACTIVE))
