"""The pieces that carry the platform through Redis and PostgreSQL restarts, one at a time:
the runtime's stream writer, the relay's reconnect and gap check, the sweep of requests nobody will finish, the
submit path with the broker down, and the control tasks' retries. tests/integration/test_restarts.py runs them
together under traffic."""

import asyncio
import json
import signal
import time
from datetime import timedelta

import pytest
import redis
from django.db import InterfaceError, OperationalError
from django.test import AsyncClient
from django.utils import timezone

from adapters.models import BaseModel
from billing.models import UsageEvent
from gpu_runtime.contract import stream_key
from gpu_runtime.streams import StreamWriter
from serving import dispatch, finals, relay
from serving.models import InferenceRequest
from tests.factories import create_key, make_node, make_request, record_node_final
from tests.processes import free_port
from vajra.embedded_redis import start_private_redis

BASE = "smollm2-135m-instruct"


def entries(client, request_id):
    return [(f[b"type"].decode(), json.loads(f[b"data"]), int(f[b"seq"]))
            for _, f in client.xrange(stream_key(request_id))]


def test_the_stream_writer_keeps_what_redis_refused_and_writes_it_in_order_once_redis_is_back(tmp_path):
    proc, url = start_private_redis(tmp_path / "r")
    try:
        writer = StreamWriter.from_url(url, ttl_seconds=60)
        writer.retry_s = 0.05
        writer.delta("req_a", "one ")
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        writer.delta("req_a", "two ")  # Redis is gone: kept, no exception for the engine thread
        writer.final("req_a", {"finish_reason": "stop"})
        assert writer.pending == 2
        assert writer.cancelled(["req_a"]) == set()  # unknown while down: the row goes on
        assert writer.run_state("req_a")[0] == {"finish_reason": "stop"}  # a redelivery would see it finished
        (tmp_path / "r" / "redis.sock").unlink()
        proc, url = start_private_redis(tmp_path / "r")  # same socket, empty
        time.sleep(0.06)
        assert writer.flush() and writer.pending == 0
        client = redis.Redis.from_url(url)
        # the entry Redis lost with its restart shows as the gap before seq 1
        assert entries(client, "req_a") == [("delta", {"text": "two "}, 1), ("final", {"finish_reason": "stop"}, 2)]
        writer.delta("req_b", "next")
        assert entries(client, "req_b") == [("delta", {"text": "next"}, 0)]
    finally:
        proc.kill()
        proc.wait(5)


def collect(request_id, **kwargs):
    async def go():
        return [(kind, data) async for _, kind, data in relay.events(request_id, **kwargs)]

    return asyncio.run(go())


def test_a_gap_in_a_stream_ends_it_with_a_typed_error_not_a_shortened_answer(settings):
    client = redis.Redis.from_url(settings.REDIS_URL)
    key = stream_key("req_gap")
    client.delete(key)
    client.xadd(key, {"type": "delta", "data": json.dumps({"text": "a"}), "seq": 0})
    client.xadd(key, {"type": "delta", "data": json.dumps({"text": "c"}), "seq": 2})  # seq 1 was lost
    client.xadd(key, {"type": "final", "data": json.dumps({"finish_reason": "stop"}), "seq": 3})
    got = collect("req_gap")
    assert got[0] == ("delta", {"text": "a"})
    assert got[1][0] == "final" and got[1][1]["error"]["code"] == "stream_interrupted" and len(got) == 2
    assert "/v1/requests/req_gap" in got[1][1]["error"]["message"]
    # a complete stream goes through whole; a final without seq (the sweep's) ends it too
    client.delete(key)
    client.xadd(key, {"type": "delta", "data": json.dumps({"text": "a"}), "seq": 0})
    client.xadd(key, {"type": "final", "data": json.dumps({"finish_reason": "error", "error": {"code": "x"}})})
    assert [kind for kind, _ in collect("req_gap")] == ["delta", "final"]
    client.delete(key)


def test_a_relay_waits_for_redis_a_bounded_time_then_says_so(settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    started = time.monotonic()
    got = collect("req_down", reconnect_s=1)
    assert time.monotonic() - started < 30
    assert got == [("final", got[0][1])] and got[0][1]["error"]["code"] == "redis_unavailable"
    assert got[0][1]["finish_reason"] == "error"


def test_a_silent_stream_whose_request_ended_says_its_final_was_lost_not_keepalives_until_the_wait_ends(
        transactional_db, acme, settings, monkeypatch):
    # Redis restarted after the node wrote its final and the control plane recorded it: the stream the relay
    # reconnects to holds nothing more, and nothing will ever come
    BaseModel.objects.create(name=BASE, context_length=2048)
    monkeypatch.setattr(relay, "BLOCK_MS", 100)
    monkeypatch.setattr(relay, "ENDED_BLOCK_MS", 100)
    client = redis.Redis.from_url(settings.REDIS_URL)
    ended = make_row(acme, InferenceRequest.SUCCEEDED, 5)
    active = make_row(acme, InferenceRequest.RUNNING, 5)
    for row in (ended, active):
        client.delete(stream_key(row.pk))
        client.xadd(stream_key(row.pk), {"type": "delta", "data": json.dumps({"text": "a"}), "seq": 0})
    got = collect(ended.pk)
    assert got[0] == ("delta", {"text": "a"}) and len(got) == 2
    assert got[1][0] == "final" and got[1][1]["error"]["code"] == "stream_interrupted"
    assert f"/v1/requests/{ended.pk}" in got[1][1]["error"]["message"]
    # a request still going: keep-alives until the wait ends (its node, or the expiry, writes the final)
    got = collect(active.pk, max_wait_s=0.3)
    assert [kind for kind, _ in got] == ["delta", "keepalive", "keepalive", "final"]
    assert got[-1][1]["error"]["code"] == "timeout"
    # an ended request whose final the control plane announces right after its commit: the final, not the error
    client.xadd(stream_key(ended.pk), {"type": "final", "data": json.dumps({"finish_reason": "stop"})})
    assert collect(ended.pk)[-1] == ("final", {"finish_reason": "stop"})
    for row in (ended, active):
        client.delete(stream_key(row.pk))


@pytest.fixture
def node(db):
    BaseModel.objects.create(name=BASE, context_length=2048)
    return make_node("n1", base=BASE, slots=4)


def make_row(acme, status, age_s, **fields):
    row = make_request(acme, BaseModel.objects.get(name=BASE), request_id=dispatch.new_request_id(), api="infer",
                       status=status, **fields)
    InferenceRequest.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(seconds=age_s))
    return row


def test_the_sweep_fails_requests_no_node_finished_in_time_bills_nothing_and_tells_the_client(
        node, acme, settings, django_capture_on_commit_callbacks):
    settings.VAJRA_REQUEST_TIMEOUT_SECONDS = 60
    lost_queued = make_row(acme, InferenceRequest.QUEUED, 120)
    lost_running = make_row(acme, InferenceRequest.RUNNING, 90, node=node)
    young = make_row(acme, InferenceRequest.RUNNING, 10, node=node)
    done = make_row(acme, InferenceRequest.SUCCEEDED, 500)
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(stream_key(lost_queued.pk))

    with django_capture_on_commit_callbacks(execute=True):  # the final goes to the stream once its row committed
        assert finals.inference_expire_stale(limit=1) == 1  # bounded: the oldest first
        assert finals.inference_expire_stale(limit=10) == 1
        assert finals.inference_expire_stale(limit=10) == 0
    for row in (lost_queued, lost_running):
        row.refresh_from_db()
        assert row.status == InferenceRequest.FAILED and row.error_code == "node_timeout" and row.finished_at
    young.refresh_from_db()
    done.refresh_from_db()
    assert young.status == InferenceRequest.RUNNING and done.status == InferenceRequest.SUCCEEDED
    assert not UsageEvent.objects.exists()  # no work is known: nothing billed
    final = collect(lost_queued.pk)[-1]  # a client still waiting gets the end
    assert final[0] == "final" and final[1]["error"]["code"] == "node_timeout"
    # the node's answer arriving after all changes nothing: the row stays failed, nothing billed
    record_node_final(lost_running.pk, {"finish_reason": "stop", "gpu_ms": 5.0})
    lost_running.refresh_from_db()
    assert lost_running.status == InferenceRequest.FAILED and not UsageEvent.objects.exists()


def test_a_submit_the_broker_does_not_take_is_a_503_and_its_row_is_failed_not_left_queued(
        transactional_db, node, alice, acme):
    from vajra.celery import app

    _, secret = create_key(alice, acme)
    # a broker that is not there: the app's connection pool and the producer pool built on it are set aside
    url, pool, producers = app.conf.broker_url, app._pool, app.amqp._producer_pool
    app.conf.broker_url, app._pool, app.amqp._producer_pool = f"redis://127.0.0.1:{free_port()}/0", None, None
    try:
        async def post():
            return await AsyncClient().post(f"/v1/models/{BASE}/infer", json.dumps({"prompt": "Hi"}),
                                            content_type="application/json",
                                            headers={"Authorization": f"Bearer {secret}"})

        response = asyncio.run(post())
    finally:
        app.conf.broker_url, app._pool, app.amqp._producer_pool = url, pool, producers
    assert response.status_code == 503, response.content
    assert response.json()["error"]["code"] == "redis_unavailable" and response.headers["Retry-After"]
    row = InferenceRequest.objects.get()
    assert row.status == InferenceRequest.FAILED and row.error_code == "broker_unavailable"
    assert row.final_source == "dispatch"  # ended through the one intake for finals


def test_a_send_that_fails_otherwise_leaves_no_row_queued(transactional_db, node, alice, acme, monkeypatch):
    """Whatever stops the task on its way to the node (here a fault in sending it), the committed row ends failed
    at once: never a queued row no node will ever run, and nothing billed."""
    from fleet import runtime_client

    _, secret = create_key(alice, acme)

    def broken(payload, *, node_name, task_id):
        raise RuntimeError("serializer fault")

    monkeypatch.setattr(runtime_client, "send_infer", broken)

    async def post():
        return await AsyncClient(raise_request_exception=False).post(
            f"/v1/models/{BASE}/infer", json.dumps({"prompt": "Hi"}), content_type="application/json",
            headers={"Authorization": f"Bearer {secret}"})

    response = asyncio.run(post())
    assert response.status_code == 500
    row = InferenceRequest.objects.get()
    assert row.status == InferenceRequest.FAILED and row.error_code == "dispatch_failed" and row.finished_at
    assert row.final_source == "dispatch"
    assert not UsageEvent.objects.exists()


def test_a_database_that_does_not_answer_is_a_503_saying_so(alice, acme, settings, monkeypatch):
    from serving import v1

    _, secret = create_key(alice, acme)

    def down(raw_key):
        raise OperationalError("connection refused")

    monkeypatch.setattr(v1, "authorize", down)  # what principal_from_key raises while PostgreSQL restarts

    async def post():
        return await AsyncClient().post(f"/v1/models/{BASE}/infer", json.dumps({"prompt": "Hi"}),
                                        content_type="application/json", headers={"Authorization": f"Bearer {secret}"})

    response = asyncio.run(post())
    assert response.status_code == 503 and response.json()["error"]["code"] == "database_unavailable"


def test_the_tasks_that_carry_usage_retry_database_errors_with_bounded_backoff():
    from serving import tasks as serving_tasks
    from training import tasks as training_tasks

    for task in (serving_tasks.inference_finished, serving_tasks.inference_started, training_tasks.training_step,
                 training_tasks.training_finished, training_tasks.training_started, training_tasks.training_checkpoint):
        assert set(task.autoretry_for) == {OperationalError, InterfaceError}, task.name
        assert task.retry_backoff and task.retry_backoff_max <= 60 and 0 < task.max_retries <= 50, task.name



def test_the_sweep_records_a_final_whose_control_task_was_lost_from_the_stream_once(node, acme, settings):
    """The node wrote the final event; the control task carrying it was lost (a worker killed after taking it off
    its queue). The sweep finds it on the request's stream and bills it once; streams that do not end with the
    row's own final are left alone."""
    settings.VAJRA_FINAL_RECONCILE_SECONDS = 30
    writer = StreamWriter(redis.Redis.from_url(settings.REDIS_URL), ttl_seconds=60)
    final = {"finish_reason": "stop", "attempt": 1, "usage": {"prompt_tokens": 5, "completion_tokens": 7,
             "cached_tokens": 0}, "timings": {"first_token_ms": 40.0, "total_ms": 90.0}, "gpu_ms": 55.5, "error": None}
    lost = make_row(acme, InferenceRequest.RUNNING, 60, node=node)
    writer.delta(lost.pk, "Hello")
    writer.final(lost.pk, final)
    answering = make_row(acme, InferenceRequest.RUNNING, 60, node=node)  # still decoding: its stream has deltas
    writer.delta(answering.pk, "Hel")
    superseded = make_row(acme, InferenceRequest.RUNNING, 60, node=node, attempt=2)  # failover's new attempt runs
    writer.final(superseded.pk, final)  # the lost node's attempt 1 ended after the reroute
    young = make_row(acme, InferenceRequest.RUNNING, 5, node=node)  # its task may still be on its way
    writer.final(young.pk, final)

    assert finals.finals_from_streams() == 1
    assert finals.finals_from_streams() == 0
    lost.refresh_from_db()
    assert lost.status == InferenceRequest.SUCCEEDED and lost.completion_tokens == 7 and lost.gpu_ms == 55.5
    assert list(UsageEvent.objects.values_list("request_id", flat=True)) == [lost.pk]  # billed once
    for row in (answering, superseded, young):
        row.refresh_from_db()
        assert row.status == InferenceRequest.RUNNING
    # the task arriving after all changes nothing: billed once still
    record_node_final(lost.pk, final)
    assert UsageEvent.objects.filter(request_id=lost.pk).count() == 1

    from serving.tasks import inference_expire_stale

    assert inference_expire_stale() == {"recorded_from_streams": 0, "expired": 0}
