"""The sampling options per row, on the tiny Llama: a mixed batch whose rows use different options (and one none)
gives each row the tokens and logprobs of the reference (tests/sampling_reference.py: transformers' logits
processors over a plain decode loop), greedy and seeded; n choices share one prefill and sum their usage; the
options' state and bounds, and min_tokens holding stop strings back."""

import json
import math

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from gpu_runtime.contract import ContractError
from gpu_runtime.detokenize import IncrementalText
from gpu_runtime.generation import GenerationRequest, SamplingParams
from gpu_runtime.logprobs import BYTE_DECODER, TokenPieces
from gpu_runtime.sampling import LogitsOptions, choice_seed, shape_logits
from tests.runtime_fixtures import EOS, VOCAB, hold_engine, request, streamed_choices, tiny_tokenizer
from tests.sampling_reference import processed, reference_run

PROMPT = [5, 17, 33, 9, 5, 17]

ROWS = [  # (sampling, top logprobs asked): every row of one batch, 8 rows in all
    ({}, 3),  # no option: the model's own distribution
    ({"repetition_penalty": 1.8}, 2),
    ({"presence_penalty": 1.5, "frequency_penalty": 0.7, "temperature": 0.8, "seed": 11}, 1),
    ({"logit_bias": {"5": 6.0, "40": -100, "77": 3.5}}, None),
    ({"logit_bias": {str(EOS): 12.0}, "min_tokens": 6}, 0),  # EOS as soon as min_tokens lets it
    ({"n": 3, "temperature": 1.0, "seed": 7, "repetition_penalty": 1.3, "presence_penalty": -0.5}, 4),
]


def test_a_mixed_batch_gives_each_row_its_own_options(engine, adapters, redis_client):
    base, _ = adapters
    requests = [request(PROMPT, max_tokens=16, logprobs=top, **sampling) for sampling, top in ROWS]
    before, steps = engine.busy_ms, engine.steps
    hold_engine(engine, 0.5)  # everything submitted meanwhile joins one prefill group
    handles = [engine.submit(r) for r in requests]
    results = [h.wait(120) for h in handles]
    assert engine.steps - steps <= 17  # one batch: the rows shared their steps
    for (sampling, top), req, result in zip(ROWS, requests, results, strict=True):
        texts, logprobs, final = streamed_choices(redis_client, req.request_id)
        params = req.sampling
        lengths = []
        for choice in range(params.n):
            ref = reference_run(base, PROMPT, params, eos_ids={EOS}, request_id=req.request_id, choice=choice,
                                top=top)
            assert texts.get(choice, "").split() == [f"t{t}" for t in ref.tokens], (sampling, choice)
            lengths.append(len(ref.tokens))
            if top is None:
                assert logprobs.get(choice, []) == []
                continue
            assert len(logprobs[choice]) == len(ref.tokens)  # one entry per generated token, EOS none
            for entry, (logprob, alternatives) in zip(logprobs[choice], ref.logprobs, strict=True):
                assert entry["logprob"] == pytest.approx(logprob, abs=1e-4)
                assert [t["token"] for t in entry["top_logprobs"]] == [f"t{i}" for i, _ in alternatives[:top]]
                assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(
                    [v for _, v in alternatives[:top]], abs=1e-4)
                assert entry["bytes"] == list(entry["token"].encode())
        assert final == result
        assert final["usage"]["prompt_tokens"] == len(PROMPT)  # the prompt once, whatever n
        assert final["usage"]["completion_tokens"] == sum(lengths)
        if params.n > 1:
            assert [c["index"] for c in final["choices"]] == list(range(params.n))
            assert [c["completion_tokens"] for c in final["choices"]] == lengths
            assert len(set(texts.values())) > 1  # each choice sampled with its own generator
        else:
            assert "choices" not in final
    assert results[4]["usage"]["completion_tokens"] == 6 and results[4]["finish_reason"] == "stop"
    assert sum(r["gpu_ms"] for r in results) == pytest.approx(engine.busy_ms - before, rel=0.01)


def test_seeded_choices_are_reproducible(engine, redis_client):
    sampling = {"n": 3, "temperature": 1.0, "seed": 99, "max_tokens": 12}
    runs = []
    for _ in range(2):
        req = request([9, 9, 9], **sampling)
        engine.submit(req).wait(60)
        runs.append(streamed_choices(redis_client, req.request_id)[0])
    assert runs[0] == runs[1] and len(runs[0]) == 3
    assert [choice_seed(99, i) for i in range(3)][0] == 99 and len({choice_seed(99, i) for i in range(8)}) == 8


def test_a_request_with_more_choices_than_rows_runs_alone(engine, redis_client):
    engine.max_batch = 2
    req = request([4, 4], n=3, temperature=1.0, seed=1, max_tokens=5)
    result = engine.submit(req).wait(60)
    assert result["finish_reason"] in ("stop", "length") and len(result["choices"]) == 3


def test_a_bias_outside_the_vocabulary_fails_that_request_alone(engine):
    bad = engine.submit(request([1, 2], logit_bias={str(VOCAB): 1.0}))
    fine = engine.submit(request([1, 2], max_tokens=3, logit_bias={str(VOCAB - 1): 1.0}))
    error = bad.wait(30)["error"]
    assert error["code"] == "invalid_request" and str(VOCAB) in error["message"]
    assert fine.wait(30)["finish_reason"] in ("stop", "length")


def test_options_match_transformers_on_random_logits():
    torch.manual_seed(0)
    prompt, generated = [3, 3, 8, 50], [8, 9, 9, 9, 60]
    params = SamplingParams(repetition_penalty=1.7, presence_penalty=0.4, frequency_penalty=-0.3,
                            logit_bias={"7": 5.5, "9": -2}, min_tokens=9)
    options = LogitsOptions.of(params, prompt, vocab_size=VOCAB, eos_ids={EOS, 4}, device="cpu")
    for token in generated:
        options.accept(token)
    logits = torch.randn(VOCAB) * 4
    expected = processed(logits[None].clone(), params, prompt, generated, {EOS, 4})[0]
    assert torch.equal(torch.isinf(shape_logits(options, logits)), torch.isinf(expected))
    assert torch.allclose(shape_logits(options, logits), expected, atol=1e-6)
    # repetition alone is transformers' processor, token for token
    alone = LogitsOptions.of(SamplingParams(repetition_penalty=0.5), prompt, vocab_size=VOCAB, eos_ids={EOS},
                             device="cpu")
    assert torch.allclose(alone.apply(logits), RepetitionPenaltyLogitsProcessor(0.5)(
        torch.tensor([prompt]), logits[None].clone())[0])
    # a row without options is not processed at all
    assert LogitsOptions.of(SamplingParams(logprobs=5, n=2), prompt, vocab_size=VOCAB, eos_ids={EOS},
                            device="cpu") is None
    assert shape_logits(None, logits) is logits


@pytest.mark.parametrize("field, value", [
    ("n", 0), ("n", 9), ("n", True), ("logprobs", 21), ("logprobs", -1), ("presence_penalty", 2.5),
    ("frequency_penalty", -2.01), ("presence_penalty", math.nan), ("repetition_penalty", 0),
    ("repetition_penalty", 10.5), ("repetition_penalty", math.nan), ("min_tokens", 300), ("min_tokens", -1),
    ("logit_bias", {"x": 1}), ("logit_bias", {"-3": 1}), ("logit_bias", {"1": 101}), ("logit_bias", {"1": math.nan}),
    ("logit_bias", {str(i): 1 for i in range(301)}), ("logit_bias", {"9" * 5000: 1}), ("logit_bias", [1, 2]),
])
def test_the_runtime_refuses_options_out_of_bounds(field, value):
    with pytest.raises(ContractError, match=field):
        SamplingParams(max_tokens=256, **{field: value})


def test_the_options_travel_as_json():
    payload = {"request_id": "r1", "prompt": "t1", "sampling": {"n": 2, "logprobs": 3, "logit_bias": {"7": -1},
                                                               "min_tokens": 2, "repetition_penalty": 1.1}}
    request_ = GenerationRequest.from_json(payload)
    assert request_.sampling.logit_bias == {7: -1.0} and request_.sampling.shapes_logits
    again = GenerationRequest.from_json(json.loads(json.dumps(request_.to_json())))
    assert again == request_


def test_min_tokens_holds_stop_strings_back():
    tokenizer = tiny_tokenizer()
    text = IncrementalText(tokenizer, ["t7"], min_tokens=3)
    for token in (7, 8, 9):
        text.add(token)
        assert not text.stopped
    text.add(7)
    assert text.stopped and text.finish() == "" and text.emitted == "t7 t8 t9 "
    plain = IncrementalText(tokenizer, ["t7"])
    plain.add(7)
    assert plain.stopped


def test_token_pieces_are_the_tokens_bytes():
    assert len(BYTE_DECODER) == 256 and sorted(BYTE_DECODER.values()) == list(range(256))
    pieces = TokenPieces(tiny_tokenizer())
    assert pieces(17) == ("t17", list(b"t17"))
