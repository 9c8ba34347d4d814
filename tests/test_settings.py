"""Settings fail loudly on bad values, production settings pass check --deploy, and Celery is what we
think it is (JSON only, late acks, time limits) on both the control and the runtime apps."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PRODUCTION = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "x9!k2#production-secret-for-the-check-deploy-test-only-0123456789",
    "DJANGO_ALLOWED_HOSTS": "vajra.example.com",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://vajra.example.com",
}


def run_django(code, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "VAJRA_", "CELERY_"))}
    return subprocess.run([sys.executable, "-c", f"import django; django.setup(); {code}"], cwd=ROOT,
                          env={**base, "DJANGO_SETTINGS_MODULE": "vajra.settings", **env},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name,value", [
    ("DJANGO_DEBUG", "maybe"),
    ("DATABASE_URL", "mysql://root@localhost/vajra"),
    ("REDIS_URL", "http://localhost:6379"),
    ("VAJRA_RATE_LIMIT_PER_KEY", "lots"),
    ("VAJRA_RATE_LIMIT_PER_TENANT", "0"),
    ("CELERY_TASK_TIME_LIMIT", "5"),  # not above the soft limit (60)
    ("VAJRA_HEARTBEAT_SECONDS", "1.5"),
])
def test_bad_value_fails_at_start_naming_the_variable(name, value):
    result = run_django("print('started')", **{name: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert name in result.stderr.splitlines()[-1], result.stderr[-500:]


def test_production_requires_a_real_secret():
    result = run_django("", DJANGO_DEBUG="false")
    assert result.returncode != 0 and "DJANGO_SECRET_KEY" in result.stderr


def test_check_deploy_is_clean_in_production():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "VAJRA_"))}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env={**env, **PRODUCTION}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def _assert_json_late_acks_and_limits(conf):
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert 0 < conf.task_soft_time_limit < conf.task_time_limit


def test_control_celery_app_settings():
    from vajra.celery import app

    _assert_json_late_acks_and_limits(app.conf)
    assert app.conf.task_routes["control.*"] == {"queue": "control"}
    assert "control.nodes_mark_down" in {entry["task"] for entry in app.conf.beat_schedule.values()}


def test_runtime_celery_app_settings():
    from gpu_runtime.celery_app import app, config
    from gpu_runtime.contract import node_queue

    _assert_json_late_acks_and_limits(app.conf)
    assert [q.name for q in app.conf.task_queues] == [node_queue(config.node_name)]


def test_celery_urls_for_unix_sockets():
    from gpu_runtime.redis_url import celery_url

    assert celery_url("unix:///v/run/redis.sock") == "redis+socket:///v/run/redis.sock"
    assert celery_url("unix:///v/r.sock?db=3") == "redis+socket:///v/r.sock?virtual_host=3"
    assert celery_url("redis://h:6379/2") == "redis://h:6379/2"


def test_runtime_config_refuses_bad_values(monkeypatch):
    from gpu_runtime.config import ConfigError, RuntimeConfig

    monkeypatch.setenv("VAJRA_DTYPE", "int4")
    with pytest.raises(ConfigError, match="VAJRA_DTYPE"):
        RuntimeConfig.from_env()
    monkeypatch.setenv("VAJRA_DTYPE", "auto")
    monkeypatch.setenv("VAJRA_NODE_NAME", "bad name!")
    with pytest.raises(ConfigError, match="VAJRA_NODE_NAME"):
        RuntimeConfig.from_env()
    monkeypatch.setenv("VAJRA_NODE_NAME", "node-a")
    monkeypatch.setenv("VAJRA_TORCH_THREADS", "-1")
    with pytest.raises(ConfigError, match="VAJRA_TORCH_THREADS=-1 is below the minimum 0"):
        RuntimeConfig.from_env()
    monkeypatch.setenv("VAJRA_TORCH_THREADS", "3")
    assert RuntimeConfig.from_env().torch_threads == 3


def test_make_up_splits_the_cores_between_the_nodes_it_starts(monkeypatch):
    from vajra.management.commands.up import node_threads

    monkeypatch.delenv("VAJRA_TORCH_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert [node_threads(n) for n in (1, 2, 3, 32)] == ["16", "8", "5", "1"]
    monkeypatch.setenv("VAJRA_TORCH_THREADS", "4")  # the operator's choice is kept
    assert node_threads(2) == "4"
