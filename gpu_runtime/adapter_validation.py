"""Validates a tenant's LoRA adapter before anything touches a device — and without torch.

An adapter is a PEFT LoRA checkpoint: ``adapter_config.json`` + ``adapter_model.safetensors``. Pickle
formats are refused unopened. The safetensors header is parsed by hand (it is JSON behind an 8-byte
length) and tensor data is read with numpy, so the web side can run the same checks on upload.

Every refusal is an ``AdapterRejected`` with a stable ``code`` and a message saying what to fix.
"""

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .adapter_config import (
    AdapterRejected,
    is_int,
    resolve_modules,
    shape_fields,
)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
DTYPES = {"F16": np.float16, "BF16": np.uint16, "F32": np.float32}  # BF16 read as raw bits
DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4}

MAX_LORA_RANK = 64
MAX_CONFIG_BYTES = 64 * 1024
MAX_HEADER_BYTES = 4 * 1024 * 1024
MAX_WEIGHTS_BYTES = 1024 * 1024 * 1024
MAX_TENSOR_DIMS = 8

_TENSOR_RE = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$"
)


@dataclass(frozen=True)
class BaseFacts:
    """What an adapter must fit: the base model's name, aliases and linear-layer shapes."""

    name: str
    aliases: tuple
    num_layers: int
    modules: dict  # module name -> (block, in_features, out_features)

    @classmethod
    def from_manifest(cls, manifest, aliases=()):
        arch = manifest["architecture"]
        hidden, inter = arch["hidden_size"], arch["intermediate_size"]
        head_dim = arch.get("head_dim") or hidden // arch["num_attention_heads"]
        q_out, kv_out = arch["num_attention_heads"] * head_dim, arch["num_key_value_heads"] * head_dim
        modules = {
            "q_proj": ("self_attn", hidden, q_out), "k_proj": ("self_attn", hidden, kv_out),
            "v_proj": ("self_attn", hidden, kv_out), "o_proj": ("self_attn", q_out, hidden),
            "gate_proj": ("mlp", hidden, inter), "up_proj": ("mlp", hidden, inter),
            "down_proj": ("mlp", inter, hidden),
        }
        return cls(manifest["name"], tuple(aliases), arch["num_hidden_layers"], modules)


# Room in a weights file besides the tensors' data: the 8-byte length and a JSON header of a few hundred bytes per
# tensor (name, dtype, shape, offsets), with metadata.
HEADER_BYTES_PER_TENSOR = 512
HEADER_BYTES_FIXED = 64 * 1024


def max_weights_bytes(base, max_rank=MAX_LORA_RANK):
    """The largest legal weights file for ``base``: every linear layer of every block at rank ``max_rank`` in F32
    (the widest dtype served), plus header room. An upload past it cannot be a valid adapter for this base."""
    per_layer = sum(fan_in + fan_out for _, fan_in, fan_out in base.modules.values())
    tensors = 2 * len(base.modules) * base.num_layers
    return (base.num_layers * per_layer * max_rank * DTYPE_BYTES["F32"] + tensors * HEADER_BYTES_PER_TENSOR
            + HEADER_BYTES_FIXED)


@dataclass
class AdapterFacts:
    """What validation learnt: enough to place the adapter into device slots and to train on from it."""

    rank: int  # the largest rank of its layers: what a device slot must hold (smaller ones are zero-padded)
    alpha: float  # the config's lora_alpha (alpha_pattern may give layers others)
    target_modules: list  # the linear layers' names it wraps, in any decoder layer
    dtype: str
    layers: list  # the decoder layers it wraps
    weights_bytes: int
    tensors: dict = field(repr=False, default_factory=dict)  # name -> (dtype, shape, (start, end))
    data_start: int = 0  # where the tensors' data begins in the weights file (8 + its header's length)
    modules: dict = field(repr=False, default_factory=dict)  # (layer, module) -> adapter_config.ModuleLoRA
    shape: dict = field(repr=False, default_factory=dict)  # adapter_config.shape_fields of its config

    @property
    def scaling(self):
        """(layer, module) -> the factor that layer's delta is scaled by (alpha / r, or alpha / sqrt(r))."""
        return {key: module.scaling for key, module in self.modules.items()}


def _read_config(directory):
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise AdapterRejected("missing_config", f"{CONFIG_FILE} is missing; save the adapter with PEFT's "
                              "save_pretrained(..., safe_serialization=True).")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterRejected("config_too_large", f"{CONFIG_FILE} is over {MAX_CONFIG_BYTES} bytes.")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterRejected("invalid_config", f"{CONFIG_FILE} is not valid JSON: {exc}.") from None
    except RecursionError:
        raise AdapterRejected("invalid_config", f"{CONFIG_FILE} is nested too deeply.") from None
    if not isinstance(config, dict):
        raise AdapterRejected("invalid_config", f"{CONFIG_FILE} must be a JSON object.")
    return config


def _check_tensor_entry(name, info):
    """(dtype, shape, (begin, end)) of one header entry, every field's type checked."""
    def bad(what):
        raise AdapterRejected("invalid_safetensors", f"tensor {name!r}: {what}.")

    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        bad("an entry must hold exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str):
        bad("dtype must be a string")
    if dtype not in DTYPES:
        raise AdapterRejected("bad_dtype", f"tensor {name!r} is {dtype[:20]!r}; adapters must be F16, BF16 or F32.")
    if not isinstance(shape, list) or len(shape) > MAX_TENSOR_DIMS or not all(is_int(d) and d >= 0 for d in shape):
        bad(f"shape must be a list of at most {MAX_TENSOR_DIMS} non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_int(o) for o in offsets):
        bad("data_offsets must be two integers")
    begin, end = offsets
    if not 0 <= begin <= end:
        bad("data_offsets must be [begin, end] with 0 <= begin <= end")
    needed = math.prod(shape) * DTYPE_BYTES[dtype]
    if end - begin != needed:
        bad(f"data_offsets span {end - begin} bytes; shape {shape} of {dtype} needs {needed}")
    return dtype, shape, (begin, end)


def _check_coverage(path, spans, data_len):
    """Tensor data is contiguous and covers the data section exactly: no gap, no overlap, nothing after."""
    at = 0
    for begin, end, name in sorted(spans):
        if begin != at:
            what = "overlaps the tensor before it" if begin < at else f"leaves {begin - at} unused bytes before it"
            raise AdapterRejected("invalid_safetensors", f"{path.name}: tensor {name!r} {what}.")
        at = end
    if at != data_len:
        what = "past the end of the file" if at > data_len else f"{data_len - at} bytes after the last tensor"
        raise AdapterRejected("invalid_safetensors", f"{path.name}: tensor data runs {what}; the file must hold "
                              "its tensors and nothing else.")


def read_safetensors_header(path, max_header_bytes=MAX_HEADER_BYTES, max_file_bytes=MAX_WEIGHTS_BYTES):
    """(header dict without __metadata__, data start offset). Checks every field's type and that the tensors'
    data tiles the file exactly; reads no tensor."""
    size = path.stat().st_size
    if size > max_file_bytes:
        raise AdapterRejected("weights_too_large", f"{path.name} is {size} bytes; the cap is {max_file_bytes}.")
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise AdapterRejected("invalid_safetensors", f"{path.name} is not a safetensors file (too short).")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > max_header_bytes or header_len > size - 8:
            raise AdapterRejected("header_too_large",
                                  f"{path.name}'s header claims {header_len} bytes; the cap is {max_header_bytes}.")
        try:
            header = json.loads(f.read(header_len))
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nesting too deep to parse
            raise AdapterRejected("invalid_safetensors", f"{path.name}'s header is not valid JSON.") from None
    if not isinstance(header, dict):
        raise AdapterRejected("invalid_safetensors", f"{path.name}'s header is not a JSON object.")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise AdapterRejected("invalid_safetensors", f"{path.name}'s __metadata__ must map strings to strings.")
    entries = {name: _check_tensor_entry(name, info) for name, info in header.items()}
    _check_coverage(path, [(begin, end, name) for name, (_, _, (begin, end)) in entries.items()],
                    size - 8 - header_len)
    return header, 8 + header_len


def _tensor_array(path, data_start, dtype, shape, offsets):
    start, end = offsets
    array = np.fromfile(path, dtype=DTYPES[dtype], count=(end - start) // DTYPE_BYTES[dtype],
                        offset=data_start + start)
    if dtype == "BF16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array.reshape(shape)


def validate_adapter(directory, base, *, max_rank=MAX_LORA_RANK, max_weights_bytes=MAX_WEIGHTS_BYTES,
                     check_values=True):
    """Checks an adapter directory against the base; returns AdapterFacts or raises AdapterRejected."""
    directory = Path(directory)
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise AdapterRejected("pickle_refused", f"{', '.join(pickled)}: pickle formats are never opened. "
                              "Save with safe_serialization=True to get adapter_model.safetensors.")
    config = _read_config(directory)
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterRejected("not_lora", f"peft_type is {config.get('peft_type')!r}; only LORA adapters are served.")
    claimed = config.get("base_model_name_or_path")
    if claimed is not None and not isinstance(claimed, str):
        raise AdapterRejected("invalid_config", "base_model_name_or_path must be a string.")
    # PEFT records the path the base was loaded from; a path inside our model store names the model too.
    if claimed and claimed not in (base.name, *base.aliases) and base.name not in Path(str(claimed)).parts:
        raise AdapterRejected("base_mismatch", f"The adapter was trained for {claimed!r}, not {base.name!r}; "
                              "train it on this base model.")
    modules = resolve_modules(config, base, max_rank=max_rank)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterRejected("missing_weights", f"{WEIGHTS_FILE} is missing.")
    header, data_start = read_safetensors_header(weights, max_file_bytes=max_weights_bytes)
    expected = {}
    for (layer, module), lora in modules.items():
        block, fan_in, fan_out = base.modules[module]
        prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
        expected[f"{prefix}.lora_A.weight"] = [lora.rank, fan_in]
        expected[f"{prefix}.lora_B.weight"] = [fan_out, lora.rank]
    extra = sorted(set(header) - set(expected))
    biases = [name for name in extra if name.endswith(".bias")]
    if biases:
        raise AdapterRejected("unsupported_option", f"{len(biases)} trained bias tensor(s), e.g. {biases[0]}: "
                              "trained biases (bias='all' / 'lora_only' on a base with biases) are not served.")
    if extra:
        raise AdapterRejected("unexpected_tensors", f"{len(extra)} tensor(s) the config does not describe, e.g. "
                              f"{extra[0]}.")
    missing = sorted(set(expected) - set(header))
    if missing:
        raise AdapterRejected("missing_tensors", f"{len(missing)} tensor(s) missing, e.g. {missing[0]}.")
    for name, shape in expected.items():
        if list(header[name]["shape"]) != shape:
            raise AdapterRejected("shape_mismatch", f"{name} has shape {header[name]['shape']}; {base.name} with "
                                  f"this config's ranks needs {shape}.")
    dtypes = {info["dtype"] for info in header.values()}
    if len(dtypes) > 1:
        raise AdapterRejected("mixed_dtypes", f"tensors mix dtypes {sorted(dtypes)}; save them in one dtype.")
    if check_values:
        for name, info in header.items():
            array = _tensor_array(weights, data_start, info["dtype"], info["shape"], info["data_offsets"])
            if not np.isfinite(array).all():
                raise AdapterRejected("non_finite", f"{name} contains NaN or Inf values.")
    shape = shape_fields(config)
    return AdapterFacts(rank=max(m.rank for m in modules.values()), alpha=float(shape["lora_alpha"]),
                        target_modules=sorted({module for _, module in modules}), dtype=dtypes.pop(),
                        layers=sorted({layer for layer, _ in modules}), weights_bytes=weights.stat().st_size,
                        tensors={n: (i["dtype"], i["shape"], tuple(i["data_offsets"])) for n, i in header.items()},
                        data_start=data_start, modules=modules, shape=shape)
