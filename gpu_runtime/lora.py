"""Slot-based multi-LoRA layers: the base layer runs once per batch, each row adds its adapter's delta.

Every target linear layer of the base model is wrapped by ``SlotLoRALinear``. Adapter weights live in
preallocated per-layer slot buffers, one set per rank bucket (vLLM's LoRA slots, S-LoRA's unified
pool): bucket ``r`` holds ``A[slots, r, in]`` and ``B[slots, out, r]``. An adapter of rank 8 goes into the
smallest bucket that fits, zero-padded, so making it ready is a copy into a free slot, not building
modules. Per step the engine sets the batch's row -> slot map once (``SlotPool.set_rows``); each layer
then gathers its slots' A/B and adds ``scale * (x A^T) B^T`` to its rows with two ``bmm`` per bucket.
Slot id 0 means "no adapter" (base-only rows). A decode step's batch keeps its rows and slots from one step to
the next until a row ends or joins: the groups stay the same objects then, and each layer keeps the A/B it
gathered for them (dropped whenever the groups change or a slot is written, cleared or moved), up to
``GATHER_BUDGET_BYTES`` over all layers (a large model's layers beyond it gather per step, as without keeping).
A group that is the whole batch in order (every row with an adapter of one bucket) adds its delta without
selecting and scattering rows.

An adapter's layers may differ in rank (PEFT's rank_pattern: each is zero-padded to the bucket's rank, which
is exact) and in scaling (alpha_pattern, rsLoRA with per-layer ranks): a slot keeps one scale, the one most of
its layers share, and a layer with another one has the ratio folded into its B when it is copied in.

Training uses the same wrappers: while the engine runs a training micro-step, ``SlotPool.trainable`` holds the
job's trainable A/B pairs (gpu_runtime.trainer.TrainableLoRA) and every row gets their delta, with autograd,
on the same frozen base weights (no second copy of the base). Between micro-steps it is None again.
"""

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from .adapter_validation import BaseFacts

# Slots hold adapters in fp32 and the delta is computed and added in fp32 whatever the model's dtype, as PEFT
# keeps a bf16 / fp16 model's adapters in fp32 (autocast_adapter_dtype): a bf16 model's output then differs from
# PEFT's by the base layers' rounding alone (bf16 slots would add the rounding of the weights and of x A^T).
SLOT_DTYPE = torch.float32
GATHER_BUDGET_BYTES = 256 << 20  # gathered A/B the layers may keep between steps, all layers together


@dataclass(frozen=True)
class RowGroup:
    """Rows of the batch whose adapters sit in one rank bucket."""

    rank: int
    modules: frozenset  # module names any of these rows' adapters target (others are skipped)
    rows: torch.Tensor  # row indices in the batch
    slots: torch.Tensor  # local slot index in the bucket, one per row
    scaling: torch.Tensor  # each row's slot scale in fp32, shaped for broadcasting [rows, 1, 1]
    whole: bool  # the rows are the whole batch, in order (no row selection needed)


class SlotLoRALinear(nn.Module):
    def __init__(self, base, pool, name):
        super().__init__()
        self.base = base
        self.pool = pool
        self.name = name  # (layer index, module name)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.A = {}
        self.B = {}
        self._gathered = {}  # rank -> (group, pool version, A of its slots, B of its slots)

    def allocate(self, rank, slots, dtype, device):
        self.A[rank] = torch.zeros(slots, rank, self.in_features, dtype=dtype, device=device)
        self.B[rank] = torch.zeros(slots, self.out_features, rank, dtype=dtype, device=device)

    def forward(self, x):
        out = self.base(x)
        train = self.pool.trainable
        if train is not None:
            pair = train.pairs.get(self.name)
            if pair is not None:
                A, B = pair
                h = train.dropout(x.to(A.dtype))
                out = out + ((h @ A.t()) @ B.t() * train.scaling[self.name]).to(out.dtype)
        groups = self.pool.groups
        if not groups:
            return out
        for group in groups:
            A = self.A.get(group.rank)
            if A is None or self.name[1] not in group.modules:
                continue
            a, b = self._weights(group, A)
            xs = x if group.whole else x.index_select(0, group.rows)
            delta = torch.bmm(torch.bmm(xs.to(SLOT_DTYPE), a), b).mul_(group.scaling)
            # The rows' sum in fp32, rounded once to the model's dtype (each row is in one group): an in-place add
            # of the fp32 delta computes in fp32 and rounds once as it stores into the output.
            if group.whole:
                out.add_(delta)
            else:
                out.index_copy_(0, group.rows, out.index_select(0, group.rows).add_(delta))
        return out

    def _weights(self, group, A):
        """The group's slots' A^T [rows, in, r] and B^T [rows, r, out], gathered once per batch composition while
        the pool's budget for kept gathers lasts."""
        kept = self._gathered.get(group.rank)
        if kept is not None and kept[0] is group and kept[1] == self.pool.version:
            return kept[2], kept[3]
        a = A.index_select(0, group.slots).transpose(1, 2)
        b = self.B[group.rank].index_select(0, group.slots).transpose(1, 2)
        if self.pool.may_keep(a.numel() * a.element_size() + b.numel() * b.element_size()):
            self._gathered[group.rank] = (group, self.pool.version, a, b)
        return a, b


class SlotPool:
    """The device slots of one model: which adapter is in which slot, and the buffers behind them.

    ``buckets`` maps a rank to its number of slots, e.g. {8: 32, 16: 16, 64: 4}. Slot ids are global
    (1..total); id 0 is "no adapter".
    """

    def __init__(self, model, base_facts: BaseFacts, buckets, target_modules=None):
        self.buckets = dict(sorted(buckets.items()))
        self.base_facts = base_facts
        param = next(model.parameters())
        self.dtype, self.device = SLOT_DTYPE, param.device
        self.groups = []
        self._built = None  # (row -> slot ids, version, groups) of the last set_rows
        self._kept_bytes = 0  # gathered A/B the layers keep for the current groups (SlotLoRALinear._weights)
        self.version = 0  # bumped by every slot write, clear and move: layers regather their A/B then
        self.trainable = None  # a training job's A/B pairs during its micro-step (gpu_runtime.trainer)
        self.layers = {}  # (layer, module) -> SlotLoRALinear
        self.slot_modules = {}  # global slot id -> module names its adapter targets
        self.slot_rank = {}  # global slot id -> the rank of the adapter in it (<= its bucket's rank)
        self._slot_of = {}  # global slot id -> (rank, local index)
        next_id = 1
        for rank, count in self.buckets.items():
            for local in range(count):
                self._slot_of[next_id] = (rank, local)
                next_id += 1
        self.scaling = torch.zeros(next_id, dtype=torch.float32, device=self.device)
        self._wrap(model, target_modules or list(base_facts.modules))

    def _wrap(self, model, target_modules):
        for index, layer in enumerate(model.model.layers):
            for module in target_modules:
                block_name = self.base_facts.modules[module][0]
                block = getattr(layer, block_name)
                base = getattr(block, module)
                wrapper = SlotLoRALinear(base, self, (index, module))
                setattr(block, module, wrapper)
                self.layers[(index, module)] = wrapper

    @property
    def capacity(self):
        return len(self._slot_of)

    def slots_for_rank(self, rank):
        """Global slot ids of the smallest bucket that fits this rank (larger buckets as fallback)."""
        return [sid for sid, (r, _) in self._slot_of.items() if r >= rank]

    def bucket_rank(self, slot_id):
        return self._slot_of[slot_id][0]

    def allocated_bytes(self):
        return sum(t.numel() * t.element_size() for w in self.layers.values() for d in (w.A, w.B)
                   for t in d.values())

    @torch.no_grad()
    def write(self, slot_id, weights, scaling, non_blocking=False):
        """Copies an adapter into a slot. ``weights`` maps (layer, module) -> (A [r, in], B [out, r]) host
        tensors; modules the adapter does not target are zeroed. ``scaling`` is one factor for every layer or
        a mapping (layer, module) -> factor. Buffers of a (bucket, module) pair are allocated the first time
        an adapter targets that module, so q/v-only adapters cost q/v memory."""
        self.version += 1
        rank, local = self._slot_of[slot_id]
        too_big = max((a.shape[0] for a, _ in weights.values()), default=0)
        if too_big > rank:
            raise ValueError(f"an adapter of rank {too_big} does not fit slot {slot_id} (bucket rank {rank})")
        layer_scaling = scaling if isinstance(scaling, dict) else dict.fromkeys(weights, float(scaling))
        scaling = Counter(layer_scaling[key] for key in weights).most_common(1)[0][0] if weights else 0.0
        for key, wrapper in self.layers.items():
            pair = weights.get(key)
            if rank not in wrapper.A:
                if pair is None:
                    continue
                wrapper.allocate(rank, self.buckets[rank], self.dtype, self.device)
            A_slot, B_slot = wrapper.A[rank][local], wrapper.B[rank][local]
            if pair is None:
                A_slot.zero_()
                B_slot.zero_()
                continue
            A, B = pair
            r = A.shape[0]
            A_slot[:r].copy_(A, non_blocking=non_blocking)
            B_slot[:, :r].copy_(B, non_blocking=non_blocking)
            if r < rank:  # a smaller adapter in a bigger bucket: zero padding keeps the math exact
                A_slot[r:].zero_()
                B_slot[:, r:].zero_()
            if layer_scaling[key] != scaling:  # this layer's own scale, relative to the slot's
                B_slot.mul_(layer_scaling[key] / scaling)
        self.scaling[slot_id] = scaling
        self.slot_modules[slot_id] = frozenset(module for _, module in weights)
        self.slot_rank[slot_id] = too_big

    @torch.no_grad()
    def clear(self, slot_id):
        self.version += 1
        rank, local = self._slot_of[slot_id]
        for wrapper in self.layers.values():
            if rank in wrapper.A:
                wrapper.A[rank][local].zero_()
                wrapper.B[rank][local].zero_()
        self.scaling[slot_id] = 0.0
        self.slot_modules.pop(slot_id, None)
        self.slot_rank.pop(slot_id, None)

    @torch.no_grad()
    def move(self, source, target):
        """Copies an adapter from one slot to another on the device (compaction), then clears the source."""
        self.version += 1
        rank = self.slot_rank[source]
        (src_rank, src_local), (dst_rank, dst_local) = self._slot_of[source], self._slot_of[target]
        if rank > dst_rank:
            raise ValueError(f"an adapter of rank {rank} does not fit slot {target} (bucket rank {dst_rank})")
        width = min(src_rank, dst_rank)
        for wrapper in self.layers.values():
            if src_rank not in wrapper.A:
                continue
            if dst_rank not in wrapper.A:
                wrapper.allocate(dst_rank, self.buckets[dst_rank], self.dtype, self.device)
            A_dst, B_dst = wrapper.A[dst_rank][dst_local], wrapper.B[dst_rank][dst_local]
            A_dst.zero_()
            B_dst.zero_()
            A_dst[:width].copy_(wrapper.A[src_rank][src_local][:width])
            B_dst[:, :width].copy_(wrapper.B[src_rank][src_local][:, :width])
        self.scaling[target] = self.scaling[source]
        self.slot_modules[target] = self.slot_modules[source]
        self.slot_rank[target] = rank
        self.clear(source)

    def may_keep(self, nbytes):
        """Whether a layer may keep ``nbytes`` more of gathered A/B for the current groups (counted if so)."""
        if self._kept_bytes + nbytes > GATHER_BUDGET_BYTES:
            return False
        self._kept_bytes += nbytes
        return True

    def set_rows(self, row_slots):
        """The batch's row -> global slot id (0 = base only), set once per forward pass. The same row -> slot ids
        as the last call's, with no slot written since, keep the same groups (and the layers' gathered A/B)."""
        row_slots = tuple(row_slots)
        if self._built is not None and self._built[:2] == (row_slots, self.version) and self.groups is self._built[2]:
            return
        for wrapper in self.layers.values():  # what they kept is for the old groups: free it now
            wrapper._gathered.clear()
        self._kept_bytes = 0
        groups = []
        by_rank = {}
        for row, slot_id in enumerate(row_slots):
            if slot_id:
                rank, local = self._slot_of[slot_id]
                by_rank.setdefault(rank, []).append((row, local, slot_id))
        for rank, members in by_rank.items():
            rows = torch.tensor([m[0] for m in members], device=self.device)
            slots = torch.tensor([m[1] for m in members], device=self.device)
            ids = torch.tensor([m[2] for m in members], device=self.device)
            modules = frozenset().union(*(self.slot_modules.get(m[2], ()) for m in members))
            scaling = self.scaling.index_select(0, ids)[:, None, None]
            whole = len(members) == len(row_slots)  # every row, in order (members are in row order)
            groups.append(RowGroup(rank, modules, rows, slots, scaling, whole))
        self.groups = groups
        self._built = (row_slots, self.version, groups)


def adapter_weights_from_tensors(tensors, facts):
    """PEFT tensor names -> {(layer, module): (A, B)} for ``SlotPool.write``, one pair per layer in
    ``facts.modules`` (the layers the adapter wraps)."""
    weights = {}
    for layer, module in facts.modules:
        block = "mlp" if module in {"gate_proj", "up_proj", "down_proj"} else "self_attn"
        prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
        weights[(layer, module)] = (tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"])
    return weights
