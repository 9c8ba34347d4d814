"""The runtime's Django-free pieces: the JSON contract, the model store's bookkeeping, device choice,
and the control plane's handling of heartbeats."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.heartbeats import node_heartbeat, nodes_mark_down
from fleet.liveness import nodes_up
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
        "import sys, gpu_runtime.celery_app, gpu_runtime.node, gpu_runtime.tasks, gpu_runtime.training_tasks,"
        " gpu_runtime.model_store, gpu_runtime.base_model;"
        "print(sorted(m for m in ('django.db', 'django.conf', 'rest_framework', 'channels', 'vajra', 'tenants')"
        " if m in sys.modules))")],
        capture_output=True, text=True)
    # (kombu itself probes django.utils for JSON encoding; nothing Django-configured is loaded)
    assert runtime.stdout.strip() == "[]", runtime.stderr[-2000:]


# ---- the final event: one type, the wire format it always had ------------------------------------------------------

FINALS_ON_THE_WIRE = [
    # a row that ran: usage with cached tokens, every timing, its GPU-ms, no error
    '{"finish_reason": "stop", "usage": {"prompt_tokens": 3, "completion_tokens": 5, "cached_tokens": 0}, '
    '"timings": {"queued_ms": 0.123, "adapter_ready_ms": 0.0, "first_token_ms": 12.5, "total_ms": 40.25}, '
    '"gpu_ms": 30.125, "error": null}',
    # a row that failed alone, on a second attempt
    '{"finish_reason": "error", "usage": {"prompt_tokens": 4, "completion_tokens": 1, "cached_tokens": 2}, '
    '"timings": {"queued_ms": 1.0, "adapter_ready_ms": 3.5, "first_token_ms": null, "total_ms": 9.0}, '
    '"gpu_ms": 7.0, "error": {"code": "non_finite_logits", "message": "row 0"}, "attempt": 2}',
    # a request that ended before it joined the batch: no cached_tokens, no first token
    '{"finish_reason": "cancelled", "usage": {"prompt_tokens": 0, "completion_tokens": 0}, '
    '"timings": {"queued_ms": 0.5, "adapter_ready_ms": 0.0, "first_token_ms": null, "total_ms": 0.5}, '
    '"gpu_ms": 0.0, "error": null, "attempt": 3}',
    # a payload the node could not read
    '{"finish_reason": "error", "error": {"code": "invalid_request", "message": "prompt: give a prompt string"}}',
]


@pytest.mark.parametrize("wire", FINALS_ON_THE_WIRE)
def test_final_round_trips_the_wire_format_byte_for_byte(wire):
    from gpu_runtime.contract import Final

    final = Final.from_json(json.loads(wire))
    assert json.dumps(final.to_json()) == wire


def test_final_reads_the_web_s_node_lost_final():
    from gpu_runtime.contract import Final
    from serving.reroute import node_lost_final

    written = node_lost_final("gpu-1", "missed heartbeats", 2).to_json()
    final = Final.from_json(written)
    assert (final.finish_reason, final.attempt, final.error.code) == ("error", 2, "node_lost")
    assert final.to_json() == written


def test_final_fields_are_typed():
    from gpu_runtime.contract import Final, FinalError, Timings, Usage

    final = Final("length", usage=Usage(2, 8, cached_tokens=0), gpu_ms=1.5, error=None,
                  timings=Timings(queued_ms=0.0, adapter_ready_ms=0.0, first_token_ms=1.0, total_ms=2.0))
    assert final.with_attempt(1) is final and final.with_attempt(2).to_json()["attempt"] == 2
    assert Final.failed("engine_error", "boom").to_json() == {
        "finish_reason": "error", "error": {"code": "engine_error", "message": "boom"}}
    assert Final.from_json(final.to_json()).usage == Usage(2, 8, 0)
    assert Final.from_json(Final.failed("x", "y").to_json()).error == FinalError("x", "y")


@pytest.mark.parametrize("payload,message", [
    ([], "JSON object"),
    ({"usage": {}}, "finish_reason"),
    ({"finish_reason": "stop", "surprise": 1}, "Unknown final fields"),
    ({"finish_reason": "stop", "usage": {"tokens": 1}}, "Unknown usage fields"),
    ({"finish_reason": "error", "error": {"code": "x"}}, "Bad final"),
])
def test_final_refuses_what_breaks_the_contract(payload, message):
    from gpu_runtime.contract import Final

    with pytest.raises(ContractError, match=message):
        Final.from_json(payload)


def test_the_engine_s_unadmitted_final_keeps_its_shape():
    from gpu_runtime.batch_rows import unadmitted_final
    from gpu_runtime.contract import FinalError

    final = unadmitted_final(0.0, "error", FinalError("context_length_exceeded", "too long")).to_json()
    assert list(final) == ["finish_reason", "usage", "timings", "gpu_ms", "error"]
    assert final["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    assert list(final["timings"]) == ["queued_ms", "adapter_ready_ms", "first_token_ms", "total_ms"]
    assert final["timings"]["first_token_ms"] is None and final["gpu_ms"] == 0.0
    assert final["error"] == {"code": "context_length_exceeded", "message": "too long"}


# ---- what the control plane sends a node: built by the contract's builders only -------------------------------

def test_node_messages_are_built_from_typed_refs():
    from gpu_runtime.contract import (
        TASK_PING,
        TASK_PREFETCH,
        TASK_SET_TIER,
        TASK_TRAIN,
        AdapterRef,
        NodeMessage,
        ping_message,
        prefetch_message,
        set_tier_message,
        train_message,
    )
    from gpu_runtime.training_spec import TrainingSpec

    ref = AdapterRef(adapter_id="a7", version=2, uri="file:///a/7/2", tier="warm")
    wire = {"adapter_id": "a7", "version": 2, "uri": "file:///a/7/2", "tier": "warm"}
    assert set_tier_message(ref, "hot") == NodeMessage(TASK_SET_TIER, [wire, "hot"])
    assert list(set_tier_message(ref, "hot").args[0]) == ["adapter_id", "version", "uri", "tier"]
    assert prefetch_message(ref) == NodeMessage(TASK_PREFETCH, [wire])
    assert AdapterRef.from_json(wire) == ref
    assert ping_message() == NodeMessage(TASK_PING, [])
    with pytest.raises(ContractError, match="unknown tier"):
        set_tier_message(ref, "lukewarm")
    with pytest.raises(ContractError, match="adapter"):
        AdapterRef.from_json({"adapter_id": "a7"})
    spec = TrainingSpec(job_id="job_1", base_model="m", adapter_id="a7", dataset_uri="file:///d",
                        output_uri="file:///o", hyperparameters={"rank": 8}, init=ref.to_json())
    assert train_message(spec) == NodeMessage(TASK_TRAIN, [spec.to_json()])
    assert TrainingSpec.from_json(train_message(spec).args[0]) == spec


def test_infer_payload_is_what_the_node_reads():
    from gpu_runtime.contract import TASK_INFER, AdapterRef, NodeMessage, infer_message, infer_payload, with_attempt
    from gpu_runtime.generation import GenerationRequest

    ref = AdapterRef(adapter_id="a1", version=1, uri="s3://b/a1/1", tier="hot")
    payload = infer_payload(request_id="req_1", prompt="", messages=({"role": "user", "content": "hi"},),
                            sampling={"max_tokens": 8}, adapter=ref, tenant="t1", base_model="m")
    assert list(payload) == ["request_id", "prompt", "messages", "sampling", "adapter", "tenant", "base_model"]
    assert payload["messages"] == [{"role": "user", "content": "hi"}] and payload["adapter"] == ref.to_json()
    request = GenerationRequest.from_json(json.loads(json.dumps(payload)))
    assert (request.adapter, request.sampling.max_tokens, request.attempt) == (ref, 8, 1)
    again = with_attempt(payload, 2)
    assert GenerationRequest.from_json(again).attempt == 2 and "attempt" not in payload
    assert infer_message(again) == NodeMessage(TASK_INFER, [again])


def test_runtime_registers_exactly_the_tasks_the_contract_names():
    """Every task a node runs is one the control plane sends (or a ping); nothing else is registered."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", (
        "from gpu_runtime.celery_app import app; app.loader.import_default_modules();"
        "print(sorted(n for n in app.tasks if not n.startswith('celery.')))")], capture_output=True, text=True)
    assert out.stdout.strip() == str(sorted(
        ["runtime.infer", "runtime.prefetch", "runtime.set_tier", "runtime.train", "runtime.ping"])), out.stderr
