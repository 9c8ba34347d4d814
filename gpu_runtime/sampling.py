"""Per-row sampling: greedy at temperature 0, else temperature, top-k and top-p with the row's generator.

Every accepted temperature (0..2) is safe: probabilities are computed in fp32 from logits shifted so that the
largest is 0, so dividing by a tiny temperature gives 0 for the best token and a large negative number or -inf for
the others, never inf - inf; temperatures below ``GREEDY_BELOW`` are greedy outright. Huge finite logits sample
like any others, and top-k and top-p always keep the best token. Logits that are not finite (NaN, +inf, or nothing
above -inf) mean the row's forward pass broke (its adapter's weights, an overflow): ``SamplingError`` says so, and
the engine ends that row alone.
"""

import math

import torch

GREEDY_BELOW = 1e-5  # a temperature this small leaves no token but the best with any probability fp32 can hold


class SamplingError(Exception):
    """A row's next token cannot be chosen; ``code`` goes into the row's final error."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


def sample_token(logits, params, generator=None):
    logits = logits.float()
    best, index = torch.max(logits, dim=-1)  # NaN anywhere comes out as the max
    best = float(best)
    if not math.isfinite(best):
        raise SamplingError("non_finite_logits",
                            f"the model's output for this request was not finite ({best}); its adapter's weights or "
                            "the activations they produce overflow")
    if params.temperature < GREEDY_BELOW:
        return int(index)
    logits = (logits - best) / params.temperature  # <= 0, the best token exactly 0: exp cannot overflow
    if params.top_k:
        k = min(params.top_k, logits.shape[-1])
        kth = torch.topk(logits, k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= params.top_p  # keep the token crossing p
        drop[0] = False  # and the best one always: a top_p below fp32's smallest number compares as 0
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
