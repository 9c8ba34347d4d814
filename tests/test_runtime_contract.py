"""The runtime's Django-free pieces: the JSON contract, the model store's bookkeeping, device choice,
and the control plane's handling of heartbeats."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.heartbeats import node_heartbeat, nodes_mark_down, nodes_up
from fleet.models import Node
from gpu_runtime.contract import ContractError, Heartbeat
from gpu_runtime.model_store import is_imported, read_manifest, sha256_file
from tests.factories import make_heartbeat, make_node


def test_heartbeat_round_trips_as_json():
    payload = json.loads(json.dumps(make_heartbeat(adapters={"hot": 2}, queue_depth=3)))
    assert Heartbeat.from_json(payload).adapters == {"hot": 2}


@pytest.mark.parametrize("payload,message", [
    ([], "JSON object"),
    ({**make_heartbeat(), "surprise": 1}, "Unknown heartbeat fields"),
    ({"node": "x"}, "Bad heartbeat"),
    ({**make_heartbeat(), "node": ""}, "without a node name"),
])
def test_heartbeat_refuses_what_breaks_the_contract(payload, message):
    with pytest.raises(ContractError, match=message):
        Heartbeat.from_json(payload)


def test_heartbeat_upserts_the_node_and_revives_a_down_one(db):
    node = node_heartbeat(payload=make_heartbeat())
    assert (node.status, node.device, node.state["dtype"]) == (Node.UP, "cuda", "bfloat16")
    Node.objects.filter(pk=node.pk).update(status=Node.DOWN, last_heartbeat_at=timezone.now() - timedelta(hours=1))
    node_heartbeat(payload=make_heartbeat(queue_depth=7))
    node.refresh_from_db()
    assert node.status == Node.UP and node.state["queue_depth"] == 7
    assert Node.objects.count() == 1


def test_silent_nodes_are_marked_down_in_bounded_batches(db, settings):
    settings.VAJRA_HEARTBEAT_SECONDS, settings.VAJRA_NODE_DOWN_AFTER_MISSED = 5, 3
    for i in range(3):
        make_node(f"old-{i}", age_s=16, state={})
    make_node("fresh", state={})
    assert nodes_mark_down(limit=2) == 2
    assert nodes_mark_down(limit=2) == 1
    assert nodes_mark_down() == 0
    assert [n.name for n in nodes_up()] == ["fresh"]


def test_model_store_knows_a_complete_import_from_a_partial_one(tmp_path):
    variant = tmp_path / "m" / "float32"
    variant.mkdir(parents=True)
    weights = variant / "model.safetensors"
    weights.write_bytes(b"x" * 100)
    assert not is_imported(tmp_path, "m")  # no manifest yet
    manifest = {"variants": {"float32": {"bytes": 100, "sha256": sha256_file(weights)}}}
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    assert is_imported(tmp_path, "m") and read_manifest(tmp_path, "m") == manifest
    weights.write_bytes(b"x" * 50)  # truncated weights are not an import
    assert not is_imported(tmp_path, "m")


def test_dtype_auto_is_bf16_only_where_it_is_fast(monkeypatch):
    from gpu_runtime import base_model

    assert base_model.pick_dtype("auto", "cuda") == "bfloat16"
    assert base_model.pick_dtype("float16", "cpu") == "float16"
    monkeypatch.setattr(base_model, "cpu_has_native_bf16", lambda: False)
    assert base_model.pick_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(base_model, "cpu_has_native_bf16", lambda: True)
    assert base_model.pick_dtype("auto", "cpu") == "bfloat16"


def test_web_side_never_imports_torch_and_runtime_never_imports_django():
    import subprocess
    import sys

    web = subprocess.run([sys.executable, "-c", (
        "import django, sys; django.setup(); import vajra.urls, vajra.asgi, tenants.api, fleet.tasks;"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")],
        capture_output=True, text=True, env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "vajra.settings"})
    assert web.stdout.strip() == "[]", web.stderr[-2000:]
    runtime = subprocess.run([sys.executable, "-c", (
        "import sys, gpu_runtime.worker, gpu_runtime.model_store, gpu_runtime.base_model;"
        "print(sorted(m for m in ('django.db', 'django.conf', 'rest_framework', 'channels', 'vajra', 'tenants')"
        " if m in sys.modules))")],
        capture_output=True, text=True)
    # (kombu itself probes django.utils for JSON encoding; nothing Django-configured is loaded)
    assert runtime.stdout.strip() == "[]", runtime.stderr[-2000:]
