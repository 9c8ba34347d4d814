"""Per-row sampling: the row's logits options (``shape_logits``), then greedy at temperature 0, else temperature,
top-k and top-p with the row's generator (``sample_token``).

A row's options change its logits before it samples, in vLLM's order, over fp32 logits of the whole vocabulary:

    logit_bias          logits[id] += bias
    repetition_penalty  a token of the prompt or generated so far: logit / p when positive, logit * p otherwise
                        (transformers' RepetitionPenaltyLogitsProcessor)
    frequency_penalty   logits[id] -= frequency_penalty * (times id was generated)            (OpenAI's definition)
    presence_penalty    logits[id] -= presence_penalty when id was generated at least once
    min_tokens          every EOS id at -inf until min_tokens tokens were generated

A row with none of them skips the step altogether (``LogitsOptions.of`` is None), so rows without options cost what
they did. The processed logits are also what the row's logprobs are computed from (gpu_runtime.logprobs).

Every accepted temperature (0..2) is safe: probabilities are computed in fp32 from logits shifted so that the
largest is 0, so dividing by a tiny temperature gives 0 for the best token and a large negative number or -inf for
the others, never inf - inf; temperatures below ``GREEDY_BELOW`` are greedy outright. Huge finite logits sample
like any others, and top-k and top-p always keep the best token. Logits that are not finite (NaN, +inf, or nothing
above -inf) mean the row's forward pass broke (its adapter's weights, an overflow): ``SamplingError`` says so, and
the engine ends that row alone.
"""

import hashlib
import math

import torch

GREEDY_BELOW = 1e-5  # a temperature this small leaves no token but the best with any probability fp32 can hold


class SamplingError(Exception):
    """A row's next token cannot be chosen; ``code`` goes into the row's final error."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


class LogitsOptions:
    """One row's logits options and the state they need: its tokens so far, kept as vocabulary-sized tensors on the
    row's device (updated in place, one tiny write per token)."""

    def __init__(self, params, prompt_ids, *, vocab_size, eos_ids, device):
        self.presence, self.frequency = float(params.presence_penalty), float(params.frequency_penalty)
        self.repetition = float(params.repetition_penalty)
        self.min_tokens = params.min_tokens
        self.generated = 0
        self.bias_ids = self.bias = None
        if params.logit_bias:
            self.bias_ids = torch.tensor(list(params.logit_bias), device=device)
            self.bias = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32, device=device)
        self.counts = None  # times each token was generated (presence and frequency)
        if self.presence or self.frequency:
            self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
        self.seen = None  # tokens of the prompt or generated (repetition)
        if self.repetition != 1:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            if prompt_ids:
                self.seen[torch.tensor(prompt_ids, device=device)] = True
        self.eos = torch.tensor(sorted(eos_ids), device=device) if self.min_tokens and eos_ids else None

    @classmethod
    def of(cls, params, prompt_ids, *, vocab_size, eos_ids, device):
        """The row's options, or None for a row that has none (its logits are sampled as they come)."""
        if not params.shapes_logits:
            return None
        return cls(params, prompt_ids, vocab_size=vocab_size, eos_ids=eos_ids, device=device)

    def apply(self, logits):
        logits = logits.float().clone()
        if self.bias is not None:
            logits.index_add_(0, self.bias_ids, self.bias)
        if self.seen is not None:
            penalized = torch.where(logits > 0, logits / self.repetition, logits * self.repetition)
            logits = torch.where(self.seen, penalized, logits)
        if self.counts is not None:
            logits -= self.frequency * self.counts + self.presence * (self.counts > 0)
        if self.eos is not None and self.generated < self.min_tokens:
            logits[self.eos] = float("-inf")
        return logits

    def accept(self, token):
        """The row generated ``token``."""
        self.generated += 1
        if self.counts is not None:
            self.counts[token] += 1
        if self.seen is not None:
            self.seen[token] = True


def shape_logits(options, logits):
    """The row's logits as it samples them: its options applied (``options`` None: as they are)."""
    return logits if options is None else options.apply(logits)


def choice_seed(seed, choice):
    """The generator seed of choice ``choice`` of a request seeded ``seed``: the seed itself for choice 0 (a request
    of one choice samples as it always did), a 63-bit hash of (seed, choice) for the others, so each choice is
    reproducible and none repeats another's draws."""
    if choice == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{choice}".encode()).digest()[:8], "big") >> 1


def row_generator(params, request_id, choice, device):
    """The generator of a sampling row (None for a greedy one): seeded by the request's seed, or by its id."""
    if params.temperature <= 0:
        return None
    seed = params.seed if params.seed is not None else int.from_bytes(request_id.encode()[-8:], "big")
    generator = torch.Generator(device=device)
    generator.manual_seed(choice_seed(seed, choice))
    return generator


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
