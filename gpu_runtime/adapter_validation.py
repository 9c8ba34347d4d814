"""Validates a tenant's LoRA adapter before anything touches a device — and without torch.

An adapter is a PEFT LoRA checkpoint: ``adapter_config.json`` + ``adapter_model.safetensors``. Pickle
formats are refused unopened. The safetensors header is parsed by hand (it is JSON behind an 8-byte
length) and tensor data is read with numpy, so the web side can run the same checks on upload.

Every refusal is an ``AdapterRejected`` with a stable ``code`` and a message saying what to fix.
"""

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
DTYPES = {"F16": np.float16, "BF16": np.uint16, "F32": np.float32}  # BF16 read as raw bits
DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4}

MAX_LORA_RANK = 64
MAX_CONFIG_BYTES = 64 * 1024
MAX_HEADER_BYTES = 4 * 1024 * 1024
MAX_WEIGHTS_BYTES = 1024 * 1024 * 1024

_TENSOR_RE = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$"
)


class AdapterRejected(ValueError):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self):
        return {"code": self.code, "message": self.message}


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


@dataclass
class AdapterFacts:
    """What validation learnt: enough to place the adapter into device slots."""

    rank: int
    alpha: float
    target_modules: list
    dtype: str
    layers: list
    weights_bytes: int
    tensors: dict = field(repr=False, default_factory=dict)  # name -> (dtype, shape, (start, end))

    @property
    def scaling(self):
        return self.alpha / self.rank


def _read_config(directory):
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise AdapterRejected("missing_config", f"{CONFIG_FILE} is missing; save the adapter with PEFT's "
                              "save_pretrained(..., safe_serialization=True).")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterRejected("config_too_large", f"{CONFIG_FILE} is over {MAX_CONFIG_BYTES} bytes.")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise AdapterRejected("invalid_config", f"{CONFIG_FILE} is not valid JSON: {exc}.") from None
    if not isinstance(config, dict):
        raise AdapterRejected("invalid_config", f"{CONFIG_FILE} must be a JSON object.")
    return config


def read_safetensors_header(path, max_header_bytes=MAX_HEADER_BYTES, max_file_bytes=MAX_WEIGHTS_BYTES):
    """(header dict without __metadata__, data start offset). Checks sizes and offsets, reads no tensor."""
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
        except (ValueError, UnicodeDecodeError):
            raise AdapterRejected("invalid_safetensors", f"{path.name}'s header is not valid JSON.") from None
    if not isinstance(header, dict):
        raise AdapterRejected("invalid_safetensors", f"{path.name}'s header is not a JSON object.")
    header.pop("__metadata__", None)
    data_len = size - 8 - header_len
    for name, info in header.items():
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise AdapterRejected("invalid_safetensors", f"tensor {name} has a malformed header entry.") from None
        if dtype not in DTYPES:
            raise AdapterRejected("bad_dtype", f"tensor {name} is {dtype}; adapters must be F16, BF16 or F32.")
        count = int(np.prod(shape)) if shape else 1
        if not (0 <= start <= end <= data_len) or end - start != count * DTYPE_BYTES[dtype]:
            raise AdapterRejected("invalid_safetensors", f"tensor {name}'s data offsets do not fit the file.")
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
    # PEFT records the path the base was loaded from; a path inside our model store names the model too.
    if claimed and claimed not in (base.name, *base.aliases) and base.name not in Path(str(claimed)).parts:
        raise AdapterRejected("base_mismatch", f"The adapter was trained for {claimed!r}, not {base.name!r}; "
                              "train it on this base model.")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= max_rank:
        raise AdapterRejected("bad_rank", f"rank r={rank!r} is outside 1..{max_rank}.")
    alpha = config.get("lora_alpha", rank)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise AdapterRejected("bad_alpha", f"lora_alpha={alpha!r} must be a positive number.")
    if config.get("use_dora") or config.get("use_rslora") or config.get("modules_to_save"):
        raise AdapterRejected("unsupported_option",
                              "DoRA, rsLoRA and modules_to_save are not supported; plain LoRA only.")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if not targets or not all(isinstance(t, str) for t in targets):
        raise AdapterRejected("bad_target_modules", "target_modules must name the base's linear layers.")
    unknown = sorted(set(targets) - set(base.modules))
    if unknown:
        raise AdapterRejected("unknown_target_modules", f"target modules {', '.join(unknown)} do not exist in "
                              f"{base.name}; choose from {', '.join(base.modules)}.")

    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterRejected("missing_weights", f"{WEIGHTS_FILE} is missing.")
    header, data_start = read_safetensors_header(weights, max_file_bytes=max_weights_bytes)
    layers = config.get("layers_to_transform")
    layers = list(range(base.num_layers)) if layers is None else ([layers] if isinstance(layers, int) else layers)
    if not all(isinstance(i, int) and 0 <= i < base.num_layers for i in layers):
        raise AdapterRejected("bad_layers", f"layers_to_transform must be within 0..{base.num_layers - 1}.")
    expected = {}
    for layer in layers:
        for module in targets:
            block, fan_in, fan_out = base.modules[module]
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            expected[f"{prefix}.lora_A.weight"] = [rank, fan_in]
            expected[f"{prefix}.lora_B.weight"] = [fan_out, rank]
    extra = sorted(set(header) - set(expected))
    if extra:
        raise AdapterRejected("unexpected_tensors", f"{len(extra)} tensor(s) the config does not describe, e.g. "
                              f"{extra[0]}.")
    missing = sorted(set(expected) - set(header))
    if missing:
        raise AdapterRejected("missing_tensors", f"{len(missing)} tensor(s) missing, e.g. {missing[0]}.")
    dtypes = {info["dtype"] for info in header.values()}
    for name, shape in expected.items():
        if list(header[name]["shape"]) != shape:
            raise AdapterRejected("shape_mismatch", f"{name} has shape {header[name]['shape']}; {base.name} with "
                                  f"r={rank} needs {shape}.")
    if len(dtypes) > 1:
        raise AdapterRejected("mixed_dtypes", f"tensors mix dtypes {sorted(dtypes)}; save them in one dtype.")
    if check_values:
        for name, info in header.items():
            array = _tensor_array(weights, data_start, info["dtype"], info["shape"], info["data_offsets"])
            if not np.isfinite(array).all():
                raise AdapterRejected("non_finite", f"{name} contains NaN or Inf values.")
    return AdapterFacts(rank=rank, alpha=float(alpha), target_modules=sorted(targets), dtype=dtypes.pop(),
                        layers=layers, weights_bytes=weights.stat().st_size,
                        tensors={n: (i["dtype"], i["shape"], tuple(i["data_offsets"])) for n, i in header.items()})
