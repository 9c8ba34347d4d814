"""The sampling options on the real SmolLM2 (fp32): one engine batch whose rows each use other options (one none)
gives every row, every choice, the tokens of the reference (tests/sampling_reference.py: transformers' logits
processors over a plain decode loop, batch 1), greedy and seeded, and logprobs equal to the log-softmax of the
model's logits from one plain forward pass over the prompt and the answer."""

import copy
import os
import uuid

import pytest
import redis
import torch

from gpu_runtime.engine import Engine
from gpu_runtime.generation import GenerationRequest, SamplingParams
from gpu_runtime.streams import StreamWriter
from tests.runtime_fixtures import hold_engine, streamed_choices
from tests.sampling_reference import reference_run

pytestmark = pytest.mark.slow

MAX_TOKENS = 24


def rows(tokenizer):
    the, paris = tokenizer.encode(" the")[0], tokenizer.encode(" Paris")[0]
    return [  # (prompt, sampling, top logprobs)
        ("The capital of France is", {}, 5),
        ("Once upon a time", {"repetition_penalty": 1.3}, None),
        ("List three colors:", {"presence_penalty": 0.8, "frequency_penalty": 0.6}, 2),
        ("The capital of France is", {"logit_bias": {str(the): -100, str(paris): 4.0}}, 1),
        ("Say yes.", {"min_tokens": 20, "temperature": 0.7, "seed": 5}, None),
        ("Write a haiku about rain.", {"n": 2, "temperature": 0.9, "top_p": 0.95, "seed": 3,
                                       "repetition_penalty": 1.1, "frequency_penalty": 0.3}, 3),
    ]


def test_each_row_of_a_mixed_batch_matches_transformers_processors(smollm2):
    base, reference, _, _ = smollm2
    model = copy.deepcopy(reference)
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    engine = Engine(base.__class__(**{**base.__dict__, "model": model}), None, StreamWriter(client), max_batch=8)
    engine.start()
    try:
        specs = rows(base.tokenizer)
        requests = [GenerationRequest(request_id=f"req_{uuid.uuid4().hex}", prompt=prompt,
                                      sampling=SamplingParams(max_tokens=MAX_TOKENS, logprobs=top, **sampling))
                    for prompt, sampling, top in specs]
        hold_engine(engine, 1.0)  # all of them join one prefill group, then share every decode step
        handles = [engine.submit(r) for r in requests]
        results = [h.wait(600) for h in handles]
    finally:
        engine.stop()
    assert engine.steps <= MAX_TOKENS
    answers = {}
    for (prompt, sampling, top), req, result in zip(specs, requests, results, strict=True):
        texts, logprobs, final = streamed_choices(client, req.request_id)
        prompt_ids = base.tokenizer(prompt).input_ids
        total = 0
        for choice in range(req.sampling.n):
            ref = reference_run(reference, prompt_ids, req.sampling, eos_ids=engine.eos_ids,
                                request_id=req.request_id, choice=choice, top=top)
            assert texts.get(choice, "") == base.tokenizer.decode(ref.tokens, skip_special_tokens=True), \
                (sampling, choice)
            total += len(ref.tokens)
            answers[req.request_id, choice] = ref.tokens
            if top is None:
                assert not logprobs.get(choice)
                continue
            got = logprobs[choice]
            assert len(got) == len(ref.tokens)
            for entry, (logprob, alternatives) in zip(got, ref.logprobs, strict=True):
                assert entry["logprob"] == pytest.approx(logprob, abs=2e-3)
                assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(
                    [v for _, v in alternatives[:top]], abs=2e-3)
            assert "".join(e["token"] for e in got).encode() == b"".join(bytes(e["bytes"]) for e in got)
        assert result["usage"] == {"prompt_tokens": len(prompt_ids), "completion_tokens": total, "cached_tokens": 0}
        assert final == result
        if "min_tokens" in sampling:
            assert total >= 20
    # the row without options: its logprobs are the model's own, from one plain forward pass over prompt + answer
    texts, logprobs, _ = streamed_choices(client, requests[0].request_id)
    prompt_ids, answer = base.tokenizer(specs[0][0]).input_ids, answers[requests[0].request_id, 0]
    assert len(answer) >= 8 and "".join(e["token"] for e in logprobs[0]) == texts[0]
    with torch.inference_mode():
        plain = torch.log_softmax(reference(torch.tensor([prompt_ids + answer])).logits[0].float(), dim=-1)
    for k, entry in enumerate(logprobs[0]):
        row = plain[len(prompt_ids) - 1 + k]
        assert entry["logprob"] == pytest.approx(float(row[answer[k]]), abs=2e-3)
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(torch.topk(row, 5).values.tolist(),
                                                                               abs=2e-3)
        assert entry["top_logprobs"][0]["token"] == entry["token"]  # greedy: the most likely token
