"""The sampling options through the official ``openai`` package, unmodified, against real processes (daphne, a
runtime node with SmolLM2, the control worker): logprobs (chat and completions, whole and streamed), n choices
(seeded: reproducible; usage and the ledger count every choice, the shown cost is the billed one), penalties,
logit_bias and min_tokens changing the greedy answer, and the client's own exceptions for hostile values with
nothing written."""

from decimal import Decimal

import openai
import pytest
from openai import OpenAI
from transformers import AutoTokenizer

from billing.models import UsageEvent
from gpu_runtime.logprobs import BYTE_DECODER
from serving.models import InferenceRequest
from tests.factories import create_key
from tests.processes import wait_for, wait_until_serving

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "Name three fruits."}]


@pytest.fixture
def client(daphne, runtime_node, control_worker, alice, acme):
    wait_until_serving(MODEL, runtime_node, 180)
    _, secret = create_key(alice, acme)
    return OpenAI(base_url=f"{daphne}/v1", api_key=secret, max_retries=0, timeout=180)


def settle():
    wait_for(lambda: not InferenceRequest.objects.exclude(status__in=InferenceRequest.TERMINAL).exists(), 60,
             "the control worker to record every final event")


def row_of(answer):
    return InferenceRequest.objects.get(pk=answer.id.split("-", 1)[1])


def streamed(client, **kwargs):
    """{choice index: (text, logprob entries)} of a streamed chat answer."""
    choices = {}
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            text, entries = choices.get(choice.index, ("", []))
            entries = entries + (choice.logprobs.content if choice.logprobs and choice.logprobs.content else [])
            choices[choice.index] = (text + (choice.delta.content or ""), entries)
    return choices


def test_logprobs_n_and_penalties_through_the_openai_client(client, base_model_store):
    tokenizer = AutoTokenizer.from_pretrained(base_model_store / MODEL / "float32")
    greedy = dict(model=MODEL, messages=QUESTION, temperature=0, max_tokens=16)

    plain = client.chat.completions.create(**greedy, logprobs=True, top_logprobs=3)
    settle()
    content = plain.choices[0].logprobs.content
    assert len(content) == plain.usage.completion_tokens and "".join(t.token for t in content) == \
        plain.choices[0].message.content
    for token in content:  # greedy: the token is the most likely one, its alternatives in order
        assert len(token.top_logprobs) == 3 and token.top_logprobs[0].token == token.token
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob) and token.logprob <= 0
        assert [t.logprob for t in token.top_logprobs] == sorted((t.logprob for t in token.top_logprobs), reverse=True)
        assert bytes(token.bytes).decode() == token.token
    stream = streamed(client, **greedy, logprobs=True, top_logprobs=3)
    settle()
    assert stream[0][0] == plain.choices[0].message.content
    assert [t.token for t in stream[0][1]] == [t.token for t in content]
    assert [t.logprob for t in stream[0][1]] == pytest.approx([t.logprob for t in content], abs=1e-4)

    several = dict(model=MODEL, messages=QUESTION, temperature=1.0, seed=7, max_tokens=10, n=3, logprobs=True)
    first = client.chat.completions.create(**several)
    settle()
    again = client.chat.completions.create(**several)
    settle()
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert len({c.message.content for c in first.choices}) > 1
    assert first.usage.completion_tokens == sum(len(c.logprobs.content) for c in first.choices)
    row = row_of(first)
    assert (row.prompt_tokens, row.completion_tokens) == (first.usage.prompt_tokens, first.usage.completion_tokens)
    billed = UsageEvent.objects.get(request=row, kind=UsageEvent.INFERENCE)
    shown = first.model_extra["vajra"]["cost"]
    assert billed.cost == Decimal(shown["usd"]) and billed.units == shown["units"] == 1  # one query, n choices
    assert billed.completion_tokens == first.usage.completion_tokens
    live = streamed(client, **several)
    settle()
    assert [live[i][0] for i in range(3)] == [c.message.content for c in first.choices]

    spelled = {b: c for c, b in BYTE_DECODER.items()}  # the vocabulary spells a token's bytes so
    first_token = tokenizer.convert_tokens_to_ids("".join(spelled[b] for b in content[0].bytes))
    banned = client.chat.completions.create(**greedy, logprobs=True, logit_bias={str(first_token): -100})
    settle()
    assert banned.choices[0].logprobs.content[0].token != content[0].token
    long = dict(model=MODEL, messages=[{"role": "user", "content": "Say hi."}], temperature=0, max_tokens=40)
    unpenalized = client.chat.completions.create(**long)
    settle()
    penalized = client.chat.completions.create(**long, frequency_penalty=2.0, presence_penalty=1.0,
                                               extra_body={"repetition_penalty": 1.5, "min_tokens": 30})
    settle()
    assert penalized.usage.completion_tokens >= 30
    assert penalized.choices[0].message.content != unpenalized.choices[0].message.content

    legacy = client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=6,
                                       logprobs=2)
    settle()
    logprobs = legacy.choices[0].logprobs
    assert len(logprobs.tokens) == legacy.usage.completion_tokens and "".join(logprobs.tokens) == \
        legacy.choices[0].text
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:k]) for k in range(len(logprobs.tokens))]
    assert all(len(top) <= 2 and max(top.values()) == pytest.approx(lp)
               for top, lp in zip(logprobs.top_logprobs, logprobs.token_logprobs, strict=True))

    before = InferenceRequest.objects.count()
    for bad, param in (({"n": 9}, "n"), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                       ({"logit_bias": {"49152": 5}}, "logit_bias"), ({"presence_penalty": -2.5}, "presence_penalty"),
                       ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty")):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(**greedy, **bad)
        assert refused.value.param == param
    assert InferenceRequest.objects.count() == before
