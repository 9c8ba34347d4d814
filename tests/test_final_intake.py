"""The one intake for finals (serving/finals.py): every bringer of a request's final (the node's control task, the
beat's stream sweep, a throttled submit's retry, failover, the expiry) records it through ``record_final``, which
ends the request once and bills it once, whoever comes first; a second bringer, or one racing the first, changes
nothing. The row says who recorded its final (``final_source``)."""

import json
import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from adapters.models import BaseModel
from billing.models import UsageEvent
from fleet.heartbeats import nodes_mark_down
from fleet.models import Node
from gpu_runtime.contract import Final, stream_key
from gpu_runtime.streams import StreamWriter
from serving import finals, tasks
from serving.dispatch import inference_submit
from serving.models import InferenceRequest
from tenants.keys import principal_from_key
from tests.factories import create_key, put_on_plan
from vajra.redis import get_redis

pytestmark = pytest.mark.django_db(transaction=True)
BASE = "smollm2-135m-instruct"
FINAL = {"finish_reason": "stop", "usage": {"prompt_tokens": 3, "completion_tokens": 2, "cached_tokens": 0},
         "timings": {"queued_ms": 1.0, "adapter_ready_ms": 0.5, "first_token_ms": 2.0, "total_ms": 3.0},
         "gpu_ms": 20.0, "error": None}


@pytest.fixture
def base(db):
    return BaseModel.objects.create(name=BASE, context_length=2048)


def make_node(name, *, age_s=0):
    return Node.objects.create(name=name, base_model=BASE, last_heartbeat_at=timezone.now() - timedelta(seconds=age_s),
                               state={"adapters": {"slots": 4, "device": 0}, "resident": {"device": [], "host": []}})


@pytest.fixture
def node(base):
    return make_node("n1")


@pytest.fixture
def sent(monkeypatch):
    from vajra.celery import app

    calls = []
    monkeypatch.setattr(app, "send_task", lambda name, args=None, **options: calls.append((name, args, options)))
    return calls


@pytest.fixture(autouse=True)
def clean_streams():
    yield
    redis = get_redis()
    for key in redis.scan_iter("vajra:stream:req_*"):
        redis.delete(key)


def running(tenant, node, *, age_s=0, request_id=None):
    request_id = request_id or f"req_intake{InferenceRequest.objects.count()}"
    payload = {"request_id": request_id, "prompt": "Hello", "messages": [], "sampling": {"max_tokens": 8},
               "adapter": None, "tenant": f"t{tenant.pk}", "base_model": BASE}
    row = InferenceRequest.objects.create(id=request_id, tenant=tenant, base_model=BaseModel.objects.get(name=BASE),
                                          tier="cold", max_tokens=8, node=node, status=InferenceRequest.RUNNING,
                                          payload=payload)
    InferenceRequest.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(seconds=age_s))
    return row


def on_stream(request_id, final=FINAL):
    StreamWriter(get_redis(), ttl_seconds=60).final(request_id, final)


def last_entry(request_id):
    _, fields = get_redis().xrevrange(stream_key(request_id), count=1)[0]
    return fields[b"type"].decode(), json.loads(fields[b"data"])


def ended(row):
    row.refresh_from_db()
    return row.status, row.final_source, UsageEvent.objects.filter(request_id=row.pk, kind="inference").count()


def test_the_control_task_records_the_nodes_final(acme, node):
    row = running(acme, node)
    tasks.inference_finished(row.id, FINAL)
    assert ended(row) == (InferenceRequest.SUCCEEDED, "control_task", 1)
    assert (row.completion_tokens, row.gpu_ms, row.total_ms, row.payload) == (2, 20.0, 3.0, None)


def test_the_stream_sweep_records_a_final_whose_task_was_lost(acme, node, settings):
    settings.VAJRA_FINAL_RECONCILE_SECONDS = 30
    row = running(acme, node, age_s=60)
    on_stream(row.id)
    assert finals.finals_from_streams() == 1
    assert ended(row) == (InferenceRequest.SUCCEEDED, "stream_sweep", 1)


def test_a_throttled_submit_records_the_finals_already_on_its_tenants_streams(acme, alice, node, sent):
    put_on_plan(acme, max_concurrent_requests=1)
    answered = running(acme, node)
    on_stream(answered.id)
    principal = principal_from_key(create_key(alice, acme)[1])
    row = inference_submit(principal=principal, base_model=BaseModel.objects.get(name=BASE), prompt="Hi",
                           sampling={"max_tokens": 4}, api="infer")
    assert ended(answered) == (InferenceRequest.SUCCEEDED, "throttle_retry", 1)
    assert row.status == InferenceRequest.QUEUED and len(sent) == 1


def test_failover_records_a_lost_nodes_final_from_its_stream_or_ends_it_with_node_lost(acme, base, sent, settings):
    settings.VAJRA_HEARTBEAT_SECONDS, settings.VAJRA_NODE_DOWN_AFTER_MISSED = 1, 3
    lost = make_node("node-a", age_s=10)
    finished, unfinished = running(acme, lost), running(acme, lost)
    on_stream(finished.id)
    assert nodes_mark_down() == 1
    assert ended(finished) == (InferenceRequest.SUCCEEDED, "failover", 1)
    # no other node: the control plane ends it itself, with a contract Final on the stream, and bills nothing
    assert ended(unfinished) == (InferenceRequest.FAILED, "failover", 0)
    kind, data = last_entry(unfinished.id)
    assert kind == "final" and Final.from_json(data).error.code == "node_lost" and unfinished.error_code == "node_lost"
    assert not sent


def test_the_expiry_ends_what_no_node_finished_with_a_contract_final_on_the_stream(acme, node, settings):
    settings.VAJRA_REQUEST_TIMEOUT_SECONDS = 60
    row = running(acme, node, age_s=120)
    assert finals.inference_expire_stale() == 1
    assert ended(row) == (InferenceRequest.FAILED, "expiry", 0)
    kind, data = last_entry(row.id)
    final = Final.from_json(data)
    assert kind == "final" and final.finish_reason == "error" and final.error.code == "node_timeout"
    assert row.error_code == "node_timeout" and "within 60 s" in row.error_message


def test_a_second_bringer_changes_nothing(acme, node, settings):
    settings.VAJRA_FINAL_RECONCILE_SECONDS = 30
    settings.VAJRA_REQUEST_TIMEOUT_SECONDS = 60
    row = running(acme, node, age_s=120)
    tasks.inference_finished(row.id, FINAL)
    on_stream(row.id, {**FINAL, "gpu_ms": 999.0, "usage": {"prompt_tokens": 3, "completion_tokens": 50}})
    tasks.inference_finished(row.id, {**FINAL, "gpu_ms": 999.0})  # a redelivery with other figures
    assert finals.finals_from_streams() == 0 and finals.inference_expire_stale() == 0
    assert finals.record_final(row.id, Final.from_json(FINAL), source="failover") is None
    assert ended(row) == (InferenceRequest.SUCCEEDED, "control_task", 1)
    assert (row.gpu_ms, row.completion_tokens) == (20.0, 2)
    assert UsageEvent.objects.get(request_id=row.pk).gpu_ms == 20.0


def test_a_superseded_attempts_final_is_not_recorded_by_any_bringer(acme, node, settings):
    settings.VAJRA_FINAL_RECONCILE_SECONDS = 30
    row = running(acme, node, age_s=60)
    InferenceRequest.objects.filter(pk=row.pk).update(attempt=2)
    on_stream(row.id, {**FINAL, "attempt": 1})  # the lost node's attempt ended after the reroute
    tasks.inference_finished(row.id, FINAL)
    assert finals.finals_from_streams() == 0
    assert ended(row) == (InferenceRequest.RUNNING, "", 0)
    tasks.inference_finished(row.id, {**FINAL, "attempt": 2})
    assert ended(row) == (InferenceRequest.SUCCEEDED, "control_task", 1)


@pytest.mark.parametrize("bad", [{"finish_reason": "stop", "gpu_ms": 1.0, "price": 0}, {"usage": {}}, "stop", None,
                                 {"finish_reason": "stop", "usage": {"completion_tokens": 1, "free": True}}])
def test_a_final_that_breaks_the_contract_is_dropped_not_recorded(acme, node, bad, caplog):
    row = running(acme, node)
    tasks.inference_finished(row.id, bad)
    assert ended(row) == (InferenceRequest.RUNNING, "", 0)
    assert "breaks the contract" in caplog.text


def test_an_unknown_source_is_refused(acme, node):
    row = running(acme, node)
    with pytest.raises(ValueError):
        finals.record_final(row.id, Final.from_json(FINAL), source="someone")
    assert ended(row) == (InferenceRequest.RUNNING, "", 0)


def _race(*bringers):
    """Runs the bringers at once, each on its own thread and database connection; their results."""
    barrier, results = threading.Barrier(len(bringers)), [None] * len(bringers)

    def run(i, bring):
        try:
            barrier.wait()
            results[i] = bring()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, bring)) for i, bring in enumerate(bringers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_the_control_task_and_the_stream_sweep_racing_bill_once(acme, node, settings):
    settings.VAJRA_FINAL_RECONCILE_SECONDS = 30
    rows = [running(acme, node, age_s=60) for _ in range(6)]
    for row in rows:
        on_stream(row.id)

    def control_tasks():
        for row in rows:
            tasks.inference_finished(row.id, FINAL)

    _, swept = _race(control_tasks, finals.finals_from_streams)
    outcomes = [ended(row) for row in rows]
    assert all(status == InferenceRequest.SUCCEEDED and billed == 1 for status, _, billed in outcomes), outcomes
    assert sum(source == "stream_sweep" for _, source, _ in outcomes) == swept, (outcomes, swept)
    assert UsageEvent.objects.filter(kind="inference").count() == len(rows)


def test_the_expiry_racing_the_nodes_final_ends_the_request_once(acme, node, settings):
    settings.VAJRA_REQUEST_TIMEOUT_SECONDS = 60
    row = running(acme, node, age_s=120)
    _, expired = _race(lambda: tasks.inference_finished(row.id, FINAL), finals.inference_expire_stale)
    status, source, billed = ended(row)
    if expired:  # the expiry came first: failed, nothing billed, and the node's final changed nothing
        assert (status, source, billed) == (InferenceRequest.FAILED, "expiry", 0)
    else:
        assert (status, source, billed) == (InferenceRequest.SUCCEEDED, "control_task", 1)


@pytest.mark.parametrize("wire", [
    FINAL,
    {**FINAL, "attempt": 2},
    {"finish_reason": "cancelled", "usage": {"prompt_tokens": 0, "completion_tokens": 0},  # ended before it ran
     "timings": {"queued_ms": 1.5, "adapter_ready_ms": 0.0, "first_token_ms": None, "total_ms": 1.5}, "gpu_ms": 0.0,
     "error": None},
    {"finish_reason": "error", "error": {"code": "adapter_load_failed", "message": "no such file"}},
])
def test_the_finals_nodes_send_read_as_the_contracts_final_and_back_unchanged(wire):
    assert Final.from_json(wire).to_json() == wire
