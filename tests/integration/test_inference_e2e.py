"""End to end with real processes: daphne, a runtime node, the control worker. A tenant uploads an adapter, infers
over REST and SSE, the request row records usage from the runtime's final event, and refusals send nothing (on
tiny-llama: no test reads the text's meaning); a client that disconnects cancels its generation (on SmolLM2, whose
answer takes long enough to leave mid-way)."""

import json
import time

import httpx
import pytest

from adapters.models import Adapter, AdapterVersion, BaseModel
from gpu_runtime.model_store import TINY_MODEL
from serving.models import InferenceRequest
from tests.factories import create_key
from tests.processes import sse_events, wait_for, wait_until_serving

pytestmark = pytest.mark.slow
SMOLLM2 = "smollm2-135m-instruct"
MODEL = TINY_MODEL


def client_of(daphne, alice, acme):
    _, secret = create_key(alice, acme)
    return httpx.Client(base_url=daphne, headers={"Authorization": f"Bearer {secret}"}, timeout=120)


@pytest.fixture
def platform(daphne, tiny_runtime_node, control_worker, alice, acme):
    wait_until_serving(MODEL, tiny_runtime_node, 180)
    return client_of(daphne, alice, acme)


@pytest.fixture
def smollm2_platform(daphne, runtime_node, control_worker, alice, acme):
    wait_until_serving(SMOLLM2, runtime_node, 180)
    return client_of(daphne, alice, acme)


def test_upload_infer_rest_and_sse_and_usage_rows(platform, tiny_adapter_zip, charlie, contoso):
    up = platform.post("/api/v1/adapters", data={"name": "support-bot", "base_model": MODEL},
                       files={"file": ("adapter.zip", tiny_adapter_zip, "application/zip")})
    assert up.status_code == 201, up.text
    assert up.json()["model"] == "support-bot@v1" and up.json()["tier"]["units_per_query"] == 1

    body = {"prompt": "The capital of France is", "adapter_id": "support-bot",
            "parameters": {"temperature": 0, "max_tokens": 16}}
    answer = platform.post(f"/v1/models/{MODEL}/infer", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["adapter"] == "support-bot@v1" and result["tier"] == "cold" and result["cost"]["units"] == 1
    assert result["text"] and 0 < result["usage"]["completion_tokens"] <= 16
    assert result["timings"]["adapter_ready_ms"] > 0
    row = wait_for(lambda: InferenceRequest.objects.filter(pk=result["id"], status="succeeded").first(), 60,
                   "the control worker to record the final event")
    assert row.completion_tokens == result["usage"]["completion_tokens"] and row.gpu_ms > 0
    assert row.adapter_version.adapter.name == "support-bot" and row.node.name.startswith("tiny-")

    with platform.stream("POST", f"/v1/models/{MODEL}/infer", json={**body, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "request" and kinds[-1] == "done" and "delta" in kinds
    streamed = "".join(json.loads(e["data"])["text"] for e in events if e["event"] == "delta")
    assert streamed == result["text"]  # greedy: the same answer both ways

    # resume: the same stream again from its second event
    request_id = json.loads(events[0]["data"])["id"]
    second_id = next(e["id"] for e in events if e["event"] == "delta")
    with platform.stream("GET", f"/v1/requests/{request_id}/events", headers={"Last-Event-ID": second_id}) as again:
        resumed = [e for e in sse_events(again) if e["event"] == "delta"]
    assert "".join(json.loads(e["data"])["text"] for e in resumed) == streamed[len(
        json.loads(next(e for e in events if e["event"] == "delta")["data"])["text"]):]


def test_disconnect_cancels_generation(smollm2_platform, adapter_zip):
    platform = smollm2_platform
    platform.post("/api/v1/adapters", data={"name": "long", "base_model": SMOLLM2},
                  files={"file": ("adapter.zip", adapter_zip, "application/zip")}).raise_for_status()
    body = {"prompt": "Write a very long story about the sea.", "adapter_id": "long",
            "parameters": {"temperature": 0.8, "max_tokens": 400, "seed": 1}, "stream": True}
    with platform.stream("POST", f"/v1/models/{SMOLLM2}/infer", json=body) as response:
        deltas = 0
        for event in sse_events(response):
            if event.get("event") == "request":
                request_id = json.loads(event["data"])["id"]
            deltas += event.get("event") == "delta"
            if deltas >= 3:
                break  # leaves the block: the connection closes mid-stream
    row = wait_for(lambda: InferenceRequest.objects.filter(pk=request_id, status__in=InferenceRequest.TERMINAL)
                   .first(), 60, "the cancelled request to be recorded")
    assert row.status == "cancelled" and 3 <= row.completion_tokens < 400


def test_refusals_write_nothing_and_send_no_task(platform, acme, charlie, contoso, unchanged_db):
    other = Adapter.objects.create(tenant=contoso, base_model=BaseModel.objects.get(name=MODEL), name="secret")
    llama = BaseModel.objects.create(name="llama-70b", architecture={})
    elsewhere = Adapter.objects.create(tenant=acme, base_model=llama, name="for-llama")
    elsewhere.current_version = AdapterVersion.objects.create(
        adapter=elsewhere, number=1, status="ready", sha256="0" * 64, size_bytes=1, rank=8, alpha=16,
        target_modules=["q_proj"], dtype="F32", storage_key="k")
    elsewhere.save()
    cases = [
        ("/v1/models/no-such-model/infer", {"prompt": "hi"}, 404),
        (f"/v1/models/{MODEL}/infer", {"prompt": "hi", "adapter_id": "secret"}, 404),  # charlie's
        (f"/v1/models/{MODEL}/infer", {"prompt": "hi", "adapter_id": "for-llama"}, 400),  # another base
        (f"/v1/models/{MODEL}/infer", {"prompt": "hi", "parameters": {"temperature": 3}}, 400),
        (f"/v1/models/{MODEL}/infer", {"prompt": "hi", "parameters": {"top_p": 0}}, 400),
        (f"/v1/models/{MODEL}/infer", {"prompt": "hi", "parameters": {"max_tokens": 0}}, 400),
        (f"/v1/models/{MODEL}/infer", {"prompt": "hi", "parameters": {"max_tokens": 10 ** 6}}, 400),
        (f"/v1/models/{MODEL}/infer", {"prompt": ""}, 400),
        (f"/v1/models/{MODEL}/infer", {"prompt": "x" * 10 ** 6}, 400),
        (f"/v1/models/{MODEL}/infer", {"prompt": "hi", "surprise": 1}, 400),
    ]
    with unchanged_db():
        for url, body, status in cases:
            response = platform.post(url, json=body)
            assert response.status_code == status, (body, response.text)
            error = response.json()["error"]
            assert error["message"] and response.headers["x-request-id"]
        assert platform.post(f"/v1/models/{MODEL}/infer", content=b"{nope",
                             headers={"Content-Type": "application/json"}).status_code == 400
        assert platform.post(f"/v1/models/{MODEL}/infer", content=b"prompt=hi",
                             headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 415
    del other
    time.sleep(0.5)
    assert InferenceRequest.objects.count() == 0
