"""A request as the engine holds it: its Handle (what the waiting task sees), its Rows in the running batch (one per
choice: ``sampling.n``), its Final once every row ended, and the Final of a request that ended before it joined the
batch."""

import threading
import time
from dataclasses import dataclass, field

import torch

from .contract import OMITTED, Final, FinalError, Timings, Usage
from .detokenize import IncrementalText
from .tool_prompt import prompt_messages


class RequestError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Handle:
    """A submitted request as the engine and the waiting task see it."""

    request: object
    submitted: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None
    adapter_future: object = None
    host_ready: float | None = None  # when its adapter was in host RAM (at once when it already was)
    slot_wait_from: float | None = None  # when it first found no free slot for its adapter
    adapter_ready_ms: float = 0.0  # waiting for its adapter alone (host RAM, a free slot, the copy into it)
    admitted: float | None = None
    training_mark: int = 0  # the engine's training micro-step count when the request arrived
    training_waits: int | None = None  # micro-steps that ran between its arrival and its admission
    rows: list = field(default_factory=list, repr=False)  # its choices' rows, choice i at i, once admitted
    grammars: list | None = None  # its compiled grammar per choice (gpu_runtime.grammar.RowGrammar), or None
    grammar_error: str | None = None  # why its grammar could not be compiled: it is refused at admission

    def wait(self, timeout=None):
        self.done.wait(timeout)
        return self.result


@dataclass
class Row:
    handle: Handle
    key: tuple | None
    slot: int
    prompt_tokens: int
    text: IncrementalText
    generator: torch.Generator | None
    last_token: int = 0
    completion_tokens: int = 0
    gpu_ms: float = 0.0
    cached_tokens: int = 0
    first_token: float | None = None
    finish_reason: str | None = None
    error: dict | None = None
    ids: list = field(default_factory=list, repr=False)  # the prompt's token ids
    choice: int = 0  # which of its request's choices this row generates
    options: object = None  # its gpu_runtime.sampling.LogitsOptions, None without any
    logprobs: list | None = None  # entries of its tokens not sent yet (a request that asked for logprobs)
    ended: bool = False  # out of the batch, its last text sent
    grammar: object = None  # a gpu_runtime.grammar.RowGrammar: what its tokens must follow; None: free text


def prompt_ids(request, tokenizer, *, max_context, vocab_size):
    """The request's prompt as token ids (its messages through the chat template), or a RequestError for a request
    this node cannot run: past the context, or a logit_bias naming a token outside the vocabulary."""
    if request.messages:
        messages, tools = prompt_messages(request.messages, request.tools, tokenizer.chat_template)
        ids = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, return_dict=False,
                                            tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) else ids
    else:
        ids = tokenizer(request.prompt).input_ids
    if len(ids) + request.sampling.max_tokens > max_context:
        raise RequestError("context_length_exceeded",
                           f"prompt ({len(ids)} tokens) + max_tokens ({request.sampling.max_tokens}) exceeds "
                           f"the context of {max_context} tokens; shorten the prompt or lower max_tokens")
    outside = next((t for t in request.sampling.logit_bias if t >= vocab_size), None)
    if outside is not None:
        raise RequestError("invalid_request", f"logit_bias: token {outside} is not in the vocabulary of this base "
                                              f"model ({vocab_size} tokens)")
    return list(ids)


def request_final(handle, now):
    """The Final of a request whose rows all ended: the prompt counted once, every choice's tokens and GPU-ms, the
    first error (or cancel) of any choice, and with several choices each one's end."""
    rows = handle.rows
    first = min((row.first_token for row in rows if row.first_token is not None), default=None)
    errors = [row for row in rows if row.finish_reason == "error"]
    if errors:
        reason, error = "error", FinalError(**errors[0].error)
    elif any(row.finish_reason == "cancelled" for row in rows):
        reason, error = "cancelled", None
    else:
        reason, error = ("length" if any(row.finish_reason == "length" for row in rows) else "stop"), None
    lead = rows[0]
    choices = [{"index": row.choice, "finish_reason": row.finish_reason, "completion_tokens": row.completion_tokens}
               for row in rows] if len(rows) > 1 else OMITTED
    return Final(
        reason,
        usage=Usage(lead.prompt_tokens, sum(row.completion_tokens for row in rows), cached_tokens=lead.cached_tokens),
        timings=Timings(
            queued_ms=elapsed_ms(handle.submitted, handle.admitted or handle.submitted),
            adapter_ready_ms=handle.adapter_ready_ms,
            first_token_ms=elapsed_ms(handle.submitted, first) if first else None,
            total_ms=elapsed_ms(handle.submitted, now),
        ),
        gpu_ms=round(sum(row.gpu_ms for row in rows), 3),
        error=error,
        choices=choices,
    )


def unadmitted_final(submitted, reason, error=None):
    """The Final of a request that ended before it joined the batch (``submitted``: its perf_counter arrival): no
    prompt processed, no token, 0 GPU-ms."""
    now = time.perf_counter()
    return Final(reason, usage=Usage(0, 0),
                 timings=Timings(queued_ms=elapsed_ms(submitted, now), adapter_ready_ms=0.0, first_token_ms=None,
                                 total_ms=elapsed_ms(submitted, now)),
                 gpu_ms=0.0, error=error)


def elapsed_ms(start, end):
    return round((end - start) * 1000, 3)
