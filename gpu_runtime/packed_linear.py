"""The base model's linear layers on oneDNN with their weights packed once, for inference on a CPU.

``torch.nn.functional.linear`` hands a CPU matmul to MKL's gemm with the weight as stored; oneDNN's linear on a
weight packed ahead of time for the batch's shape does the same product faster at every batch size measured here
(1 to 640 rows). At a 32-row decode step on SmolLM2's shapes it takes 39-63 % of MKL's time in fp32 (the 49,152-row
head 28 -> 11 ms, the 576 x 1536 projections 0.48 -> 0.29 ms) and 73-77 % in bf16. The result is the same product
summed in another order: it differs from MKL's by float rounding (~1e-6 relative in fp32).

``pack_linears`` turns every ``nn.Linear`` of a model into a ``PackedLinear`` in place (same module, same weight
and state dict) and packs its weight. A deep copy of the model drops the packed copy (an opaque oneDNN tensor) and
packs its own at its first forward. The weight itself stays: autograd (a training micro-step, whose inputs carry
gradients) runs the plain linear on it, and the packed copy is only read under no-grad. The base is frozen: a weight
changed in place after packing would leave a stale packed copy.
The packed copies cost the linear weights' size once more in RAM (SmolLM2: ~270 MB in bf16, ~540 MB in fp32; the
weights themselves stay pages of the mapped safetensors file).
"""

import torch
from torch import nn

PACKED_DTYPES = (torch.float32, torch.bfloat16)


def packing_available(dtype):
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` whose no-grad forward runs oneDNN on a packed copy of its weight."""

    packed = None
    batch_hint = 8

    def forward(self, x):
        if torch.is_grad_enabled() or x.dtype != self.weight.dtype or x.device.type != "cpu":
            return super().forward(x)
        if self.packed is None:
            self.pack()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [None], "")

    def pack(self):
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), self.batch_hint)

    def __getstate__(self):  # a copy packs its own weight (an opaque oneDNN tensor cannot be copied)
        state = super().__getstate__().copy()
        state.pop("packed", None)
        return state


def pack_linears(model, batch_hint=8):
    """Makes every CPU ``nn.Linear`` of ``model`` in a packable dtype a ``PackedLinear`` and packs its weight now
    (~0.2 s for SmolLM2 here: a node pays it before it is ready, not its first request); returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is not nn.Linear or module.weight.device.type != "cpu":
            continue
        if module.weight.dtype not in PACKED_DTYPES or not packing_available(module.weight.dtype):
            continue
        module.__class__ = PackedLinear
        module.batch_hint = batch_hint
        module.pack()
        count += 1
    return count
