"""The inference answers as the served schema documents them (GET /api/schema/), from real processes: daphne, a
runtime node on tiny-llama and the control worker. Each answer of the native and the OpenAI-compatible API, JSON and
streamed, with the base model and an uploaded adapter, and a request's events replayed, is valid against its
operation's response for its status (tests.helpers.assert_documented, which reads objects as closed: a field the code
sends and the schema does not name fails)."""

import httpx
import pytest

from serving.models import InferenceRequest
from tests.factories import create_key
from tests.helpers import assert_documented
from tests.processes import wait_for, wait_until_serving

pytestmark = pytest.mark.slow
MODEL = "tiny-llama"
SHORT = {"temperature": 0, "max_tokens": 6}
CHAT = [{"role": "user", "content": "Hello there"}]


def settle():
    """Until the control worker recorded every final: on SQLite a request's INSERT racing its UPDATE fails."""
    wait_for(lambda: not InferenceRequest.objects.exclude(status__in=InferenceRequest.TERMINAL).exists(), 60,
             "the control worker to record every final event")


def test_inference_answers_and_streams_match_the_served_schema(daphne, tiny_runtime_node, control_worker, alice, acme,
                                                               tiny_adapter_zip):
    wait_until_serving(MODEL, tiny_runtime_node, 120)
    schema = httpx.get(f"{daphne}/api/schema/?format=json", timeout=60).json()
    _, secret = create_key(alice, acme)
    client = httpx.Client(base_url=daphne, headers={"Authorization": f"Bearer {secret}"}, timeout=120)

    def check(method, path, response, status=200):
        assert response.status_code == status, (method, path, response.status_code, response.text[:500])
        body = assert_documented(schema, method, path, response)
        settle()
        return body

    check("post", "/api/v1/adapters", client.post("/api/v1/adapters", data={"name": "tiny-bot", "base_model": MODEL},
                                                  files={"file": ("a.zip", tiny_adapter_zip, "application/zip")}), 201)

    infer = "/v1/models/{model_id}/infer"
    answer = check("post", infer, client.post(f"/v1/models/{MODEL}/infer", json={"prompt": "Hello",
                                                                                 "parameters": SHORT}))
    assert answer["text"] and answer["usage"]["completion_tokens"] > 0
    events = check("post", infer, client.post(f"/v1/models/{MODEL}/infer", json={
        "prompt": "Hello", "adapter_id": "tiny-bot", "parameters": SHORT, "stream": True}))
    assert [e["event"] for e in events][0] == "request" and events[-1]["event"] == "done"
    assert {e["event"] for e in events[1:-1]} == {"delta"}
    request_id = events[0]["data"]["id"]
    check("get", "/v1/requests/{request_id}", client.get(f"/v1/requests/{request_id}"))
    replay = check("get", "/v1/requests/{request_id}/events", client.get(f"/v1/requests/{request_id}/events"))
    assert [e["data"] for e in replay[1:]] == [e["data"] for e in events[1:]]  # the same stream, again
    check("get", "/v1/requests/{request_id}/events", client.get(f"/v1/requests/{request_id}/events",
                                                                headers={"Last-Event-ID": "x"}), 400)

    chat = "/v1/chat/completions"
    check("post", chat, client.post(chat, json={"model": MODEL, "messages": CHAT, **SHORT}))
    chunks = check("post", chat, client.post(chat, json={"model": "tiny-bot", "messages": CHAT, **SHORT,
                                                         "stream": True, "stream_options": {"include_usage": True}}))
    assert chunks[-1]["data"] == "[DONE]" and chunks[-2]["data"]["usage"]["completion_tokens"] > 0
    check("post", "/v1/completions", client.post("/v1/completions", json={"model": "tiny-bot@v1", "prompt": "Hi",
                                                                          **SHORT}))
    streamed = check("post", "/v1/completions", client.post("/v1/completions", json={
        "model": MODEL, "prompt": "Hi", **SHORT, "stream": True}))
    assert streamed[-1]["data"] == "[DONE]" and streamed[-2]["data"]["vajra"]["request_id"]
    check("post", chat, client.post(chat, json={"model": MODEL, "messages": CHAT, "max_tokens": 10 ** 6}), 400)

    # Past tiny-llama's 2048-token context in fewer characters than the web's bound, and the web has no tokenizer of
    # tiny-llama to count with (its store is the node's): the runtime refuses it, so the answer is a failed one (the
    # Inference shape with its error), a stream ends with a done event carrying it, an OpenAI stream with an error.
    long = " hello" * 2100
    failed = check("post", infer, client.post(f"/v1/models/{MODEL}/infer", json={"prompt": long,
                                                                                 "parameters": SHORT}), 400)
    assert failed["error"]["code"] == "context_length_exceeded" and failed["text"] == "", failed
    ended = check("post", infer, client.post(f"/v1/models/{MODEL}/infer", json={
        "prompt": long, "parameters": SHORT, "stream": True}))
    assert ended[-1]["event"] == "done" and ended[-1]["data"]["error"]["code"] == "context_length_exceeded"
    ended = check("post", chat, client.post(chat, json={"model": MODEL, "messages": [{"role": "user", "content": long}],
                                                        **SHORT, "stream": True}))
    assert ended[-2]["data"]["error"]["code"] == "context_length_exceeded" and ended[-1]["data"] == "[DONE]"
    check("post", chat, client.post(chat, json={"model": MODEL, "messages": CHAT},
                                    headers={"Authorization": "Bearer nope.nope"}), 401)
