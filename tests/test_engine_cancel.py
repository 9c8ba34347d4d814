"""Cancellation and GPU-ms in the engine (the tiny Llama, real Redis Streams): a request cancelled while it waits for
a row is never prefilled, streams nothing and ends ``cancelled`` with 0 GPU-ms; a row cancelled mid-way keeps the
GPU-ms it used; each step's GPU-ms is read from the step clock (CUDA events on a GPU, driven here by a recording
stand-in for ``torch.cuda``)."""

import contextvars
import itertools
import time
import uuid

import pytest
import torch

from gpu_runtime.contract import attempt_key, cancel_key, stream_key
from gpu_runtime.engine import Engine
from gpu_runtime.generation import GenerationRequest, SamplingParams
from gpu_runtime.step_clock import StepClock
from gpu_runtime.streams import StreamWriter
from tests.runtime_fixtures import tiny_base, tiny_base_model, words

STEP_S = 0.01  # each forward pass is slowed down by this much, so a long row keeps the only row for seconds


@pytest.fixture(scope="module")
def base():
    return tiny_base()


@pytest.fixture
def engine(base, redis_client):
    """One row only: what is submitted behind a running row waits in the admission queue. Every prefill is
    recorded by request id."""
    engine = Engine(tiny_base_model(base), None, StreamWriter(redis_client, ttl_seconds=60), max_batch=1)
    engine.prefilled = []
    prefill_group = engine._prefill_group

    def recorded(rows, cache, offset=0):
        engine.prefilled.extend(row.handle.request.request_id for row in rows)
        return prefill_group(rows, cache, offset)

    engine._prefill_group = recorded
    forward = engine.model.forward

    def slowed(*args, **kwargs):
        time.sleep(STEP_S)
        return forward(*args, **kwargs)

    engine.model.forward = slowed
    engine.start()
    yield engine
    engine.stop()


def request(prompt_ids, **sampling):
    return GenerationRequest(request_id=f"req_{uuid.uuid4().hex}", prompt=words(prompt_ids), tenant="acme",
                            sampling=SamplingParams(**{"max_tokens": 8, **sampling}))


def running(engine, handle, timeout=30):
    deadline = time.monotonic() + timeout
    while handle.request.request_id not in [row.handle.request.request_id for row in engine.rows]:
        assert time.monotonic() < deadline and not handle.done.is_set(), handle.result
        time.sleep(0.001)


def waiting(engine, handle, timeout=30):
    deadline = time.monotonic() + timeout
    while handle not in engine._pending.in_turn():
        assert time.monotonic() < deadline and not handle.done.is_set(), handle.result
        time.sleep(0.001)


def long_row(engine):
    """A row that holds the engine's only row for ~200 steps (sampled, so no early end-of-sequence)."""
    handle = engine.submit(request([1, 2, 3], max_tokens=200, temperature=1.0, seed=3))
    running(engine, handle)
    return handle


def test_a_request_cancelled_while_queued_is_never_prefilled_and_owes_nothing(engine, redis_client):
    long = long_row(engine)
    queued = engine.submit(request([4, 5, 6]))
    waiting(engine, queued)
    rid = queued.request.request_id
    redis_client.set(cancel_key(rid), 1, ex=60)
    final = queued.wait(30)
    assert not long.done.is_set()  # it left the queue while the only row was still taken
    assert final["finish_reason"] == "cancelled" and final["error"] is None
    assert final["gpu_ms"] == 0.0
    assert final["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    assert final["timings"]["first_token_ms"] is None
    assert rid not in engine.prefilled
    entries = redis_client.xrange(stream_key(rid))
    assert [f[b"type"] for _, f in entries] == [b"final"]  # no delta: not a token was made for it
    assert len(engine._pending) == 0
    redis_client.set(cancel_key(long.request.request_id), 1, ex=60)
    assert long.wait(30)["finish_reason"] == "cancelled"
    after = engine.submit(request([7, 8, 9], max_tokens=3))  # the engine goes on serving
    assert after.wait(30)["finish_reason"] in ("stop", "length")


def test_a_row_cancelled_mid_way_keeps_the_gpu_ms_and_tokens_it_used(engine, redis_client):
    long = long_row(engine)
    while engine.tokens_out < 3:
        time.sleep(0.001)
    redis_client.set(cancel_key(long.request.request_id), 1, ex=60)
    final = long.wait(30)
    assert final["finish_reason"] == "cancelled"
    assert 0 < final["usage"]["completion_tokens"] < 200 and final["usage"]["prompt_tokens"] == 3
    assert final["gpu_ms"] > 0
    assert long.request.request_id in engine.prefilled


def test_a_queued_request_whose_attempt_was_superseded_leaves_unsaid(engine, redis_client):
    """Failover sent the request to another node while it waited here: it leaves the queue without a prefill and
    without a final event (the current attempt ends it)."""
    long = long_row(engine)
    queued = engine.submit(request([4, 5, 6]))
    waiting(engine, queued)
    rid = queued.request.request_id
    redis_client.set(attempt_key(rid), 2, ex=60)
    assert queued.wait(30) == {"finish_reason": "superseded", "attempt": 1}
    assert not long.done.is_set() and rid not in engine.prefilled
    assert redis_client.xrange(stream_key(rid)) == []
    redis_client.set(cancel_key(long.request.request_id), 1, ex=60)
    long.wait(30)


def test_a_task_cancelled_while_it_waited_in_the_nodes_queue_ends_without_the_engine(redis_client, monkeypatch):
    """The node's infer task reads the request's run state and cancel flag in one round trip: a request cancelled
    while its task was queued ends ``cancelled`` (its attempt, no token, nothing billed) and never reaches an
    engine."""
    from gpu_runtime import tasks

    class NoEngine:
        streams = StreamWriter(redis_client, ttl_seconds=60)

        def require_engine(self):
            raise AssertionError("a cancelled request's task must not reach the engine")

    reported = []
    monkeypatch.setattr(tasks, "node", NoEngine())
    monkeypatch.setattr(tasks, "report_finished", lambda request_id, final: reported.append((request_id, final)))
    rid = f"req_{uuid.uuid4().hex}"
    redis_client.set(cancel_key(rid), 1, ex=60)
    redis_client.set(attempt_key(rid), 2, ex=60)
    # in a context of its own, as a worker runs each task: the task logs under the request's id
    final = contextvars.copy_context().run(tasks.infer.run, {"request_id": rid, "prompt": "x", "attempt": 2})
    assert final["finish_reason"] == "cancelled" and final["attempt"] == 2 and final["gpu_ms"] == 0.0
    assert final["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    assert reported == [(rid, final)]
    assert [f[b"type"] for _, f in redis_client.xrange(stream_key(rid))] == [b"final"]


def test_a_request_cancelled_before_it_reached_the_engine_loop_is_never_prefilled(engine, redis_client):
    """The flag is set before the engine thread takes the request in: the first read of the flags comes before
    its admission round."""
    hold = engine.call(lambda: time.sleep(0.3))
    handle = engine.submit(request([4, 5, 6]))
    redis_client.set(cancel_key(handle.request.request_id), 1, ex=60)
    hold.result(10)
    final = handle.wait(30)
    assert final["finish_reason"] == "cancelled" and final["gpu_ms"] == 0.0
    assert handle.request.request_id not in engine.prefilled


class FakeEvent:
    def __init__(self, cuda, name):
        self.cuda, self.name, self.synchronized = cuda, name, False

    def record(self, stream):
        self.cuda.log.append(("record", self.name, stream))

    def synchronize(self):
        self.synchronized = True
        self.cuda.log.append(("synchronize", self.name))

    def elapsed_time(self, end):
        assert end.synchronized, "the end event's time was read before the device reached it"
        self.cuda.log.append(("elapsed", self.name, end.name))
        return self.cuda.step_ms


class FakeCuda:
    """Records what the step clock asks of torch.cuda; every step takes ``step_ms`` of device time."""

    def __init__(self, step_ms):
        self.log, self.step_ms = [], step_ms
        self._ids = itertools.count(1)

    def Event(self, enable_timing=False):  # noqa: N802  (torch.cuda's names)
        assert enable_timing
        return FakeEvent(self, f"event{next(self._ids)}")

    def current_stream(self, device=None):
        return "compute"


def test_on_cuda_each_step_is_timed_between_events_around_its_forward_pass(base, redis_client):
    """GPU-ms is device time: a start event before the forward pass, an end event after its logits, the end
    waited for before its time is read; a request's gpu_ms is the events' time (one prefill + decode steps)."""
    cuda = FakeCuda(step_ms=7.0)
    engine = Engine(tiny_base_model(base), None, StreamWriter(redis_client, ttl_seconds=60), max_batch=1)
    engine.forward.clock = StepClock(torch.device("cpu"), cuda=cuda)
    engine.model.register_forward_pre_hook(lambda *_: cuda.log.append(("forward",)))
    engine.model.register_forward_hook(lambda *_: cuda.log.append(("forward done",)))
    engine.start()
    try:
        final = engine.submit(request([1, 2, 3], max_tokens=4, temperature=1.0, seed=3)).wait(30)
    finally:
        engine.stop()
    forwards = cuda.log.count(("forward",))
    assert final["finish_reason"] in ("stop", "length") and forwards >= 2
    assert final["gpu_ms"] == pytest.approx(7.0 * forwards)
    assert engine.busy_ms == pytest.approx(7.0 * forwards)
    steps = [cuda.log[i:i + 6] for i, entry in enumerate(cuda.log) if entry[0] == "record" and
             cuda.log[i + 1] == ("forward",)]
    assert len(steps) == forwards
    for start, forward, done, end, synchronize, elapsed in steps:
        assert start[2] == end[2] == "compute" and (forward, done) == (("forward",), ("forward done",))
        assert end[0] == "record" and synchronize == ("synchronize", end[1])
        assert elapsed == ("elapsed", start[1], end[1])
