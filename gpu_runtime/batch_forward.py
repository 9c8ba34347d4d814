"""The engine's forward passes over its batch: the prefill of newly admitted rows and the decode step of every
running row, on the batch's one left-padded KV cache (batch_kv.py), each row with its own adapter slot (lora.py).

Each pass's device time (gpu_runtime.step_clock: the forward pass and its logits, CUDA events on a GPU) is added to
``busy_ms`` and returned, for the engine to attribute to the rows the pass served. What a pass does with tokens
(sampling, text, ends) is the engine's; here are tensors only."""

import torch

from .batch_kv import BatchKV
from .packed_linear import pack_linears
from .step_clock import StepClock


class BatchForward:
    def __init__(self, model, pool, device, *, pad_id, max_batch, prefix_cache=None):
        self.model = model
        self.pool = pool
        self.device = device
        self.pad_id = pad_id
        self.prefix_cache = prefix_cache
        # on a CPU, oneDNN on weights packed for the batch's shape (packed_linear.py): the same product, faster
        self.packed_linears = pack_linears(model, batch_hint=max_batch) if device.type == "cpu" else 0
        self.kv = BatchKV()  # the KV cache and mask of the engine's rows, row for row
        self.clock = StepClock(device)
        self.busy_ms = 0.0
        # an empty KV cache the model appends to: the runtime's own (kv_cache.py), or transformers' for its models
        self.new_cache = getattr(model, "new_cache", None) or _dynamic_cache

    def prefill(self, rows, cache, offset=0):
        """One forward pass over ``rows`` (each request's first choice), left-padded, from ``cache`` holding their
        first ``offset`` prompt tokens (a cached prefix; 0 and an empty cache otherwise). Stores the rows' new
        prefix blocks, then merges their KV into the batch's, each request's other choices with a copy of it.
        Returns (every choice's row in the order of the batch KV, their next-token logits in fp32, the pass's ms,
        each of ``rows``' tokens in the pass)."""
        lengths = [len(row.ids) - offset for row in rows]
        width = max(lengths)
        padded = [[self.pad_id] * (width - n) + row.ids[offset:] for row, n in zip(rows, lengths, strict=True)]
        ids = torch.tensor(padded, device=self.device)
        mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], device=self.device)
        if self.pool is not None:
            self.pool.set_rows([row.slot for row in rows])
        kwargs = {}
        if len(rows) > 1:  # left padding: each row's own positions (a single row needs neither)
            kwargs = {"attention_mask": mask, "position_ids": (mask.cumsum(dim=1) - 1).clamp(min=0)}
        started = self.clock.start()
        with torch.inference_mode():
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1, **kwargs)
        logits = out.logits[:, -1].float()
        elapsed = self._busy(started)
        if self.prefix_cache:  # new blocks only; a row prefilled from cached KV starts at 0, unpadded
            finite = torch.isfinite(logits).all(dim=-1).tolist()  # a broken row's KV is never reused
            for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
                if finite[i]:
                    self.prefix_cache.store(row.handle.request.tenant, row.key, row.ids, cache, row=i,
                                            start=0 if offset else width - n)
        choices = [choice for row in rows for choice in row.handle.rows]
        if len(choices) > len(rows):  # each choice's row gets its own copy of its request's KV and logits
            index = torch.tensor([i for i, row in enumerate(rows) for _ in row.handle.rows], device=self.device)
            cache.batch_select_indices(index)
            mask, logits = mask.index_select(0, index), logits.index_select(0, index)
        full = torch.cat([torch.ones(len(choices), offset, dtype=mask.dtype, device=self.device), mask], dim=1)
        self.kv.merge(cache, full)
        return choices, logits, elapsed, lengths

    def decode(self, rows):
        """One decode step of every running row (``rows``, in the order of the batch KV), each from its last token.
        Returns (their next-token logits in fp32, the step's ms)."""
        ids = torch.tensor([[row.last_token] for row in rows], device=self.device)
        positions, mask = self.kv.next_step()
        if self.pool is not None:
            self.pool.set_rows([row.slot for row in rows])
        started = self.clock.start()
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                             past_key_values=self.kv.cache, use_cache=True)
        self.kv.mask = mask
        logits = out.logits[:, -1].float()
        return logits, self._busy(started)

    def _busy(self, started):
        """The pass's device time since ``started`` (a ``self.clock`` mark), added to ``busy_ms``."""
        ms = self.clock.elapsed_ms(started)
        self.busy_ms += ms
        return ms


def _dynamic_cache():
    from transformers import DynamicCache

    return DynamicCache()
