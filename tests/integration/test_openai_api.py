"""The official ``openai`` package, unmodified, against real processes: daphne, a runtime node with SmolLM2
and the control worker. Chat with the base model and with an uploaded adapter, streamed and not (the same
greedy text both ways), completions, the model list, errors as the client's own exceptions, a client that
closes its stream cancels the generation, and the request rows carry the API and the usage."""


import httpx
import openai
import pytest
from openai import OpenAI

from adapters.models import BaseModel
from serving.models import InferenceRequest
from tests.factories import create_key
from tests.processes import wait_for, wait_until_serving

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(daphne, runtime_node, control_worker, alice, acme, adapter_zip):
    """The OpenAI client for alice's key, once the node serves the base model and her adapter is uploaded."""
    wait_until_serving(MODEL, runtime_node, 180)
    _, secret = create_key(alice, acme)
    upload = httpx.post(f"{daphne}/api/v1/adapters", headers={"Authorization": f"Bearer {secret}"},
                        data={"name": "support-bot", "base_model": MODEL},
                        files={"file": ("adapter.zip", adapter_zip, "application/zip")}, timeout=120)
    assert upload.status_code == 201, upload.text
    return OpenAI(base_url=f"{daphne}/v1", api_key=secret, max_retries=0, timeout=120)


def settle():
    """Waits until the control worker has recorded every final event. The next request starts only then:
    on SQLite, its INSERT racing the worker's UPDATE fails with 'database is locked' (PostgreSQL waits)."""
    wait_for(lambda: not InferenceRequest.objects.exclude(status__in=InferenceRequest.TERMINAL).exists(), 60,
             "the control worker to record every final event")


def row_of(answer):
    return InferenceRequest.objects.get(pk=answer.id.split("-", 1)[1])


def test_chat_completions_models_errors_and_rows(client):
    base = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=16)
    settle()
    assert base.object == "chat.completion" and base.model == MODEL
    assert base.choices[0].message.role == "assistant" and base.choices[0].message.content
    assert base.choices[0].finish_reason in {"stop", "length"} and 0 < base.usage.completion_tokens <= 16
    assert base.id == f"chatcmpl-{base._request_id}"  # the x-request-id header names the same request

    tuned = client.chat.completions.create(model="support-bot", messages=QUESTION, temperature=0,
                                           max_completion_tokens=16)
    settle()
    assert tuned.model == "support-bot" and tuned.choices[0].message.content
    assert tuned.model_extra["vajra"]["adapter"] == "support-bot@v1"

    stream = client.chat.completions.create(model="support-bot", messages=QUESTION, temperature=0,
                                            max_completion_tokens=16, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    settle()
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == tuned.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == tuned.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == tuned.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1

    completion = client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0,
                                           max_tokens=8)
    settle()
    assert completion.object == "text_completion" and completion.choices[0].text
    assert completion.usage.completion_tokens <= 8

    ids = [m.id for m in client.models.list()]
    assert {MODEL, "support-bot", "support-bot@v1"} <= set(ids)
    assert client.models.retrieve("support-bot@v1").owned_by == "acme"

    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert missing.value.code == "model_not_found" and "no-such-model" in missing.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=QUESTION, n=9)
    assert refused.value.param == "n"
    # past the context: the web counts the templated prompt's tokens and refuses it before any row or task, as a
    # 400 both whole and streamed (the stream never starts)
    too_long = [{"role": "user", "content": "hello " * (BaseModel.objects.get(name=MODEL).context_length - 500)}]
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as long_error:
            client.chat.completions.create(model=MODEL, messages=too_long, max_tokens=1000, stream=stream)
        assert long_error.value.code == "context_length_exceeded" and "context" in long_error.value.message

    settle()
    rows = list(InferenceRequest.objects.order_by("created_at"))
    assert [r.api for r in rows] == ["chat"] * 3 + ["completions"]
    for answer in (base, tuned, completion):
        row = row_of(answer)
        assert row.status == "succeeded" and row.completion_tokens == answer.usage.completion_tokens
        assert row.prompt_tokens == answer.usage.prompt_tokens and row.gpu_ms > 0
    assert row_of(tuned).adapter_version.adapter.name == "support-bot" and row_of(base).adapter_version is None


def test_closing_a_stream_cancels_the_generation(client):
    stream = client.chat.completions.create(model="support-bot", temperature=0.8, seed=1, max_tokens=400,
                                            messages=[{"role": "user", "content": "Write a long story about the sea."}],
                                            stream=True)
    contents = 0
    for chunk in stream:
        contents += bool(chunk.choices and chunk.choices[0].delta.content)
        if contents >= 3:
            break
    request_id = chunk.id.removeprefix("chatcmpl-")
    stream.close()
    row = wait_for(lambda: InferenceRequest.objects.filter(pk=request_id, status__in=InferenceRequest.TERMINAL)
                   .first(), 60, "the cancelled request to be recorded")
    assert row.status == "cancelled" and 3 <= row.completion_tokens < 400
