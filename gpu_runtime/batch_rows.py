"""A request as the engine holds it: its Handle (what the waiting task sees), its Row in the running batch, and the
Final of a request that ended before it joined the batch."""

import threading
import time
from dataclasses import dataclass, field

import torch

from .contract import Final, Timings, Usage
from .detokenize import IncrementalText


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
    grammar: object = None  # its compiled grammar (gpu_runtime.grammar.RowGrammar), or None
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
    grammar: object = None  # a gpu_runtime.grammar.RowGrammar: what its tokens must follow; None: free text


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
