"""Node loss in the control plane (fleet/failover.py): a lost node's unfinished requests become the next
attempt on another node (row, attempt key, the stream's retry entry, the task), or end with node_lost when no
node is left; a request that had finished on the lost node is recorded from its stream, once; hot adapters are
pinned again; a restarted node loses only the requests sent before it started, and gets its warm adapters back.
The real-process version of this is tests/integration/test_node_loss.py."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from adapters.models import Adapter, AdapterVersion, BaseModel
from billing.models import UsageEvent
from fleet.heartbeats import node_heartbeat, nodes_mark_down
from fleet.models import Node
from gpu_runtime.contract import attempt_key, cancel_key, stream_key
from gpu_runtime.generation import GenerationRequest
from gpu_runtime.streams import StreamWriter
from serving.models import InferenceRequest
from tests.factories import make_heartbeat, make_node, make_request
from vajra.redis import get_redis

pytestmark = pytest.mark.django_db(transaction=True)
BASE = "smollm2-135m-instruct"
STARTED = "2026-12-01T00:00:00+00:00"
FINAL = {"finish_reason": "stop", "usage": {"prompt_tokens": 3, "completion_tokens": 2, "cached_tokens": 0},
         "timings": {"queued_ms": 1.0, "adapter_ready_ms": 0.5, "first_token_ms": 2.0, "total_ms": 3.0},
         "gpu_ms": 2.0, "error": None}


@pytest.fixture
def sent(monkeypatch):
    from vajra.celery import app

    calls = []
    monkeypatch.setattr(app, "send_task", lambda name, args=None, **options: calls.append((name, args, options)))
    return calls


@pytest.fixture
def base(db):
    return BaseModel.objects.create(name=BASE, context_length=2048)


def node(name, *, age_s=0, resident=(), started=STARTED):
    return make_node(name, base=BASE, slots=8, age_s=age_s, resident=resident, started_at=started)


def request_on(tenant, base, where, *, status="running", attempt=1, request_id=None):
    request_id = request_id or f"req_{where.name}_{InferenceRequest.objects.count()}"
    payload = {"request_id": request_id, "prompt": "Hello", "messages": [], "sampling": {"max_tokens": 8},
               "adapter": None, "tenant": tenant.slug, "base_model": BASE}
    return make_request(tenant, base, request_id=request_id, node=where, status=status, attempt=attempt,
                        payload=payload)


def stream(request_id):
    return [(f[b"type"].decode(), json.loads(f[b"data"])) for _, f in get_redis().xrange(stream_key(request_id))]


@pytest.fixture(autouse=True)
def clean_streams():
    yield
    redis = get_redis()
    for key in redis.scan_iter("vajra:stream:req_*"):
        redis.delete(key)
    for key in redis.scan_iter("vajra:attempt:req_*"):
        redis.delete(key)


def test_a_lost_nodes_requests_are_sent_to_another_node_as_the_next_attempt(acme, base, sent, settings):
    settings.VAJRA_HEARTBEAT_SECONDS, settings.VAJRA_NODE_DOWN_AFTER_MISSED = 1, 3
    lost, other = node("node-a", age_s=10), node("node-b")
    running = request_on(acme, base, lost)
    queued = request_on(acme, base, lost, status="queued")
    elsewhere = request_on(acme, base, other)
    StreamWriter(get_redis()).delta(running.id, "Hel")  # part of the answer had gone out

    assert nodes_mark_down() == 1

    lost.refresh_from_db()
    assert lost.status == Node.DOWN
    for row in (running, queued):
        row.refresh_from_db()
        assert (row.node.name, row.attempt, row.status) == ("node-b", 2, InferenceRequest.QUEUED)
        assert row.payload["prompt"] == "Hello"
        assert get_redis().get(attempt_key(row.id)) == b"2"
        kind, data = stream(row.id)[-1]
        assert kind == "retry" and data["attempt"] == 2 and data["node"] == "node-b" and "node-a" in data["reason"]
    infer = [(args[0], options) for name, args, options in sent if name == "runtime.infer"]
    assert sorted(p["request_id"] for p, _ in infer) == sorted([running.id, queued.id])
    for payload, options in infer:
        assert payload["attempt"] == 2 and options["queue"] == "node.node-b"
        assert options["task_id"] == f"{payload['request_id']}.2"
    elsewhere.refresh_from_db()
    assert (elsewhere.node.name, elsewhere.attempt) == ("node-b", 1)
    assert nodes_mark_down() == 0 and len(sent) == 2  # nothing is sent twice


def test_with_no_node_left_the_request_ends_with_node_lost_and_bills_nothing(acme, base, sent, settings):
    settings.VAJRA_HEARTBEAT_SECONDS, settings.VAJRA_NODE_DOWN_AFTER_MISSED = 1, 3
    lost = node("node-a", age_s=10)
    row = request_on(acme, base, lost)
    nodes_mark_down()
    row.refresh_from_db()
    assert (row.status, row.error_code, row.payload) == (InferenceRequest.FAILED, "node_lost", None)
    kind, final = stream(row.id)[-1]
    assert kind == "final" and final["error"]["code"] == "node_lost" and "send the request again" in \
        final["error"]["message"]
    assert not sent
    assert sum(e.cost for e in UsageEvent.objects.filter(request_id=row.id)) == 0


def test_past_the_attempt_limit_the_request_fails(acme, base, sent, settings):
    settings.VAJRA_HEARTBEAT_SECONDS, settings.VAJRA_NODE_DOWN_AFTER_MISSED, settings.VAJRA_MAX_ATTEMPTS = 1, 3, 2
    lost, _ = node("node-a", age_s=10), node("node-b")
    row = request_on(acme, base, lost, attempt=2)
    nodes_mark_down()
    row.refresh_from_db()
    assert (row.status, row.error_code) == (InferenceRequest.FAILED, "node_lost") and not sent


def test_a_request_that_finished_on_the_lost_node_is_recorded_from_its_stream_once(acme, base, sent, settings):
    settings.VAJRA_HEARTBEAT_SECONDS, settings.VAJRA_NODE_DOWN_AFTER_MISSED = 1, 3
    lost, _ = node("node-a", age_s=10), node("node-b")
    row = request_on(acme, base, lost)
    StreamWriter(get_redis()).final(row.id, FINAL)  # the final event reached Redis; its report to control did not
    nodes_mark_down()
    row.refresh_from_db()
    assert (row.status, row.completion_tokens, row.attempt) == (InferenceRequest.SUCCEEDED, 2, 1)
    assert not sent
    assert UsageEvent.objects.filter(request_id=row.id, kind="inference").count() == 1


def test_a_restarted_node_loses_only_what_was_sent_before_it_started(acme, base, sent):
    old_start, new_start = "2026-12-01T00:00:00+00:00", timezone.now().isoformat()
    node_heartbeat(payload=make_heartbeat(node="node-a", base_model=BASE, started_at=old_start))
    node_heartbeat(payload=make_heartbeat(node="node-b", base_model=BASE, started_at=old_start))
    a = Node.objects.get(name="node-a")
    before = request_on(acme, base, a)
    InferenceRequest.objects.filter(pk=before.pk).update(created_at=timezone.now() - timedelta(minutes=1))
    node_heartbeat(payload=make_heartbeat(node="node-a", base_model=BASE, started_at=new_start))  # it restarted
    after = request_on(acme, base, a, status="queued")  # sent to the new process: it runs there
    node_heartbeat(payload=make_heartbeat(node="node-a", base_model=BASE, started_at=new_start))  # same process
    before.refresh_from_db()
    after.refresh_from_db()
    assert before.attempt == 2 and after.attempt == 1 and after.node.name == "node-a"
    assert [name for name, *_ in sent].count("runtime.infer") == 1


def test_hot_adapters_of_a_lost_node_are_pinned_again_and_a_rejoining_node_gets_its_warm_ones(
        acme, base, sent, settings):
    settings.VAJRA_HEARTBEAT_SECONDS, settings.VAJRA_NODE_DOWN_AFTER_MISSED = 1, 3
    versions = {}
    for name, tier in (("hot-bot", "hot"), ("warm-bot", "warm"), ("cold-bot", "cold")):
        adapter = Adapter.objects.create(tenant=acme, base_model=base, name=name, tier=tier)
        versions[name] = AdapterVersion.objects.create(
            adapter=adapter, number=1, status="ready", sha256="0" * 64, size_bytes=1, rank=8, alpha=16,
            target_modules=["q_proj"], dtype="F32", storage_key=f"k/{name}")
        adapter.current_version = versions[name]
        adapter.save()
    hot_token = f"a{versions['hot-bot'].adapter_id}:1"
    node("node-a", age_s=10, resident=[hot_token])
    node("node-b")
    nodes_mark_down()
    tiers = [(args[0]["adapter_id"], args[1], options["queue"]) for name, args, options in sent
             if name == "runtime.set_tier"]
    assert tiers == [(f"a{versions['hot-bot'].adapter_id}", "hot", "node.node-b")]

    sent.clear()
    node_heartbeat(payload=make_heartbeat(node="node-a", base_model=BASE, started_at=timezone.now().isoformat()))
    tiers = [(args[0]["adapter_id"], args[1], options["queue"]) for name, args, options in sent
             if name == "runtime.set_tier"]
    assert (f"a{versions['warm-bot'].adapter_id}", "warm", "node.node-a") in tiers
    assert all(t[0] != f"a{versions['cold-bot'].adapter_id}" for t in tiers)


def test_a_node_that_restarted_loses_its_pins_and_they_are_pinned_again(acme, base, sent, settings):
    """Its pin was sent to it a moment ago (the pin's record still names it) but the restarted process holds
    nothing: the hot adapter is pinned again, and a pin that an up node reports is left alone."""
    from fleet.placement import pin_sent, send_tier

    settings.VAJRA_HEARTBEAT_SECONDS, settings.VAJRA_NODE_DOWN_AFTER_MISSED = 1, 3
    versions = []
    for name in ("hot-a", "hot-b"):
        adapter = Adapter.objects.create(tenant=acme, base_model=base, name=name, tier="hot")
        versions.append(AdapterVersion.objects.create(
            adapter=adapter, number=1, status="ready", sha256="0" * 64, size_bytes=1, rank=8, alpha=16,
            target_modules=["q_proj"], dtype="F32", storage_key=f"k/{name}"))
        adapter.current_version = versions[-1]
        adapter.save()
    node("node-a")
    make_node("node-b", base=BASE, slots=8, on_device=1, pinned=1, pins=[f"a{versions[1].adapter_id}:1"],
              started_at=STARTED)
    send_tier(versions[0])  # the most hot capacity left: node-a
    assert pin_sent(f"a{versions[0].adapter_id}:1") == "node-a"
    sent.clear()
    node_heartbeat(payload=make_heartbeat(node="node-a", base_model=BASE, started_at=timezone.now().isoformat()))
    tiers = [(args[0]["adapter_id"], args[1]) for name, args, options in sent if name == "runtime.set_tier"]
    assert tiers == [(f"a{versions[0].adapter_id}", "hot")]


def test_readers_skip_what_a_superseded_attempt_wrote_after_the_retry():
    from asgiref.sync import async_to_sync

    from serving import relay

    writer, rid = StreamWriter(get_redis()), "req_relay_attempts"
    writer.delta(rid, "Hel")
    writer.event(rid, "retry", {"attempt": 2, "node": "node-b", "reason": "node node-a lost"})
    writer.delta(rid, "lo", attempt=1)  # the old node, thought lost, was still running
    writer.delta(rid, "Hello", attempt=2)
    writer.final(rid, {**FINAL, "attempt": 1})
    writer.final(rid, {**FINAL, "attempt": 2})

    async def read():
        return [(kind, data) async for _, kind, data in relay.events(rid)]

    seen = async_to_sync(read)()
    assert [k for k, _ in seen] == ["delta", "retry", "delta", "final"]
    assert seen[2][1]["text"] == "Hello" and seen[3][1]["attempt"] == 2


def test_a_superseded_attempts_final_is_not_recorded(acme, base, sent):
    from tests.factories import record_node_final

    row = request_on(acme, base, node("node-b"), attempt=2)
    record_node_final(row.id, FINAL)  # attempt 1's, late
    row.refresh_from_db()
    assert row.status == InferenceRequest.RUNNING and not UsageEvent.objects.filter(request_id=row.id).exists()
    record_node_final(row.id, {**FINAL, "attempt": 2})
    row.refresh_from_db()
    assert row.status == InferenceRequest.SUCCEEDED
    assert UsageEvent.objects.filter(request_id=row.id, kind="inference").count() == 1


def test_a_new_nodes_racing_first_beats_make_one_node(db, monkeypatch):
    """Its loader and heartbeat threads both beat at start: the second must not fail on the unique name."""
    other = Node.objects.create(name="node-new", base_model=BASE, last_heartbeat_at=timezone.now())
    real, looks = Node.objects.select_for_update, []

    def first_look_misses():  # this beat looked before the other beat's row was committed
        looks.append(1)
        return real().filter(pk__in=[]) if len(looks) == 1 else real()

    monkeypatch.setattr(Node.objects, "select_for_update", first_look_misses)
    node = node_heartbeat(payload=make_heartbeat(node="node-new", base_model=BASE, queue_depth=3))
    assert node.pk == other.pk and node.state["queue_depth"] == 3 and Node.objects.count() == 1


def test_the_runtime_runs_only_the_current_attempt():
    redis = get_redis()
    writer = StreamWriter(redis)
    rid = "req_attempts"
    assert writer.run_state(rid) == (None, None, False)  # never failed over: any attempt runs
    redis.set(attempt_key(rid), 2, ex=60)
    assert writer.run_state(rid) == (None, 2, False)
    writer.final(rid, FINAL)  # attempt 1's end, late: attempt 2 has still to run
    assert writer.run_state(rid) == (None, 2, False)
    redis.set(cancel_key(rid), 1, ex=60)
    assert writer.run_state(rid) == (None, 2, True)  # cancelled while its task waited: the same round trip says so
    writer.final(rid, {**FINAL, "attempt": 2})
    final, current, _ = writer.run_state(rid)
    assert final["finish_reason"] == "stop" and current == 2
    assert GenerationRequest.from_json({"request_id": rid, "prompt": "x", "attempt": 2}).attempt == 2
    assert GenerationRequest.from_json({"request_id": rid, "prompt": "x"}).attempt == 1
