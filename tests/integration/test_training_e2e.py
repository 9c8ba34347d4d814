"""Fine-tuning end to end with real processes (daphne, a SmolLM2 runtime node, the control worker): a dataset
upload, a training job through the API metered once per step, the trained version current and served, and a
hot swap with concurrent SSE streams running through it: each request finishes on the version it
was admitted on, with that version's exact greedy text, and none fails.

The streams share the engine's batch (three rows at a time), so a row's fp32 logits can differ
from a lone reference row's in the last bits (CPU GEMM blocking depends on the batch); every row after the
first on a version prefills from the same cached prompt prefix and the answers are short, which keeps that
below any near-tie while a wrong adapter version changes the text outright."""

import json
import threading
from decimal import Decimal

import httpx
import pytest
from django.utils import timezone

from adapters.models import Adapter
from billing.models import UsageEvent
from serving.models import InferenceRequest
from tests.factories import create_key
from tests.processes import sse_events, wait_for, wait_until_serving
from training.models import TrainingCheckpoint, TrainingJob, TrainingStep

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"

RECORDS = [{"messages": [{"role": "user", "content": f"What is the code word number {i}?"},
                         {"role": "assistant", "content": f"The code word number {i} is pelican{i}."}]}
           for i in range(8)]


@pytest.fixture
def platform(daphne, runtime_node, control_worker, alice, acme):
    wait_until_serving(MODEL, runtime_node, 180)
    _, secret = create_key(alice, acme)
    return httpx.Client(base_url=daphne, headers={"Authorization": f"Bearer {secret}"}, timeout=120)


def upload_dataset(client):
    body = "\n".join(json.dumps(r) for r in RECORDS).encode()
    response = client.post("/api/v1/datasets", files={"file": ("train.jsonl", body, "application/jsonl")})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def train(client, adapter, dataset, **hp):
    body = {"adapter_id": adapter, "dataset": dataset,
            "hyperparameters": {"learning_rate": 1e-3, "epochs": 1, "batch_size": 2, "max_steps": 3, **hp}}
    response = client.post(f"/v1/models/{MODEL}/train", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def wait_job(job_id, timeout=300):
    return wait_for(lambda: TrainingJob.objects.filter(pk=job_id, status__in=TrainingJob.TERMINAL).first(),
                    timeout, f"training job {job_id} to end")


def greedy(client, model, prompt="The code word number 3 is", max_tokens=12):
    response = client.post(f"/v1/models/{MODEL}/infer", json={
        "prompt": prompt, "adapter_id": model, "parameters": {"temperature": 0, "max_tokens": max_tokens}})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_training_job_through_the_api_is_metered_per_step_and_its_version_is_served(platform):
    dataset = upload_dataset(platform)
    estimate = platform.post(f"/v1/models/{MODEL}/train/estimate", json={
        "adapter_id": "tuned", "dataset": dataset,
        "hyperparameters": {"learning_rate": 1e-3, "epochs": 1, "batch_size": 2, "max_steps": 3, "rank": 4}})
    assert estimate.status_code == 200, estimate.text
    job = train(platform, "tuned", dataset, rank=4)
    assert job["status"] == "validating_files" and job["estimate"]["gradients"] == estimate.json()["gradients"]

    done = wait_job(job["id"])
    assert done.status == "succeeded", (done.error_code, done.error_message)
    steps = list(TrainingStep.objects.filter(job=done).order_by("step"))
    assert [s.step for s in steps] == [1, 2, 3]
    # batch 2 as micro-batches of 1; a step's gradients = trainable elements x the tokens of its two records
    assert all(s.gradients == done.trainable_params * s.tokens and s.micro_batches == 2 and s.compute_ms > 0
               for s in steps)
    # the estimate counted the dataset with the model store's tokenizer and chat template, as the node encodes it:
    # 3 steps of 2 of the 8 records drawn at random, so the bill is within 10 % of the estimate at the mean length
    quote = estimate.json()
    assert quote["tokens_exact"] is True and quote["gradients"] == done.estimated_gradients
    billed = sum(s.gradients for s in steps)
    assert abs(billed - quote["gradients"]) <= 0.1 * quote["gradients"], (billed, quote)
    rows = UsageEvent.objects.filter(kind=UsageEvent.TRAINING, key__startswith=f"training:{done.id}:")
    cost, quoted = sum(r.cost for r in rows), Decimal(quote["cost_exact_usd"])
    assert rows.count() == 3 and abs(cost - quoted) <= Decimal("0.1") * quoted, (cost, quote)
    assert Decimal(quote["cost_usd"]) >= quoted  # the micro-dollar quote rounds up
    assert TrainingCheckpoint.objects.filter(job=done).exists() or done.total_steps < 10
    adapter = Adapter.objects.get(name="tuned")
    assert adapter.current_version == done.result_version and adapter.current_version.source == "training"
    events = platform.get(f"/v1/training/jobs/{done.id}/events").json()["data"]
    assert any(e["step"] == 3 and e["loss"] is not None for e in events)

    answer = greedy(platform, "tuned")
    assert answer["adapter"] == "tuned@v1" and answer["text"]


# 16+ tokens: the prompt's first block comes from the prefix cache, so every row prefills alike; the answer is
# long enough that the streams spend their time decoding, where training gets its turn every 10 steps
STORY = "Here is a short story about a pelican who lives by the sea and loves to sing. Once upon a time,"


def streamed(client, model, prompt=STORY, max_tokens=16):
    """One SSE request: its request id, the version it was admitted on, its text and its final event."""
    body = {"prompt": prompt, "adapter_id": model, "parameters": {"temperature": 0, "max_tokens": max_tokens},
            "stream": True}
    with client.stream("POST", f"/v1/models/{MODEL}/infer", json=body) as response:
        assert response.status_code == 200, response.read()
        events = list(sse_events(response))
    head, final = json.loads(events[0]["data"]), json.loads(events[-1]["data"])
    assert events[0]["event"] == "request" and events[-1]["event"] == "done", [e["event"] for e in events]
    assert not final.get("error") and final["finish_reason"] in ("stop", "length"), final
    text = "".join(json.loads(e["data"])["text"] for e in events if e["event"] == "delta")
    return {"id": head["id"], "adapter": head["adapter"], "text": text, "stream": True}


@pytest.mark.parametrize("runtime_concurrency", [5])  # three streams and the training job's task at once
def test_hot_swap_with_streams_running_through_it(platform, adapter_zip):
    up = platform.post("/api/v1/adapters", data={"name": "support", "base_model": MODEL},
                       files={"file": ("adapter.zip", adapter_zip, "application/zip")})
    assert up.status_code == 201, up.text
    tier = platform.patch("/api/v1/adapters/support", json={"tier": "hot"})
    assert tier.status_code == 200, tier.text
    greedy(platform, "support", STORY, 16)  # fills the prefix cache: every later request takes the same path
    dataset = upload_dataset(platform)

    results, errors, stop = {}, [], threading.Event()

    def client_loop(index, ask):
        mine = results.setdefault(index, [])
        with httpx.Client(base_url=platform.base_url, headers=platform.headers, timeout=120) as client:
            while not stop.is_set():
                try:
                    mine.append(ask(client, "support"))
                except Exception as exc:  # any failure during the swap fails the test below
                    errors.append(repr(exc))

    asks = [streamed, streamed, streamed]  # three SSE streams at once
    threads = [threading.Thread(target=client_loop, args=(i, ask)) for i, ask in enumerate(asks)]
    for thread in threads:
        thread.start()
    try:
        # two micro-steps: with three streams decoding, training gets one turn in ten steps
        job = train(platform, "support", dataset, learning_rate=1e-2, batch_size=1, max_steps=2)
        done = wait_job(job["id"], timeout=600)
        seen_current = timezone.now()  # the swap has committed by now
        assert done.status == "succeeded", (done.error_code, done.error_message)
        wait_for(lambda: all(any(r["adapter"] == "support@v2" for r in mine[-3:]) for mine in results.values()),
                 420, "every client to reach the new version")
    finally:
        stop.set()
        for thread in threads:
            thread.join(180)
    assert not errors, errors
    everything = [r for mine in results.values() for r in mine]
    assert {r["adapter"] for r in everything} == {"support@v1", "support@v2"}
    for mine in results.values():  # each client: the old version, then the new one, never back
        labels = [r["adapter"] for r in mine]
        assert labels == sorted(labels), labels

    # no mixed weights: each answer is exactly what a lone request pinned to its version produces
    reference = {label: greedy(platform, label, STORY, 16)["text"] for label in ("support@v1", "support@v2")}
    assert reference["support@v1"] != reference["support@v2"]  # else this test could not tell them apart
    wrong = [(r["adapter"], r["text"]) for r in everything if r["text"] != reference[r["adapter"]]]
    assert not wrong, (reference, wrong)

    rows = {row.id: row for row in InferenceRequest.objects.filter(pk__in=[r["id"] for r in everything])
            .select_related("adapter_version")}
    assert len(rows) == len(everything) and all(row.status == "succeeded" for row in rows.values())
    assert all(rows[r["id"]].adapter_version.number == int(r["adapter"][-1]) for r in everything)
    swap = done.result_version.created_at  # inside the swap's transaction, before its commit
    assert all(row.adapter_version.number == 1 for row in rows.values() if row.created_at < swap)
    assert all(row.adapter_version.number == 2 for row in rows.values() if row.created_at > seen_current)
    assert all(row.created_at > swap for row in rows.values() if row.adapter_version.number == 2)
    through = [rows[r["id"]] for r in everything if r.get("stream")]
    assert any(row.adapter_version.number == 1 and row.created_at <= swap <= row.finished_at for row in through), \
        "no stream was running on v1 when v2 became current"
