"""Fine-tuning end to end with real processes (daphne, a SmolLM2 runtime node, the control worker): a dataset
upload, a training job through the API metered once per step, the trained version current and served, and a
hot swap with requests running through it: each request finishes on the version it started with, with that
version's exact greedy text, and none fails.

Requests in the swap test run one at a time: on a CPU, a row's fp32 logits depend slightly on the batch it
shares (GEMM blocking), enough to flip a near-tie in greedy decoding, so only requests that each run alone
(and, after the first, from the same cached prompt prefix) make "the exact text of its version" a sharp test
of "never mixed weights"."""

import json
import threading

import httpx
import pytest

from inference.models import Adapter, InferenceRequest, TrainingCheckpoint, TrainingJob, TrainingStep
from tests.integration.conftest import wait_for
from tests.integration.test_inference_e2e import MODEL, platform  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow

RECORDS = [{"messages": [{"role": "user", "content": f"What is the code word number {i}?"},
                         {"role": "assistant", "content": f"The code word number {i} is pelican{i}."}]}
           for i in range(8)]


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


def test_a_training_job_through_the_api_is_metered_per_step_and_its_version_is_served(platform):  # noqa: F811
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
    per_micro_batch = done.trainable_params  # batch 2 as micro-batches of 1
    assert all(s.gradients == per_micro_batch * 2 and s.micro_batches == 2 and s.compute_ms > 0 for s in steps)
    assert sum(s.gradients for s in steps) == done.estimated_gradients
    assert TrainingCheckpoint.objects.filter(job=done).exists() or done.total_steps < 10
    adapter = Adapter.objects.get(name="tuned")
    assert adapter.current_version == done.result_version and adapter.current_version.source == "training"
    events = platform.get(f"/v1/training/jobs/{done.id}/events").json()["data"]
    assert any(e["step"] == 3 and e["loss"] is not None for e in events)

    answer = greedy(platform, "tuned")
    assert answer["adapter"] == "tuned@v1" and answer["text"]


def test_hot_swap_with_requests_running_through_it(platform, adapter_zip):  # noqa: F811
    up = platform.post("/api/v1/adapters", data={"name": "support", "base_model": MODEL},
                       files={"file": ("adapter.zip", adapter_zip, "application/zip")})
    assert up.status_code == 201, up.text
    tier = platform.patch("/api/v1/adapters/support", json={"tier": "hot"})
    assert tier.status_code == 200, tier.text
    greedy(platform, "support")  # fills the prefix cache: every later request takes the same path
    v1_text = greedy(platform, "support")["text"]
    dataset = upload_dataset(platform)

    results, errors, stop = [], [], threading.Event()

    def client_loop():
        with httpx.Client(base_url=platform.base_url, headers=platform.headers, timeout=120) as client:
            while not stop.is_set():
                try:
                    results.append(greedy(client, "support"))
                except Exception as exc:  # any failure during the swap fails the test below
                    errors.append(repr(exc))

    threads = [threading.Thread(target=client_loop)]
    for thread in threads:
        thread.start()
    try:
        job = train(platform, "support", dataset, learning_rate=5e-3)
        done = wait_job(job["id"])
        assert done.status == "succeeded", (done.error_code, done.error_message)
        wait_for(lambda: any(r["adapter"] == "support@v2" for r in results[-4:]), 120,
                 "requests to reach the new version")
    finally:
        stop.set()
        for thread in threads:
            thread.join(180)
    assert not errors, errors
    by_version = {}
    for r in results:
        by_version.setdefault(r["adapter"], set()).add(r["text"])
    assert set(by_version) <= {"support@v1", "support@v2"} and "support@v2" in by_version
    assert by_version.get("support@v1", {v1_text}) == {v1_text}  # v1 requests: v1's exact text, never mixed
    v2_text = greedy(platform, "support")["text"]
    assert by_version["support@v2"] == {v2_text}
    rows = list(InferenceRequest.objects.filter(pk__in=[r["id"] for r in results]).select_related("adapter_version"))
    assert len(rows) == len(results) and all(row.status == "succeeded" for row in rows)
    swap = done.result_version.created_at
    assert any(row.adapter_version.number == 1 and row.created_at <= swap <= row.finished_at for row in rows), \
        "no request was running on v1 when v2 became current"
