"""Structured logs: one JSON object per line, each carrying the request id, across web, control and runtime.

``VAJRA_LOG_FORMAT=json`` selects them (``plain``, the default, keeps the human format). The request id is
the web's ``x-request-id``; it travels with every Celery task in the message header ``vajra_request_id``
(set when a task is published, restored while it runs), so a line written by the control worker or by a
runtime node names the HTTP request that started the work. A runtime inference task sent without the header
logs under its inference request id.

Django-free: the runtime uses this module as is; the web and control processes use ``vajra.logging``, which
adds Django's request and the middleware's context variable.
"""

import contextvars
import json
import logging
import os
import re
import sys
from datetime import UTC, datetime

from .config import ConfigError

HEADER = "vajra_request_id"
FORMATS = ("plain", "json")
NO_ID = "-"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")  # the web middleware's rule: nothing else reaches a log line

request_id_var = contextvars.ContextVar("vajra_request_id", default=NO_ID)
task_var = contextvars.ContextVar("vajra_task", default=None)  # (task name, task id) while a task runs

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "request_id", "request", "taskName"}


def log_format():
    value = os.environ.get("VAJRA_LOG_FORMAT", "").strip() or "plain"
    if value not in FORMATS:
        raise ConfigError(f"VAJRA_LOG_FORMAT={value!r}: use plain or json.")
    return value


def valid_request_id(value):
    return value if isinstance(value, str) and _VALID_ID.match(value) else None


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "request_id", ...}``: the record's ``extra`` fields, the running
    Celery task, ``static`` fields (a runtime node's name) and the exception, if any."""

    context_var = request_id_var

    def __init__(self, *args, static=None, **kwargs):
        super().__init__()
        self.static = dict(static or {})

    def request_id(self, record):
        return getattr(record, "request_id", None) or self.context_var.get()

    def format(self, record):
        request_id = self.request_id(record)
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": None if request_id == NO_ID else request_id,
            **self.static,
        }
        task = task_var.get()
        if task is not None:
            entry["task"], entry["task_id"] = task
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def carry_request_ids(var):
    """Connects Celery's signals so that the request id held in ``var`` leaves with every task this process
    publishes and is set in ``var`` while a task received with one runs. Idempotent."""
    from celery import signals

    def publish(headers=None, **_):
        request_id = valid_request_id(var.get())
        if headers is not None and request_id:
            headers.setdefault(HEADER, request_id)

    def prerun(task=None, task_id=None, **_):
        request = getattr(task, "request", None)
        if getattr(request, "is_eager", False):  # run in the caller's own context: its request id stands
            return
        var.set(valid_request_id(getattr(request, HEADER, None)) or NO_ID)
        task_var.set((getattr(task, "name", None), task_id))

    def postrun(task=None, **_):
        if getattr(getattr(task, "request", None), "is_eager", False):
            return
        var.set(NO_ID)
        task_var.set(None)

    uid = f"vajra-request-id-{id(var)}"
    signals.before_task_publish.connect(publish, weak=False, dispatch_uid=f"{uid}-publish")
    signals.task_prerun.connect(prerun, weak=False, dispatch_uid=f"{uid}-prerun")
    signals.task_postrun.connect(postrun, weak=False, dispatch_uid=f"{uid}-postrun")


def default_request_id(value):
    """Inside a task: log under ``value`` when the message carried no request id."""
    if request_id_var.get() == NO_ID and valid_request_id(value):
        request_id_var.set(value)


def json_logs_in_celery(formatter):
    """Gives the handlers Celery sets up in a worker (root and task loggers) ``formatter``; Celery still
    chooses the handlers, levels and stdout redirection."""
    from celery import signals

    def use_formatter(logger=None, **_):
        if logger is None:
            return
        if not logger.handlers:
            logger.addHandler(logging.StreamHandler(sys.stderr))
        for handler in logger.handlers:
            handler.setFormatter(formatter)

    signals.after_setup_logger.connect(use_formatter, weak=False, dispatch_uid="vajra-json-logs")
    signals.after_setup_task_logger.connect(use_formatter, weak=False, dispatch_uid="vajra-json-task-logs")
