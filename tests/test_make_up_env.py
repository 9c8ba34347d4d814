"""The Django settings `manage.py up` gives web, control and beat: DEBUG off unless asked for, and what a local
run over plain HTTP then needs (tests/integration/test_production_web.py runs daphne with them), and the runtime
nodes it starts, each with its base model."""

import os
import stat

import pytest
from django.core.management import CommandError

from vajra.management.commands.up import parse_nodes, platform_env


def test_the_secret_key_is_made_once_and_kept_private(tmp_path, monkeypatch):
    monkeypatch.delenv("DJANGO_SECRET_KEY", raising=False)
    monkeypatch.delenv("DJANGO_ALLOWED_HOSTS", raising=False)
    first = platform_env(debug=False, host="127.0.0.1", var=tmp_path)
    second = platform_env(debug=False, host="127.0.0.1", var=tmp_path)
    assert first["DJANGO_SECRET_KEY"] == second["DJANGO_SECRET_KEY"] and len(first["DJANGO_SECRET_KEY"]) >= 50
    assert stat.S_IMODE(os.stat(tmp_path / "secret_key").st_mode) == 0o600
    assert first["DJANGO_HTTPS"] == "false" and first["DJANGO_ALLOWED_HOSTS"] == "127.0.0.1,localhost,[::1]"
    assert platform_env(debug=True, host="127.0.0.1", var=tmp_path) == {"DJANGO_DEBUG": "true"}
    monkeypatch.setenv("DJANGO_SECRET_KEY", "x" * 60)  # an operator's own values win
    assert "DJANGO_SECRET_KEY" not in platform_env(debug=False, host="192.0.2.5", var=tmp_path)
    assert platform_env(debug=False, host="192.0.2.5", var=tmp_path)["DJANGO_ALLOWED_HOSTS"].endswith(",192.0.2.5")


def test_nodes_name_their_base_model_after_a_colon():
    assert parse_nodes("node-a,node-b:tiny-qwen2", "smollm2-135m-instruct") == [
        ("node-a", "smollm2-135m-instruct"), ("node-b", "tiny-qwen2")]
    assert parse_nodes("local", "smollm2-135m-instruct") == [("local", "smollm2-135m-instruct")]
    for bad in ("a,a:x", "a:../x", "bad name", "a:Upper"):
        with pytest.raises(CommandError):
            parse_nodes(bad, "smollm2-135m-instruct")
