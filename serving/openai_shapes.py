"""The OpenAI API's answers and chunks, shaped as OpenAI's reference shapes them (serving/openai_api.py sends them).

A request of ``n`` choices answers ``choices[0..n-1]``, each with its own text, logprobs and finish_reason; its
chunks carry their choice's ``index``. Logprobs (gpu_runtime.logprobs says of which distribution) come as the runtime
sends them for chat, ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}], "refusal": null}``, and
in the legacy completions shape for completions, ``{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}],
"text_offset"}``, where ``text_offset`` is each token's offset in its choice's text (from 0: no echo).

A request that may answer with a tool call (serving/structured.py) answers it as ``message.tool_calls`` with
finish_reason ``tool_calls``, streamed as tool-call deltas.
"""

from dataclasses import dataclass

from .structured import read_answer


def completion_logprobs(entries, offset=0):
    """Token entries in the legacy completions shape; the first token's text starts at ``offset`` characters."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}


def usage_of(final):
    usage = final.get("usage") or {}
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0)}}


def choice_ends(final, n):
    """Each choice's finish_reason: from the final's ``choices`` for a request of several, else the request's."""
    ends = {c["index"]: c["finish_reason"] for c in final.get("choices") or ()}
    return [ends.get(i, final["finish_reason"]) for i in range(n)]


@dataclass(frozen=True)
class Envelope:
    """What every answer and chunk of one request repeats, in the shape of its API."""

    api: str  # chat or completions
    id: str
    created: int
    model: str
    vajra: dict
    n: int = 1
    logprobs: bool = False  # whether the request asked for them
    tool_calls: bool = False  # the answer may be a tool call (serving/structured.py reads it)

    def _base(self, stream):
        kind = ("chat.completion.chunk" if stream else "chat.completion") if self.api == "chat" else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def shaped_logprobs(self, entries, offset=0):
        """The logprobs field of a choice or chunk: None when the request asked for none."""
        if not self.logprobs:
            return None
        if self.api == "completions":
            return completion_logprobs(entries or [], offset)
        return {"content": entries or [], "refusal": None}

    def _choice(self, index, text, finish_reason, stream, *, role=False, logprobs=None, calls=None, delta=None):
        if self.api == "completions":
            return {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
        if not stream:
            message = {"role": "assistant", "content": text, "refusal": None}
            if calls:
                message["tool_calls"] = calls
            return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}
        if delta is None:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}

    def _whole(self, index, choice, reason):
        text, calls = choice.text, None
        if self.tool_calls:
            text, calls = read_answer(text)
            reason = "tool_calls" if calls and reason == "stop" else reason
        return self._choice(index, text, reason, False, logprobs=self.shaped_logprobs(choice.logprobs), calls=calls)

    def answer(self, choices, final, cost):
        """The whole answer: ``choices`` are serving.relay.Choice, in order."""
        ends = choice_ends(final, len(choices))
        return {**self._base(False), "choices": [self._whole(i, choice, ends[i]) for i, choice in enumerate(choices)],
                "usage": usage_of(final), "vajra": self.extension(final, cost)}

    def chunk(self, text=None, finish_reason=None, *, index=0, role=False, logprobs=None, include_usage=False,
              final=None, cost=None, delta=None):
        """A stream's chunk; ``delta``: a tool call's delta in place of text."""
        body = {**self._base(True), "choices": [self._choice(index, text, finish_reason, True, role=role,
                                                             logprobs=logprobs, delta=delta)]}
        if include_usage:
            body["usage"] = None  # as OpenAI: null on every chunk but the last
        if final is not None:
            body["vajra"] = self.extension(final, cost)
        return body

    def usage_chunk(self, final):
        return {**self._base(True), "choices": [], "usage": usage_of(final)}

    def extension(self, final, cost):
        """The ``vajra`` block of the answer's end: ``cost`` is what the request is billed (its ledger row)."""
        return {**self.vajra, "timings": final.get("timings"), "gpu_ms": final.get("gpu_ms"),
                **({"cost": cost} if cost is not None else {})}
