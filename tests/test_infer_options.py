"""/v1's infer takes the sampling options under ``parameters`` (n and logprobs too, shaped as its answer's ``choices``
and ``logprobs``), refuses them out of range as typed 400s naming ``parameters.<name>``, with nothing written; the
playground takes the shared options but not n or logprobs."""

import pytest

from serving.models import InferenceRequest
from tests.factories import create_key
from tests.fixtures.serving import FAKE_FINAL
from tests.helpers import api_schema, assert_documented, assert_error, bearer_client, post_json

BASE = "smollm2-135m-instruct"
INFER = f"/v1/models/{BASE}/infer"


@pytest.fixture
def alice_api(alice, acme):
    return bearer_client(create_key(alice, acme)[1])


def entry(token):
    piece = {"token": token, "logprob": -0.25, "bytes": list(token.encode())}
    return {**piece, "top_logprobs": [piece]}


def test_infer_with_n_and_logprobs(alice_api, catalog, node, runtime):
    runtime.deltas = [{"text": "Hi", "logprobs": [entry("Hi")]}, {"text": "Yo", "index": 1, "logprobs": [entry("Yo")]}]
    runtime.final = {**FAKE_FINAL, "choices": [{"index": 0, "finish_reason": "stop", "completion_tokens": 1},
                                               {"index": 1, "finish_reason": "length", "completion_tokens": 1}]}
    body = {"prompt": "Hello", "parameters": {"n": 2, "logprobs": 1, "temperature": 0.5, "seed": 1,
                                              "repetition_penalty": 1.2, "min_tokens": 1}}
    response = post_json(alice_api, INFER, body)
    answer = assert_documented(api_schema(), "post", "/v1/models/{model_id}/infer", response)
    assert answer["text"] == "Hi" and answer["logprobs"] == [entry("Hi")]
    assert answer["choices"] == [{"index": 0, "text": "Hi", "finish_reason": "stop", "logprobs": [entry("Hi")]},
                                 {"index": 1, "text": "Yo", "finish_reason": "length", "logprobs": [entry("Yo")]}]
    sampling = runtime.sent[0]["sampling"]
    assert (sampling["n"], sampling["logprobs"], sampling["repetition_penalty"], sampling["min_tokens"]) == \
        (2, 1, 1.2, 1)


def test_infer_without_options_answers_as_ever(alice_api, catalog, node, runtime):
    answer = post_json(alice_api, INFER, {"prompt": "Hello"}).json()
    assert answer["text"] == "Hello there" and "logprobs" not in answer and "choices" not in answer
    assert set(runtime.sent[0]["sampling"]) == {"temperature", "top_p", "top_k", "max_tokens", "seed", "stop"}


@pytest.mark.parametrize("parameters, code, param", [
    ({"n": 9}, "out_of_range", "parameters.n"),
    ({"n": 0}, "out_of_range", "parameters.n"),
    ({"logprobs": 21}, "out_of_range", "parameters.logprobs"),
    ({"logprobs": True}, "invalid_type", "parameters.logprobs"),
    ({"logit_bias": {"x": 1}}, "invalid_token_id", "parameters.logit_bias"),
    ({"min_tokens": 50, "max_tokens": 10}, "min_tokens_exceeds_max_tokens", "parameters.min_tokens"),
])
def test_infer_refuses_bad_options(alice_api, catalog, node, unchanged_db, parameters, code, param):
    with unchanged_db():
        assert_error(post_json(alice_api, INFER, {"prompt": "Hi", "parameters": parameters}), 400, code=code,
                     param=param)
    assert InferenceRequest.objects.count() == 0


def test_the_playground_takes_the_shared_options_but_not_n():
    from serving.consumers import ChatIn

    chat = {"type": "chat", "model": BASE, "messages": [{"role": "user", "content": "Hi"}]}
    assert ChatIn(data={**chat, "presence_penalty": 1.0, "logit_bias": {"5": 1}}).is_valid()
    refused = ChatIn(data={**chat, "n": 2})
    assert not refused.is_valid() and "n" in refused.errors
