"""Metering truth with real processes: daphne, a runtime node with SmolLM2, the control worker.

N requests run through the real runtime. The control worker is SIGKILLed while their final events flow to it and
a new one is started. Then: one ledger row per request (no duplicate, none missing), and the GPU-ms billed before
rounding add up to the final events' gpu_ms and to the runtime's own account of its inference time (the engine's
busy_ms, from runtime.ping), and, within 1 %, to a clock the engine does not keep: the wall time of every forward
pass of the node's model, summed by a wrapper the test installs around it (tests/integration/forward_clock_node.py).
That clock's intervals lie inside the engine's step timing, which adds only the call into the module and the slice
of the last logits, so the 1 % holds however loaded the machine is: time lost to other processes falls inside both.

Redis hands a dead worker's unacknowledged messages out again only after the broker's visibility timeout (an
hour by default). The test fast-forwards that hour once the runtime has acknowledged all its own messages: it
restores what the killed worker held, as Redis would, and the new worker meters them. A message the killed worker
had taken off the queue but not yet recorded as unacked is nowhere in Redis (CI lost one that way): the new
worker's sweep records that request's final from its stream.
"""

import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest
from django.db.models import Sum

from billing.metering_lag import metering_lag
from billing.models import UsageEvent
from serving.models import InferenceRequest
from tests.factories import create_key
from tests.processes import Proc, process_env, start_runtime_node, wait_for, wait_until_serving

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
N = 12


@pytest.fixture
def runtime_node(base_model_store, tmp_path):
    """The real runtime node, its model's forward passes timed by the test's own clock."""
    proc = start_runtime_node(base_model_store, tmp_path / "runtime.log", name=f"test-{os.getpid()}",
                              app="tests.integration.forward_clock_node")
    yield proc
    proc.stop()


def start_control_worker(tmp_path, name):
    """The replacement control worker, with beat: its sweep records from the streams any final whose task the
    killed worker had taken off the queue and lost (serving.finals.finals_from_streams)."""
    return Proc([sys.executable, "-m", "celery", "-A", "vajra", "worker", "--queues", "control", "--pool", "threads",
                 "--concurrency", "2", "--loglevel", "INFO", "--hostname", f"{name}-{os.getpid()}@%h",
                 "--beat", "--schedule", str(tmp_path / f"{name}.beat-schedule")],
                tmp_path / f"{name}.log",
                process_env(VAJRA_REQUEST_SWEEP_SECONDS="2", VAJRA_FINAL_RECONCILE_SECONDS="5"))


def restore_unacked_messages():
    """What Redis does for a dead consumer's messages once the visibility timeout has passed, without the wait.
    Returns how many there were."""
    from kombu import Connection

    from vajra.celery import app

    with Connection(app.conf.broker_url, transport_options={"visibility_timeout": 0}) as connection:
        channel = connection.default_channel
        held = channel.client.hlen(channel.unacked_key)
        channel.qos.restore_visible(num=10_000, interval=1)
    return held


def test_every_request_is_billed_once_and_billed_time_is_the_runtimes_busy_time(
        daphne, runtime_node, control_worker, alice, acme, tmp_path):
    wait_until_serving(MODEL, runtime_node, 180)
    _, secret = create_key(alice, acme)
    client = httpx.Client(base_url=daphne, headers={"Authorization": f"Bearer {secret}"}, timeout=300)

    def infer(i):
        body = {"prompt": f"Count from {i} to {i + 20}:", "parameters": {"temperature": 0, "max_tokens": 12 + 2 * i}}
        response = client.post(f"/v1/models/{MODEL}/infer", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(N) as pool:
        answers = [pool.submit(infer, i) for i in range(N)]
        # kill the control worker while the finals flow to it: some metered, not all
        wait_for(lambda: 2 <= UsageEvent.objects.count() < N or UsageEvent.objects.count() == N, 300,
                 "the first requests to be metered", control_worker)
        metered_before_kill = UsageEvent.objects.count()
        os.killpg(control_worker.popen.pid, signal.SIGKILL)
        control_worker.popen.wait(10)
        replacement = start_control_worker(tmp_path, "control-2")
        answers = [answer.result(timeout=600) for answer in answers]
    try:
        assert metered_before_kill < N, "every request was metered before the kill: nothing was tested"
        held = restore_unacked_messages()
        wait_for(lambda: UsageEvent.objects.count() >= N and not InferenceRequest.objects.exclude(
            status__in=InferenceRequest.TERMINAL).exists(), 180, "every request to be metered", replacement)
        time.sleep(2)  # anything still in flight (a redelivered duplicate) would land now

        ids = {answer["id"] for answer in answers}
        events = list(UsageEvent.objects.filter(kind=UsageEvent.INFERENCE))
        assert len(events) == N == UsageEvent.objects.count()  # no duplicate, none missing, nothing else
        assert {event.request_id for event in events} == ids
        assert {event.key for event in events} == {f"inference:{i}" for i in ids}

        from vajra.celery import app

        pong = app.send_task("runtime.ping", queue=f"node.{runtime_node.name}").get(timeout=60)
        busy_ms = pong["busy_ms"]
        forwards = app.send_task("test.forward_ms", queue=f"node.{runtime_node.name}").get(timeout=60)
        forward_ms = forwards["ms"]
        billed_before_rounding = UsageEvent.objects.aggregate(ms=Sum("gpu_ms"))["ms"]
        finals_ms = sum(answer["gpu_ms"] for answer in answers)
        assert busy_ms > 0 and forwards["calls"] >= N
        assert abs(billed_before_rounding - forward_ms) <= 0.01 * forward_ms, (billed_before_rounding, forward_ms)
        assert forward_ms <= busy_ms  # the forward passes lie inside the engine's steps
        assert abs(billed_before_rounding - busy_ms) <= 0.01 * busy_ms, (billed_before_rounding, busy_ms)
        assert abs(billed_before_rounding - finals_ms) <= 0.01 * finals_ms, (billed_before_rounding, finals_ms)
        for event in events:  # and the bill rounds each up to the plan's 10 ms
            assert event.billed_gpu_ms % 10 == 0 and 0 <= event.billed_gpu_ms - event.gpu_ms < 10
            assert event.cost == Decimal("0.0001") + event.cost_compute  # cold: 1 unit
        lag = metering_lag()
        assert lag["events"] == N and lag["max_seconds"] is not None
        from_streams = replacement.output().count("recorded its final event from its stream")
        print(f"\nmetering: {N} requests, {metered_before_kill} metered before the kill, {held} messages held by the "
              f"killed worker, {from_streams} finals recorded from their streams; GPU-ms billed before "
              f"rounding {billed_before_rounding:.3f}, runtime busy {busy_ms:.3f}, finals {finals_ms:.3f}, "
              f"forward passes {forward_ms:.3f} ({forwards['calls']} calls); "
              f"lag p50 {lag['p50_seconds']} s, p95 {lag['p95_seconds']} s, max {lag['max_seconds']} s")
    finally:
        replacement.stop()
