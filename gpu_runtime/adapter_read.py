"""A validated adapter's tensors from one read of its safetensors file, each value checked once on the way.

``validate_adapter`` has checked the file's structure (its header, that the tensors' data tiles the file exactly,
one dtype); its value scan is skipped on this path. Here the file is read once, every value is checked in one
pass over the data as raw bits (finite unless its exponent bits are all ones: NaN and Inf alike, in F32, F16 and
BF16), and the tensors are views of that one buffer. A NaN or an Inf is the same refusal as the scan's
(``non_finite``, naming the tensor).
"""

import struct

import numpy as np
import torch

from .adapter_validation import AdapterRejected

TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
EXPONENT_BITS = {"F32": (np.uint32, 0x7F800000), "F16": (np.uint16, 0x7C00), "BF16": (np.uint16, 0x7F80)}


def read_adapter_tensors(path, facts):
    """{tensor name: torch tensor} of the adapter file at ``path`` whose ``facts`` validate_adapter returned."""
    raw = bytearray(path.read_bytes())
    data_start = facts.data_start
    ends = [offsets[1] for _, _, offsets in facts.tensors.values()]
    if len(raw) != data_start + max(ends, default=0) or struct.unpack_from("<Q", raw)[0] != data_start - 8:
        raise AdapterRejected("invalid_weights", f"{path.name} changed after it was validated.")
    bits, exponent = EXPONENT_BITS[facts.dtype]
    data = np.frombuffer(raw, dtype=bits, offset=data_start)
    non_finite = (data & exponent) == exponent
    if non_finite.any():
        raise AdapterRejected("non_finite", f"{_first_non_finite(non_finite, facts, bits)} contains NaN or Inf "
                                            "values.")
    dtype = TORCH_DTYPES[facts.dtype]
    tensors = {}
    for name, (_, shape, (start, end)) in facts.tensors.items():
        count = (end - start) // dtype.itemsize
        flat = torch.frombuffer(raw, dtype=dtype, count=count, offset=data_start + start) if count else \
            torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(shape)
    return tensors


def _first_non_finite(non_finite, facts, bits):
    """The name of the first tensor (in file order) with a True in ``non_finite`` (one flag per value)."""
    size = np.dtype(bits).itemsize
    for name, (_, _, (start, end)) in sorted(facts.tensors.items(), key=lambda item: item[1][2][0]):
        if non_finite[start // size:end // size].any():
            return name
    return "a tensor"
