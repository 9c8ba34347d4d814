"""The OpenAI-compatible API without a runtime: every refusal happens before a row is written or a task
sent, /v1/models shows base models and only the caller's adapters, and (with the token stream faked) the
answers, chunks and errors have OpenAI's shapes."""

import json

import pytest
from django.test import Client

from serving.models import InferenceRequest
from tests.factories import create_key
from tests.fixtures.serving import FAKE_FINAL
from tests.helpers import api_schema, assert_documented, assert_error, bearer_client, post_json, sse_data

BASE = "smollm2-135m-instruct"
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


@pytest.fixture
def alice_api(alice, acme):
    return bearer_client(create_key(alice, acme)[1])


@pytest.fixture
def charlie_api(charlie, contoso):
    return bearer_client(create_key(charlie, contoso)[1])


def chat(model=BASE, **extra):
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra}


REFUSALS = [
    (CHAT, chat("no-such-model"), 404, "model_not_found", "model"),
    (CHAT, chat("secret"), 404, "model_not_found", "model"),  # charlie's adapter, asked by alice
    (CHAT, chat("support-bot@v2"), 404, "model_not_found", "model"),
    (CHAT, chat(n=0), 400, "out_of_range", "n"),
    (CHAT, chat(n=1000), 400, "out_of_range", "n"),
    (CHAT, chat(n=2.5), 400, "invalid_type", "n"),
    (CHAT, chat(logprobs=True, top_logprobs=21), 400, "out_of_range", "top_logprobs"),
    (CHAT, chat(top_logprobs=2), 400, None, "top_logprobs"),  # without logprobs: true
    (CHAT, chat(logit_bias={"abc": 1}), 400, "invalid_token_id", "logit_bias"),
    (CHAT, chat(logit_bias={"1.5": 1}), 400, "invalid_token_id", "logit_bias"),
    (CHAT, chat(logit_bias={"-1": 1}), 400, "invalid_token_id", "logit_bias"),
    (CHAT, chat(logit_bias={"9" * 5000: 1}), 400, "invalid_token_id", "logit_bias"),
    (CHAT, chat(logit_bias={"5": 101}), 400, "out_of_range", "logit_bias"),
    (CHAT, chat(logit_bias={"5": "1"}), 400, "invalid_type", "logit_bias"),
    (CHAT, chat(logit_bias={"5": float("nan")}), 400, "invalid_type", "logit_bias"),
    (CHAT, chat(logit_bias={str(i): 1 for i in range(301)}), 400, "out_of_range", "logit_bias"),
    (CHAT, chat(logit_bias=[5, 1]), 400, "invalid_type", "logit_bias"),
    (CHAT, chat(presence_penalty=2.5), 400, "out_of_range", "presence_penalty"),
    (CHAT, chat(frequency_penalty=-2.01), 400, "out_of_range", "frequency_penalty"),
    (CHAT, chat(presence_penalty=float("nan")), 400, "invalid_type", "presence_penalty"),
    (CHAT, chat(repetition_penalty=0), 400, "out_of_range", "repetition_penalty"),
    (CHAT, chat(repetition_penalty=11), 400, "out_of_range", "repetition_penalty"),
    (CHAT, chat(min_tokens=-1), 400, "out_of_range", "min_tokens"),
    (CHAT, chat(min_tokens=20, max_tokens=10), 400, "min_tokens_exceeds_max_tokens", "min_tokens"),
    (COMPLETIONS, {"model": BASE, "prompt": "Hi", "logprobs": 6}, 400, "out_of_range", "logprobs"),
    (COMPLETIONS, {"model": BASE, "prompt": "Hi", "logprobs": True}, 400, "invalid_type", "logprobs"),
    (CHAT, chat(temperature=3), 400, None, "temperature"),
    (CHAT, chat(top_p=0), 400, None, "top_p"),
    (CHAT, chat(max_tokens=10 ** 6), 400, None, "max_tokens"),
    (CHAT, chat(max_tokens=10, max_completion_tokens=20), 400, None, "max_tokens"),
    (CHAT, chat(stop=["a", "b", "c", "d", "e"]), 400, None, "stop"),
    (CHAT, chat(tools=[{"type": "function", "function": {"name": "f f"}}]), 400, None, "tools.0.function.name"),
    (CHAT, chat(surprise=1), 400, "unknown_field", "surprise"),
    (CHAT, chat(stream=True, stream_options={"include_usage": True, "extra": 1}), 400, "unknown_field",
     "stream_options.extra"),
    (CHAT, {"model": BASE, "messages": []}, 400, None, "messages"),
    (CHAT, {"model": BASE, "messages": [{"role": "tool", "content": "x"}]}, 400, None, "messages.0.tool_call_id"),
    (CHAT, {"model": BASE, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, None, "messages.0.content"),
    (CHAT, {"model": BASE, "messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]},
     400, None, "messages.0.tool_calls.0.type"),
    (CHAT, {"model": BASE, "messages": [{"role": "user", "content": "x" * 20000}]}, 400, "context_length_exceeded",
     "messages"),
    (CHAT, {"messages": [{"role": "user", "content": "Hi"}]}, 400, None, "model"),
    (COMPLETIONS, {"model": BASE, "prompt": "Hi", "echo": True}, 400, "unsupported_value", "echo"),
    (COMPLETIONS, {"model": BASE, "prompt": ["a", "b"]}, 400, None, "prompt"),
    (COMPLETIONS, {"model": BASE, "prompt": ""}, 400, "empty_prompt", "prompt"),
    (COMPLETIONS, {"model": "nope", "prompt": "Hi"}, 404, "model_not_found", "model"),
    # NUL: PostgreSQL cannot store or compare text holding one
    (COMPLETIONS, {"model": BASE, "prompt": "a\x00b"}, 400, "null_characters_not_allowed", "prompt"),
    (COMPLETIONS, {"model": BASE, "prompt": ["a\x00b"]}, 400, "null_characters_not_allowed", "prompt"),
    (CHAT, {"model": BASE, "messages": [{"role": "user", "content": "a\x00b"}]}, 400, None, "messages.0.content"),
    (CHAT, {"model": BASE, "messages": [{"role": "user", "content": [{"type": "text", "text": "a\x00b"}]}]}, 400,
     None, "messages.0.content"),
    (CHAT, chat(stop=["a\x00"]), 400, None, "stop"),
    (CHAT, chat("ti\x00ny"), 400, None, "model"),
]


@pytest.mark.parametrize("path, body, status, code, param", REFUSALS,
                         ids=[f"{p.rsplit('/', 1)[1]}-{i}" for i, (p, *_) in enumerate(REFUSALS)])
def test_refusals_write_nothing(alice_api, catalog, node, unchanged_db, path, body, status, code, param):
    with unchanged_db():
        error = assert_error(post_json(alice_api, path, body), status, code=code, param=param)
    assert InferenceRequest.objects.count() == 0
    if code == "model_not_found":
        assert "GET /v1/models" in error["message"] and "acme" not in error["message"]


def test_charlie_cannot_use_or_see_alices_adapter(charlie_api, catalog, node, unchanged_db):
    with unchanged_db():
        error = assert_error(post_json(charlie_api, CHAT, chat("support-bot")), 404, code="model_not_found")
        assert_error(charlie_api.get("/v1/models/support-bot"), 404, code="model_not_found")
        listed = [m["id"] for m in charlie_api.get("/v1/models").json()["data"]]
    assert "support-bot" in error["message"] and "support-bot" not in listed and "secret" in listed
    assert InferenceRequest.objects.count() == 0


def test_transport_refusals(alice_api, catalog, node, unchanged_db):
    with unchanged_db():
        assert_error(alice_api.post(CHAT, b"{nope", content_type="application/json"), 400, code="parse_error")
        assert_error(alice_api.post(CHAT, "model=x", content_type="application/x-www-form-urlencoded"), 415)
        assert_error(alice_api.get(CHAT), 405)
        missing = post_json(Client(), CHAT, chat())
        assert_error(missing, 401, code="not_authenticated")
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert_error(post_json(bearer_client("nope.secret"), COMPLETIONS, {"model": BASE, "prompt": "Hi"}), 401,
                     code="invalid_api_key")
    assert InferenceRequest.objects.count() == 0


def test_a_key_without_the_infer_scope_is_refused(alice, acme, catalog, node, unchanged_db):
    client = bearer_client(create_key(alice, acme, scopes=["usage:read"])[1])
    with unchanged_db():
        assert_error(post_json(client, CHAT, chat()), 403, code="missing_scope")
        assert_error(client.get("/v1/models"), 403, code="missing_scope")


def test_models_lists_base_models_and_only_the_callers_adapters(alice_api, catalog):
    response = alice_api.get("/v1/models")
    assert response.status_code == 200 and response.json()["object"] == "list"
    cards = {m["id"]: m for m in response.json()["data"]}
    assert set(cards) == {BASE, "other-base", "support-bot", "support-bot@v1"}
    assert cards[BASE]["owned_by"] == "vajra" and cards["support-bot@v1"]["owned_by"] == "acme"
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in cards.values())

    assert alice_api.get("/v1/models/support-bot@v1").json()["id"] == "support-bot@v1"
    assert alice_api.get(f"/v1/models/{BASE}").json() == cards[BASE]
    assert_error(alice_api.get("/v1/models/secret"), 404, code="model_not_found")
    # the paper's routes under /v1/models/<id>/ still answer
    assert alice_api.get(f"/v1/models/{BASE}/versions").json()["data"][0]["id"] == "support-bot@v1"


# -- answers, with the runtime's token stream faked ------------------------------------------------------




def test_chat_answer_and_what_the_runtime_receives(alice_api, catalog, node, runtime):
    body = {"model": "support-bot", "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Hello", "refusal": None, "tool_calls": None}],
        "frequency_penalty": 0, "presence_penalty": 0.0, "logprobs": False, "n": 1, "user": "u-1", "tools": [],
        "max_completion_tokens": 12, "stop": "\n", "seed": 3}
    response = post_json(alice_api, CHAT, body)
    assert response.status_code == 200, response.content
    answer = response.json()
    row = InferenceRequest.objects.get()
    assert answer["id"] == f"chatcmpl-{row.id}" and response.headers["x-request-id"] == row.id
    assert answer["object"] == "chat.completion" and answer["model"] == "support-bot"
    assert answer["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello there",
                                                          "refusal": None}, "logprobs": None, "finish_reason": "stop"}]
    assert answer["usage"]["total_tokens"] == 9 and answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert answer["vajra"]["adapter"] == "support-bot@v1" and answer["vajra"]["cost"]["units"] == 1
    assert answer["vajra"]["timings"]["total_ms"] == 3.0
    assert row.api == "chat" and row.max_tokens == 12 and row.adapter_version.adapter.name == "support-bot"
    payload, = runtime.sent
    assert payload["messages"] == [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Hi\nthere"}, {"role": "assistant", "content": "Hello"}]
    assert payload["sampling"] == {"max_tokens": 12, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "stop": ["\n"],
                                   "seed": 3}
    assert payload["prompt"] == ""


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_chat_stream_chunks_usage_and_done(alice_api, catalog, node, runtime):
    response = post_json(alice_api, CHAT, chat(stream=True, stream_options={"include_usage": True}, temperature=0))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
    data = sse_data(response)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hello there"
    finish, usage = chunks[-2], chunks[-1]
    assert finish["choices"][0]["finish_reason"] == "stop" and finish["usage"] is None and finish["vajra"]["tier"]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 2
    assert runtime.sent[0]["sampling"]["temperature"] == 0 and not runtime.cancelled


def test_completion_answer(alice_api, catalog, node, runtime):
    response = post_json(alice_api, COMPLETIONS, {"model": BASE, "prompt": ["Once"], "max_tokens": 5, "echo": False})
    answer = response.json()
    assert response.status_code == 200 and answer["object"] == "text_completion"
    assert answer["id"].startswith("cmpl-req_") and answer["choices"][0]["text"] == "Hello there"
    assert answer["vajra"]["adapter"] is None and InferenceRequest.objects.get().api == "completions"
    assert runtime.sent[0]["prompt"] == "Once" and runtime.sent[0]["messages"] == []


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_completion_stream_without_usage(alice_api, catalog, node, runtime):
    data = sse_data(post_json(alice_api, COMPLETIONS, {"model": BASE, "prompt": "Once", "stream": True}))
    chunks = [json.loads(d) for d in data[:-1]]
    assert data[-1] == "[DONE]" and all("usage" not in c for c in chunks)
    assert [c["choices"][0]["text"] for c in chunks] == ["Hello", " there", ""]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("error_code, status", [("context_length_exceeded", 400), ("non_finite_logits", 422),
                                                ("sampling_error", 502), ("engine_error", 502)])
def test_runtime_error_is_an_openai_error(alice_api, catalog, node, runtime, error_code, status):
    runtime.final = {**FAKE_FINAL, "finish_reason": "error", "error": {"code": error_code, "message": "it broke"}}
    error = assert_error(post_json(alice_api, CHAT, chat()), status, code=error_code)
    assert error["message"] == "it broke" and error["type"] == ("invalid_request_error" if status < 500
                                                                 else "api_error")


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_runtime_error_in_a_stream(alice_api, catalog, node, runtime):
    runtime.final = {**FAKE_FINAL, "finish_reason": "error", "error": {"code": "engine_error", "message": "it broke"}}
    data = sse_data(post_json(alice_api, CHAT, chat(stream=True)))
    assert data[-1] == "[DONE]" and json.loads(data[-2])["error"]["code"] == "engine_error"


RETRY = ("0-1", "retry", {"attempt": 2, "node": "node-b", "reason": "node node-a lost (no heartbeat for 3 beats)"})


def test_a_failover_retry_starts_the_answer_over(alice_api, catalog, node, runtime):
    runtime.before = [("0-0", "delta", {"text": "Hel"}), RETRY]  # the lost node's part, then the retry
    assert post_json(alice_api, CHAT, chat()).json()["choices"][0]["message"]["content"] == "Hello there"
    assert post_json(alice_api, COMPLETIONS, {"model": BASE, "prompt": "Once"}).json()["choices"][0]["text"] == \
        "Hello there"


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_a_failover_retry_before_any_text_streams_the_answer(alice_api, catalog, node, runtime):
    runtime.before = [RETRY]
    chunks = [json.loads(d) for d in sse_data(post_json(alice_api, CHAT, chat(stream=True)))[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hello there"
    assert not runtime.cancelled


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_a_failover_retry_after_text_ends_the_stream_with_node_lost(alice_api, catalog, node, runtime):
    runtime.before = [("0-0", "delta", {"text": "Hel"}), RETRY]
    data = sse_data(post_json(alice_api, CHAT, chat(stream=True)))
    error = json.loads(data[-2])["error"]
    assert data[-1] == "[DONE]" and error["code"] == "node_lost" and "node-a" in error["message"]
    assert runtime.cancelled == [InferenceRequest.objects.get().id]  # the retry is not left running


def test_no_capacity_is_503_with_retry_after(alice_api, catalog):
    response = post_json(alice_api, CHAT, chat())
    assert_error(response, 503)
    assert int(response["Retry-After"]) >= 1 and InferenceRequest.objects.count() == 0


def test_a_bias_outside_the_vocabulary_is_refused_naming_the_token(alice_api, catalog, node, unchanged_db):
    catalog["base"].architecture = {"vocab_size": 49152}
    catalog["base"].save()
    with unchanged_db():
        error = assert_error(post_json(alice_api, CHAT, chat(logit_bias={"17": 2, "49152": -5})), 400,
                             code="invalid_token_id", param="logit_bias")
    assert "49152" in error["message"] and "49151" in error["message"]
    assert InferenceRequest.objects.count() == 0


def entry(token, logprob=-0.5):
    piece = {"token": token, "logprob": logprob, "bytes": list(token.encode())}
    return {**piece, "top_logprobs": [piece]}


TWO_CHOICES = [{"text": "Hel", "logprobs": [entry("Hel")]}, {"text": "Bon", "index": 1, "logprobs": [entry("Bon")]},
               {"text": "lo", "logprobs": [entry("lo", -1.25)]}, {"text": "", "index": 1, "logprobs": [entry("jour")]},
               {"text": "jour", "index": 1}]
TWO_FINAL = {**FAKE_FINAL, "finish_reason": "length", "usage": {"prompt_tokens": 7, "completion_tokens": 4,
                                                                "cached_tokens": 0},
             "choices": [{"index": 0, "finish_reason": "stop", "completion_tokens": 2},
                         {"index": 1, "finish_reason": "length", "completion_tokens": 2}]}


def test_n_choices_with_logprobs(alice_api, catalog, node, runtime):
    runtime.deltas, runtime.final = TWO_CHOICES, TWO_FINAL
    response = post_json(alice_api, CHAT, chat(n=2, logprobs=True, top_logprobs=1, presence_penalty=0.5,
                                                logit_bias={"17": -3}, seed=4))
    answer = assert_documented(api_schema(), "post", CHAT, response)
    assert answer["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Hello", "refusal": None},
         "logprobs": {"content": [entry("Hel"), entry("lo", -1.25)], "refusal": None}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": "Bonjour", "refusal": None},
         "logprobs": {"content": [entry("Bon"), entry("jour")], "refusal": None}, "finish_reason": "length"}]
    assert answer["usage"]["completion_tokens"] == 4 and answer["usage"]["prompt_tokens"] == 7
    sampling = runtime.sent[0]["sampling"]
    assert (sampling["n"], sampling["logprobs"], sampling["presence_penalty"], sampling["logit_bias"]) == \
        (2, 1, 0.5, {"17": -3})
    assert "frequency_penalty" not in sampling and "min_tokens" not in sampling  # neutral options are not sent


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_n_choices_stream_with_their_index_and_logprobs(alice_api, catalog, node, runtime):
    runtime.deltas, runtime.final = TWO_CHOICES, TWO_FINAL
    response = post_json(alice_api, CHAT, chat(n=2, logprobs=True, stream=True))
    data = sse_data(response)
    chunks = [json.loads(d)["choices"][0] for d in data[:-1]]
    assert [c["delta"] for c in chunks[:2]] == [{"role": "assistant", "content": ""}] * 2
    assert [c["index"] for c in chunks[:2]] == [0, 1]
    for index, text, tokens in ((0, "Hello", ["Hel", "lo"]), (1, "Bonjour", ["Bon", "jour"])):
        mine = [c for c in chunks[2:] if c["index"] == index]
        assert "".join(c["delta"].get("content", "") for c in mine) == text
        assert [e["token"] for c in mine if c["logprobs"] for e in c["logprobs"]["content"]] == tokens
    assert [(c["index"], c["finish_reason"]) for c in chunks if c["finish_reason"]] == [(0, "stop"), (1, "length")]


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_completion_logprobs_in_the_legacy_shape(alice_api, catalog, node, runtime):
    runtime.deltas = [{"text": "Hel", "logprobs": [entry("Hel")]}, {"text": "lo", "logprobs": [entry("lo", -2.0)]}]
    body = {"model": BASE, "prompt": "Once", "logprobs": 1}
    answer = assert_documented(api_schema(), "post", COMPLETIONS, post_json(alice_api, COMPLETIONS, body))
    assert answer["choices"][0]["logprobs"] == {"tokens": ["Hel", "lo"], "token_logprobs": [-0.5, -2.0],
                                                "top_logprobs": [{"Hel": -0.5}, {"lo": -2.0}], "text_offset": [0, 3]}
    assert runtime.sent[0]["sampling"]["logprobs"] == 1
    chunks = [json.loads(d)["choices"][0] for d in sse_data(post_json(alice_api, COMPLETIONS,
                                                                        {**body, "stream": True}))[:-1]]
    assert [c["logprobs"]["text_offset"] for c in chunks if c["text"]] == [[0], [3]]
    assert [c["logprobs"]["tokens"] for c in chunks if c["text"]] == [["Hel"], ["lo"]]
