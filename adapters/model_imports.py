"""Base-model imports: a source checked here (name, path inside the import folder, the directory's files), converted
by the model store in its own process (``python -m gpu_runtime.model_store import --source``: it loads torch, which
the web never does), and entered into the catalog when its progress file says it succeeded."""

import logging
import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from gpu_runtime.model_import import (
    ImportRefused,
    check_directory,
    check_name,
    read_progress,
    resolve_under,
    source_kind,
)
from vajra.errors import Conflict, InvalidRequest

from .models import BaseModel, BaseModelImport

log = logging.getLogger(__name__)


def import_command(*, name, source, progress, force=False):
    """The argv of the model store's import in a process of its own."""
    return [sys.executable, "-m", "gpu_runtime.model_store", "import", "--source", str(source), "--name", name,
            "--progress", str(progress), *(["--force"] if force else [])]


def import_env():
    return {**os.environ, "VAJRA_MODEL_STORE": str(settings.VAJRA_MODEL_STORE)}


def progress_path(import_id):
    return Path(settings.VAR_DIR) / "model-imports" / f"{import_id}.json"


@transaction.atomic
def base_model_register(*, manifest):
    """The catalog row of an imported model, from its manifest (created, or brought up to date)."""
    base, _ = BaseModel.objects.update_or_create(name=manifest["name"], defaults={
        "architecture": manifest["architecture"], "context_length": manifest.get("context_length") or 2048,
        "source": manifest.get("source", {}), "variants": manifest.get("variants", {})})
    return base


def import_source_check(*, source):
    """The source an import may read, checked without loading anything: an ``s3://`` URL, or a path inside
    VAJRA_MODEL_IMPORT_DIR (no ``..``, no symlink out) whose directory passes the model store's checks. Returns the
    absolute path or the URL; raises InvalidRequest (400) naming what is wrong."""
    try:
        if source.startswith("s3://"):
            return source
        path = resolve_under(settings.VAJRA_MODEL_IMPORT_DIR, source)
        if source_kind(path) == "directory":
            check_directory(path)
        return str(path)
    except ImportRefused as exc:
        raise InvalidRequest(exc.message, param="source", code=exc.code) from None


@transaction.atomic
def base_model_import_start(*, user, name, source):
    """Checks the name and source and starts the import in a process of its own once the row is committed."""
    try:
        check_name(name)
    except ImportRefused as exc:
        raise InvalidRequest(exc.message, param="name", code=exc.code) from None
    if BaseModel.objects.filter(name=name).exists() or (Path(settings.VAJRA_MODEL_STORE) / name).exists():
        raise Conflict(f"A base model named '{name}' exists already; choose another name.", code="model_exists")
    if BaseModelImport.objects.filter(name=name, status=BaseModelImport.RUNNING).exists():
        raise Conflict(f"'{name}' is being imported already.", code="import_running")
    resolved = import_source_check(source=source)
    row = BaseModelImport.objects.create(name=name, source=source, created_by=user)
    transaction.on_commit(lambda: _launch(row.pk, name, resolved))
    return row


def _launch(import_id, name, source):
    path = progress_path(import_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".log"), "ab") as out:
        subprocess.Popen(import_command(name=name, source=source, progress=path), env=import_env(), stdout=out,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                         cwd=settings.BASE_DIR)


def base_model_import_refresh(*, import_id):
    """The import's row brought up to date from its progress file; on success the model enters the catalog
    (once: the row moves out of running by a conditional update)."""
    row = BaseModelImport.objects.get(pk=import_id)
    if row.status != BaseModelImport.RUNNING:
        return row
    progress = read_progress(progress_path(import_id))
    if progress is None:
        return row
    state = progress.get("state")
    with transaction.atomic():
        fields = {"phase": str(progress.get("phase", ""))[:40], "percent": int(progress.get("percent") or 0)}
        if state == BaseModelImport.SUCCEEDED:
            fields.update(status=state, finished_at=timezone.now(), percent=100)
        elif state == BaseModelImport.FAILED:
            error = progress.get("error") or {}
            fields.update(status=state, finished_at=timezone.now(), error_code=str(error.get("code", ""))[:64],
                          error_message=str(error.get("message", ""))[:500])
        moved = BaseModelImport.objects.filter(pk=import_id, status=BaseModelImport.RUNNING).update(**fields)
        if moved and state == BaseModelImport.SUCCEEDED:
            base_model_register(manifest=progress["manifest"])
    row.refresh_from_db()
    return row


def recent_imports(*, limit):
    """The latest imports, newest first, each brought up to date from its progress file."""
    latest = BaseModelImport.objects.values_list("pk", flat=True)[:limit]
    return [base_model_import_refresh(import_id=pk) for pk in latest]


def import_summary(row):
    """An import as the API and the page show it."""
    return {"id": row.pk, "name": row.name, "source": row.source, "status": row.status, "phase": row.phase,
            "percent": row.percent, "created_at": row.created_at, "finished_at": row.finished_at,
            "error": {"code": row.error_code, "message": row.error_message} if row.error_code else None}

