"""A train request's ``dataset`` given as an object-store URL (the paper's ``"dataset": "gs://bucket/path"``).

Only where an operator configured a location for the tenant (VAJRA_TENANT_DATASET_URL_PREFIXES, e.g.
``{"acme": ["s3://acme-data/train/"]}``); anywhere else it is a 400 that says to upload the file and pass its id.
The file is read once, checked line by line like an upload, and a snapshot of exactly those bytes becomes an
ordinary dataset, so the job trains on what was checked even if the object changes later.
"""

import hashlib
import posixpath
import secrets
from urllib.parse import urlparse

from django.conf import settings
from django.core.files.base import ContentFile

from adapters.services import adapter_storage
from adapters.storage_quota import require_storage
from billing.plans import plan_limits
from tenants.audit import audit_record
from vajra import url_fetch
from vajra.errors import InvalidRequest

from .datasets import validate_dataset
from .models import Dataset

SCHEMES = ("s3", "file")


def is_dataset_url(ref):
    return "://" in ref


def _refuse(message, code="dataset_url_not_allowed"):
    return InvalidRequest(message, param="dataset", code=code)


def allowed_url(tenant, url):
    """The URL (a file:// path normalized) when it lies in one of the tenant's configured locations."""
    parsed = urlparse(url)
    if parsed.scheme not in SCHEMES:
        raise _refuse(f"dataset URLs must be s3:// or file://, not {parsed.scheme}://. Or upload the file "
                      "(POST /api/v1/datasets) and pass its id.", code="unsupported_dataset_url")
    prefixes = settings.VAJRA_TENANT_DATASET_URL_PREFIXES.get(tenant.slug, [])
    if not prefixes:
        raise _refuse("No object store is configured for your tenant, so 'dataset' must be a dataset id. Upload "
                      "the file (POST /api/v1/datasets) and pass its id (ds_...).")
    segments = parsed.path.split("/")
    if parsed.query or parsed.fragment or (parsed.scheme == "file" and parsed.netloc) or (
            parsed.scheme == "s3" and ("." in segments or ".." in segments)):
        raise _refuse(f"{url} is not a plain {parsed.scheme}:// URL of one file; name the file itself.")
    if parsed.scheme == "file":  # the OS would resolve '..': check the path it would open
        url = "file://" + posixpath.normpath(parsed.path)
    if not any(url.startswith(prefix) for prefix in prefixes):
        raise _refuse(f"{url} is outside the locations configured for your tenant: {', '.join(prefixes)}.")
    return url


def _bucket_of(url):
    parsed = urlparse(url)
    return url_fetch.Allow(buckets=(parsed.netloc,)) if parsed.scheme == "s3" else url_fetch.Allow()


def read_url_dataset(*, tenant, url, base_model):
    """(url, bytes, parsed) of the checked file; every refusal is a 400 naming ``dataset``."""
    url = allowed_url(tenant, url)
    limits = plan_limits(tenant)
    try:
        # The prefix check above is the allow list: the operator's locations for this tenant.
        data = url_fetch.read_bytes(url, max_bytes=limits.dataset_max_bytes, allow=_bucket_of(url))
    except url_fetch.FetchRefused as exc:  # missing, over the cap, no access to the bucket: each one the tenant can fix
        cap = f", the most the plan '{limits.plan}' allows" if exc.code == "url_too_large" else ""
        raise _refuse(f"Cannot read the dataset at {url}: {exc.message}{cap}.", code="dataset_unreadable") from None
    parsed = validate_dataset(data, base_model=base_model, tenant=tenant)
    if parsed.errors:
        raise InvalidRequest(f"The dataset at {url} has {parsed.error_count} bad line(s): {parsed.summary()}",
                             param="dataset", code="invalid_dataset",
                             extra={"lines": [e.as_dict() for e in parsed.errors],
                                    "lines_omitted": parsed.errors_omitted})
    return url, data, parsed


def store_url_dataset(*, principal, url, data, parsed):
    """The snapshot as a dataset row (inside the caller's transaction; the caller deletes the file if it fails),
    within the tenant's storage quota as an upload is (413 storage_quota_exceeded, nothing stored), recorded in
    the audit log with the URL it came from."""
    require_storage(tenant=principal.tenant, adding=len(data), lock=True, param="dataset")
    dataset_id = "ds_" + secrets.token_hex(12)
    key = adapter_storage().save(f"datasets/{principal.tenant.pk}/{dataset_id}.jsonl", ContentFile(data))
    dataset = Dataset.objects.create(
        id=dataset_id, tenant=principal.tenant, name=posixpath.basename(urlparse(url).path)[:200] or dataset_id,
        format=parsed.format, records=parsed.record_count, size_bytes=len(data), tokens=parsed.tokens,
        tokens_exact=parsed.tokens_exact, sha256=hashlib.sha256(data).hexdigest(), storage_key=key,
        created_by=principal.user)
    audit_record(tenant=principal.tenant, principal=principal, action="dataset.fetched", target_type="dataset",
                 target_id=dataset.id, target_name=dataset.name,
                 details={"url": url, "records": parsed.record_count, "size_bytes": len(data),
                          "format": parsed.format, "sha256": dataset.sha256})
    return dataset
