"""What a cancelled request is billed, end to end (daphne, a real runtime node on tiny-llama, the control worker, the
ledger): the node has one row (VAJRA_MAX_BATCH=1) and two task threads, so behind a long answer (each forward pass
slowed down by 20 ms, tests/integration/forward_clock_node.py) one request waits in the engine's admission queue
and another in the node's Celery queue. Both are cancelled through
POST /v1/requests/{id}/cancel: each ends ``cancelled`` with no token and 0 GPU-ms, and the ledger bills neither.
The long answer, cancelled mid-way, is billed its tier's units and the GPU-ms it used."""

import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from billing.models import UsageEvent
from gpu_runtime.contract import stream_key
from gpu_runtime.model_store import TINY_MODEL
from serving.models import InferenceRequest
from tests.factories import create_key
from tests.processes import start_runtime_node, wait_for, wait_until_serving

pytestmark = pytest.mark.slow
MODEL = TINY_MODEL
LONG = 1000  # tokens of the long answer: 20 s at least, cancelled after a few


@pytest.fixture
def one_row_node(tiny_model_store, tmp_path):
    proc = start_runtime_node(tiny_model_store, tmp_path / "runtime.log", name=f"one-row-{os.getpid()}",
                              base_model=TINY_MODEL, app="tests.integration.forward_clock_node",
                              VAJRA_MAX_BATCH="1", VAJRA_TEST_FORWARD_SLEEP_MS="20")
    yield proc
    proc.stop()


def test_cancelled_while_queued_bills_nothing_and_cancelled_mid_way_bills_what_it_used(
        daphne, one_row_node, control_worker, alice, acme):
    from vajra.redis import get_redis

    wait_until_serving(MODEL, one_row_node, 180)
    _, secret = create_key(alice, acme)
    client = httpx.Client(base_url=daphne, headers={"Authorization": f"Bearer {secret}"}, timeout=300)

    def infer(prompt, max_tokens):
        response = client.post(f"/v1/models/{MODEL}/infer",
                               json={"prompt": prompt, "parameters": {"temperature": 0, "max_tokens": max_tokens}})
        assert response.status_code == 200, response.text
        return response.json()

    def newest_other_than(*ids):
        return InferenceRequest.objects.exclude(pk__in=ids).order_by("-created_at").first()

    with ThreadPoolExecutor(3) as pool:
        long = pool.submit(infer, "Count from 1 to 500, separated by commas:", LONG)
        a = wait_for(lambda: InferenceRequest.objects.filter(status=InferenceRequest.RUNNING).first(), 120,
                     "the long request to start", one_row_node)
        wait_for(lambda: get_redis().xlen(stream_key(a.pk)) >= 3, 60, "its first tokens", one_row_node)
        in_engine = pool.submit(infer, "Say hello.", 8)
        b = wait_for(lambda: newest_other_than(a.pk), 30, "the second request's row")
        # running: its task handed it to the engine, where it waits for the only row
        wait_for(lambda: InferenceRequest.objects.get(pk=b.pk).status == InferenceRequest.RUNNING, 60,
                 "the second request to reach the engine", one_row_node)
        in_celery = pool.submit(infer, "Say goodbye.", 8)
        c = wait_for(lambda: newest_other_than(a.pk, b.pk), 30, "the third request's row")
        for queued in (c, b):  # c first: its flag is set before b's thread frees up to take c's task
            assert client.post(f"/v1/requests/{queued.pk}/cancel").status_code == 202
        answers = [in_engine.result(120), in_celery.result(120)]
        assert InferenceRequest.objects.get(pk=a.pk).status == InferenceRequest.RUNNING  # still answering
        wait_for(lambda: get_redis().xlen(stream_key(a.pk)) >= 6, 60, "more of the long answer", one_row_node)
        assert client.post(f"/v1/requests/{a.pk}/cancel").status_code == 202
        answers.append(long.result(120))

    for answer in answers:
        assert answer["finish_reason"] == "cancelled", answer
    for queued in (b, c):
        row = wait_for(lambda pk=queued.pk: InferenceRequest.objects.filter(
            pk=pk, status=InferenceRequest.CANCELLED).first(), 60, "the control worker to record its final")
        assert row.gpu_ms == 0 and row.completion_tokens == 0 and row.prompt_tokens == 0
        kinds = [fields[b"type"] for _, fields in get_redis().xrange(stream_key(row.pk))]
        assert kinds == [b"final"]  # not a token streamed
    row = wait_for(lambda: InferenceRequest.objects.filter(pk=a.pk, status=InferenceRequest.CANCELLED).first(), 60,
                   "the long request's final")
    assert row.gpu_ms > 0 and 0 < row.completion_tokens < LONG
    event = wait_for(lambda: UsageEvent.objects.filter(key=f"inference:{a.pk}").first(), 60, "its ledger row")
    assert event.units == 1 and event.gpu_ms == pytest.approx(row.gpu_ms, abs=0.001) and event.billed_gpu_ms > 0
    assert event.cost == event.cost_units + event.cost_compute and event.cost_units > 0
    # the ledger bills nothing for the two that never ran, and nothing else
    assert list(UsageEvent.objects.values_list("key", flat=True)) == [f"inference:{a.pk}"]
