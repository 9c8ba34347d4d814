"""Adapters in from a URL: ``https://`` or ``s3://`` from the hosts and buckets an operator allows
(``VAJRA_ADAPTER_URL_ALLOW``; none by default, and then the feature says it is off).

The request checks what it can without fetching (scheme, allow list, the host's addresses) and answers 4xx with
nothing written when that fails; otherwise it records an import and a control worker fetches the archive through
vajra.url_fetch (capped like an upload body, timed out, redirects and private addresses refused), then stores it
exactly as an upload (adapters.services.adapter_store: the same unpacking and validation). The import's status and
bytes received are what the API and the adapters page show; a failure keeps its reason in the one error shape and
writes no adapter, version or file.
"""

import logging
import secrets
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework.exceptions import APIException

from tenants.principal import Principal
from vajra import url_fetch
from vajra.errors import Conflict, InvalidRequest, error_body

from .models import Adapter, AdapterImport
from .services import adapter_store, base_facts
from .uploads import ARCHIVE_SUFFIXES, UploadDir, upload_cap

log = logging.getLogger(__name__)

TASK_ADAPTER_IMPORT = "control.adapter_import"
PROGRESS_EVERY_BYTES = 256 << 10  # how often the import's row learns the bytes received
# What unpack_upload opens; .7z and .rar are named in ARCHIVE_SUFFIXES only to be refused as nested archives.
IMPORT_SUFFIXES = tuple(s for s in ARCHIVE_SUFFIXES if s not in (".7z", ".rar"))


def import_allow():
    return url_fetch.Allow.from_entries(settings.VAJRA_ADAPTER_URL_ALLOW, settings.VAJRA_ADAPTER_URL_ALLOW_PRIVATE)


def import_limits(base_model):
    """An import's body is capped as an upload's is: the upload body limit, and the base model's largest legal
    adapter (an archive holds the two files and a little framing)."""
    return url_fetch.Limits(max_bytes=min(settings.VAJRA_MAX_UPLOAD_BYTES, upload_cap(base_facts(base_model))),
                            idle_timeout_s=settings.VAJRA_ADAPTER_URL_IDLE_TIMEOUT_S,
                            total_timeout_s=settings.VAJRA_ADAPTER_URL_TIMEOUT_S,
                            ca_file=settings.VAJRA_URL_FETCH_CA_FILE)


class ImportRefused(APIException):
    """A URL refused, in the one error shape with ``param`` url and the fetcher's code and status."""

    def __init__(self, refusal):
        super().__init__(refusal.message, refusal.code)
        self.status_code, self.param = refusal.status, "url"


def archive_name(url):
    """The file name the URL ends in, which must be an archive unpack_upload opens (.zip, .tar, .tar.gz, ...)."""
    name = PurePosixPath(urlsplit(url).path).name
    if not name.lower().endswith(IMPORT_SUFFIXES):
        raise InvalidRequest(f"The URL must name an archive of the PEFT folder ({', '.join(IMPORT_SUFFIXES)}), "
                             f"not {name or 'a folder'!r}.", param="url", code="url_not_an_archive")
    return name


def check_import_url(url):
    """Everything about ``url`` that can be checked without fetching it; a refusal is a 4xx naming ``url``."""
    allow = import_allow()
    if not allow:
        raise InvalidRequest("Importing adapters from URLs is off on this platform: the operator allows no host or "
                             "bucket (VAJRA_ADAPTER_URL_ALLOW). Upload the adapter's files instead.",
                             param="url", code="url_import_disabled")
    try:
        parts = url_fetch.check_url(url, allow)
        if parts.scheme == "https":
            url_fetch.resolve(parts.hostname.lower(), parts.port or 443, allow)
    except url_fetch.FetchRefused as exc:
        raise ImportRefused(exc) from None
    return archive_name(url)


@transaction.atomic
def adapter_import_create(*, principal, base_model, name, url, description=""):
    """Accepts an import: checks, records it queued, and sends the control task after commit."""
    principal.require("adapters.write")
    check_import_url(url)
    tenant = principal.tenant
    existing = Adapter.objects.filter(tenant=tenant, name=name, deleted_at__isnull=True).first()
    if existing is not None and existing.base_model_id != base_model.pk:
        raise InvalidRequest(f"Adapter '{name}' is for base model '{existing.base_model.name}', not "
                             f"'{base_model.name}'; choose another name.", param="base_model", code="base_mismatch")
    active = AdapterImport.objects.select_for_update().filter(tenant=tenant, status__in=AdapterImport.ACTIVE)
    if len(active) >= settings.VAJRA_ADAPTER_IMPORTS_ACTIVE_MAX:
        raise Conflict(f"{settings.VAJRA_ADAPTER_IMPORTS_ACTIVE_MAX} imports are already queued or running for "
                       "this tenant; wait for one to finish.", code="too_many_imports", param="url")
    row = AdapterImport.objects.create(
        id="imp_" + secrets.token_hex(12), tenant=tenant, base_model=base_model, name=name, description=description,
        url=url, created_by=principal.user, api_key=principal.api_key)
    transaction.on_commit(lambda: _send(row.id))
    return row


def _send(import_id):
    from vajra.celery import app

    app.send_task(TASK_ADAPTER_IMPORT, args=[import_id])


def _finish(import_id, **fields):
    AdapterImport.objects.filter(id=import_id, status=AdapterImport.FETCHING).update(
        finished_at=timezone.now(), **fields)


def _fail(import_id, *, code, message, status):
    log.info("adapter import %s failed: %s %s", import_id, code, message)
    _finish(import_id, status=AdapterImport.FAILED, error_code=code[:64], error_message=str(message)[:2000],
            error_status=status)


def adapter_import_run(*, import_id):
    """The control task's work: claims a queued import (a second delivery finds it claimed and does nothing),
    fetches the archive with progress, and stores it as an upload would."""
    claimed = AdapterImport.objects.filter(id=import_id, status=AdapterImport.QUEUED).update(
        status=AdapterImport.FETCHING)
    if not claimed:
        return
    row = AdapterImport.objects.select_related("tenant", "base_model", "created_by", "api_key").get(id=import_id)
    reported = [0]

    def progress(received, total):
        if received - reported[0] >= PROGRESS_EVERY_BYTES:
            reported[0] = received
            AdapterImport.objects.filter(id=import_id).update(bytes_received=received, bytes_total=total)

    with UploadDir() as tmp:
        path = Path(tmp) / archive_name(row.url)
        try:
            size = url_fetch.fetch_to_path(row.url, path, allow=import_allow(), limits=import_limits(row.base_model),
                                           on_progress=progress)
            AdapterImport.objects.filter(id=import_id).update(bytes_received=size)
            principal = Principal(tenant=row.tenant, user=row.created_by, api_key=row.api_key)
            with open(path, "rb") as archive:
                version = adapter_store(principal=principal, base_model=row.base_model, name=row.name,
                                        files=[(path.name, archive)], description=row.description,
                                        details={"url": row.url[:500]})
        except url_fetch.FetchRefused as exc:
            return _fail(import_id, code=exc.code, message=exc.message, status=exc.status)
        except InvalidRequest as exc:  # the validator's and the unpacker's refusals, as an upload gets them
            return _fail(import_id, code=str(exc.get_codes()), message=str(exc.detail), status=exc.status_code)
        except APIException as exc:  # quotas: storage, the plan's adapters
            return _fail(import_id, code=str(exc.get_codes()), message=str(exc.detail), status=exc.status_code)
        except Exception:  # the platform's fault, not the URL's: the import says so instead of staying "fetching"
            _fail(import_id, code="import_error", message="The import failed on the platform's side; try again.",
                  status=500)
            raise
    _finish(import_id, status=AdapterImport.SUCCEEDED, version=version)


def import_error(row):
    """A failed import's reason in the one error shape (the body a refused upload gets), else None."""
    if row.status != AdapterImport.FAILED:
        return None
    return error_body(row.error_message, status_code=row.error_status or 400, code=row.error_code,
                      param="url")["error"]


def tenant_imports(*, tenant):
    return AdapterImport.objects.filter(tenant=tenant).select_related("base_model", "version").order_by("-created_at")
