"""The reference for the sampling options: a plain decode loop (one request alone, batch 1, the model's own forward
with its KV cache) whose logits go through transformers' own logits processors (SequenceBiasLogitsProcessor,
RepetitionPenaltyLogitsProcessor, MinNewTokensLengthLogitsProcessor) and OpenAI's presence/frequency definition,
computed by hand, in vLLM's order; the token is then chosen as the engine chooses (argmax, or the row's seeded
generator). What engine tests compare each row of a mixed batch with."""

from collections import Counter
from dataclasses import dataclass, field

import torch
from transformers import (
    DynamicCache,
    MinNewTokensLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
)

from gpu_runtime.sampling import row_generator, sample_token


@dataclass
class Reference:
    tokens: list = field(default_factory=list)  # the generated ids, EOS left out
    logprobs: list = field(default_factory=list)  # per token: (its logprob, [(id, logprob)] most likely first)


def processed(scores, params, prompt_ids, generated, eos_ids):
    """``scores`` ([1, vocab] fp32, the model's) after the request's options, by transformers' processors."""
    ids = torch.tensor([list(prompt_ids) + list(generated)])
    if params.logit_bias:
        scores = SequenceBiasLogitsProcessor([[[t], float(b)] for t, b in params.logit_bias.items()])(ids, scores)
    if params.repetition_penalty != 1:
        scores = RepetitionPenaltyLogitsProcessor(float(params.repetition_penalty))(ids, scores)
    if params.presence_penalty or params.frequency_penalty:  # OpenAI's definition: no processor in transformers
        scores = scores.clone()
        for token, count in Counter(generated).items():
            scores[0, token] -= params.frequency_penalty * count + params.presence_penalty
    if params.min_tokens:
        scores = MinNewTokensLengthLogitsProcessor(len(prompt_ids), params.min_tokens, sorted(eos_ids))(ids, scores)
    return scores


def reference_run(model, prompt_ids, params, *, eos_ids, request_id, choice=0, top=None):
    """One choice of a request as the reference generates it, with each token's logprob and ``top`` alternatives
    (log-softmax of the processed logits)."""
    generator = row_generator(params, request_id, choice, "cpu")
    out, cache = Reference(), DynamicCache()
    step = torch.tensor([list(prompt_ids)])
    for _ in range(params.max_tokens):
        with torch.inference_mode():
            logits = model(input_ids=step, past_key_values=cache, use_cache=True).logits[:, -1].float()
        scores = processed(logits, params, prompt_ids, out.tokens, eos_ids)[0]
        token = sample_token(scores, params, generator)
        if token in eos_ids:
            break
        logprobs = torch.log_softmax(scores, dim=-1)
        values, ids = torch.topk(logprobs, top or 1)
        out.tokens.append(token)
        out.logprobs.append((float(logprobs[token]), list(zip(ids.tolist(), values.tolist(), strict=True))))
        step = torch.tensor([[token]])
    return out
