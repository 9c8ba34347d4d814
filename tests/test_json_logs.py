"""Structured logs: VAJRA_LOG_FORMAT=json writes one JSON object per line carrying the request
id; on web it is the response's x-request-id; it travels with Celery tasks (a real worker over the private
Redis) so control and runtime lines name the same request."""

import io
import json
import logging
import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from celery import Celery, signals
from celery.contrib.testing.worker import start_worker

from gpu_runtime import logs
from gpu_runtime.redis_url import celery_url
from vajra.logging import JsonFormatter
from vajra.middleware import request_id_var

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def captured(formatter, logger_name=""):
    """Lines the given formatter writes for ``logger_name`` (root by default), parsed."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    lines = []
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        lines.extend(json.loads(line) for line in stream.getvalue().splitlines())


def test_a_json_line_has_the_request_id_the_extras_and_the_exception():
    token = request_id_var.set("req_abc123456")
    try:
        with captured(JsonFormatter(), "vajra.test") as lines:
            log = logging.getLogger("vajra.test")
            log.warning("adapter %s moved", "support-bot", extra={"tier": "warm", "took_ms": 4.5})
            try:
                raise ValueError("broken adapter")
            except ValueError:
                log.exception("load failed")
    finally:
        request_id_var.reset(token)
    first, second = lines
    assert first["message"] == "adapter support-bot moved" and first["level"] == "WARNING"
    assert first["logger"] == "vajra.test" and first["ts"].endswith("Z")
    assert (first["request_id"], first["tier"], first["took_ms"]) == ("req_abc123456", "warm", 4.5)
    assert second["request_id"] == "req_abc123456"
    assert "ValueError: broken adapter" in second["exc_info"]


def test_outside_a_request_the_request_id_is_null():
    with captured(JsonFormatter(), "vajra.test") as lines:
        logging.getLogger("vajra.test").warning("beat")
    assert lines[0]["request_id"] is None


def test_an_http_requests_log_lines_carry_its_x_request_id(client, db):
    with captured(JsonFormatter()) as lines:
        refused = client.get("/metrics", HTTP_X_REQUEST_ID="trace-metrics-0001")  # logged inside the view
        missing = client.get("/no-such-page/", HTTP_X_REQUEST_ID="trace-missing-0002")  # logged by django.request
        generated = client.get("/metrics")  # no id sent: the one the middleware made up
    assert refused["x-request-id"] == "trace-metrics-0001" and missing["x-request-id"] == "trace-missing-0002"
    by_id = {}
    for line in lines:
        by_id.setdefault(line["request_id"], []).append(line)
    assert any("metrics: refused" in line["message"] for line in by_id["trace-metrics-0001"])
    assert any(line["logger"] == "django.request" and line["status_code"] == 404
               for line in by_id["trace-missing-0002"])
    assert any("metrics: refused" in line["message"] for line in by_id[generated["x-request-id"]])


def test_json_logs_are_chosen_by_the_setting():
    code = ("import django, logging; django.setup(); "
            "logging.getLogger('vajra.check').warning('hello', extra={'node': 'n1'})")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "VAJRA_LOG"))}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**env, "DJANGO_SETTINGS_MODULE": "vajra.settings", "VAJRA_LOG_FORMAT": "json"})
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert (line["message"], line["node"], line["request_id"]) == ("hello", "n1", None)
    bad = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**env, "DJANGO_SETTINGS_MODULE": "vajra.settings", "VAJRA_LOG_FORMAT": "xml"})
    assert bad.returncode != 0 and "VAJRA_LOG_FORMAT" in bad.stderr


def test_celery_worker_log_handlers_get_the_json_formatter():
    logs.json_logs_in_celery(JsonFormatter())
    logger = logging.getLogger(f"vajra.celery-setup-{uuid.uuid4().hex}")
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    signals.after_setup_logger.send(sender=None, logger=logger, loglevel=logging.INFO, logfile=None, format="",
                                    colorize=False)
    assert isinstance(handler.formatter, JsonFormatter)


def test_the_runtime_formatter_names_the_node_and_falls_back_to_the_inference_request():
    formatter = logs.JsonFormatter(static={"node": "gpu-a"})
    token = logs.request_id_var.set(logs.NO_ID)
    try:
        logs.default_request_id("req_" + "0" * 32)  # a task that came without a header
        logs.default_request_id("req_" + "1" * 32)  # the first one stays
        with captured(formatter, "vajra.runtime.test") as lines:
            logging.getLogger("vajra.runtime.test").warning("admitted")
        logs.default_request_id("bad id with spaces")
    finally:
        logs.request_id_var.reset(token)
    assert lines[0]["node"] == "gpu-a" and lines[0]["request_id"] == "req_" + "0" * 32


@pytest.fixture(scope="module")
def celery_app():
    """A Celery app on the suite's Redis with a queue of its own, and a worker thread serving it."""
    url = celery_url(os.environ["REDIS_URL"])
    app = Celery(f"vajra-logs-{uuid.uuid4().hex[:8]}", broker=url, backend=url, fixups=[])
    queue = f"test.logs.{uuid.uuid4().hex[:8]}"
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    task_default_queue=queue, worker_hijack_root_logger=False)

    @app.task(name="test.log_line")
    def log_line():
        logging.getLogger("vajra.control.test").warning("control task ran")
        return request_id_var.get()

    @app.task(name="test.hop")
    def hop():  # a task that sends another: the id goes on with it
        return log_line.delay().get(timeout=20, disable_sync_subtasks=False)

    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="WARNING",
                      shutdown_timeout=10):
        yield app


def test_the_request_id_travels_with_celery_tasks(celery_app):
    with captured(JsonFormatter(), "vajra.control.test") as lines:
        token = request_id_var.set("trace-celery-0003")  # as inside a web request
        try:
            result = celery_app.tasks["test.log_line"].delay()
            chained = celery_app.tasks["test.hop"].delay()
            # a task run eagerly runs in the caller's context and leaves its request id alone
            assert celery_app.tasks["test.log_line"].apply().get() == "trace-celery-0003"
            assert request_id_var.get() == "trace-celery-0003"
        finally:
            request_id_var.reset(token)
        assert result.get(timeout=20) == "trace-celery-0003"  # restored in the worker while the task ran
        assert chained.get(timeout=30) == "trace-celery-0003"  # and passed on by a task that sends one
        unmarked = celery_app.tasks["test.log_line"].delay().get(timeout=20)  # sent outside any request
    assert unmarked == "-"
    marked = [line for line in lines if line["request_id"] == "trace-celery-0003"]
    assert len(marked) == 3
    assert sum(1 for line in marked if line.get("task") == "test.log_line" and line["task_id"]) == 2
