"""Loads the Frozen Core: the base model, once, read-only, on the node's device.

The weights are not loaded through ``from_pretrained`` (which spends most of its time on bookkeeping and
leaves the file's pages for the first forward to fault in). The model is built from its config on the
``meta`` device (no memory, no random init), the safetensors file is memory-mapped and every page of it is
faulted in (``MADV_POPULATE_READ``, off the GIL, while the tokenizer loads), and the mapped tensors become
the model's parameters as they are: tied embeddings re-tied, the non-persistent rotary buffers computed.
On the CPU the weights stay those mapped pages of the file (shared with the page cache, never written: no
gradients, inference only); on CUDA ``to(device)`` copies them to the GPU.

The model is the runtime's own decoder (gpu_runtime.decoder) for the model types it covers, which gives the
logits transformers' model gives, to the bit, without importing transformers' modeling code (more than a
second of a fresh node's start); any other config is built as transformers' model, the same way. A
checkpoint this path does not cover exactly (sharded, keys or shapes that do not match the model, a buffer
it cannot compute) is loaded with ``from_pretrained`` instead, with a warning (tests/test_base_model_load.py).

Phases, logged in ms and kept in ``BaseModel.timings_ms``:

* ``read``: config, tokenizer, model skeleton and every weight byte mapped and paged in (``tokenizer`` and
  ``page_in`` are its parts; ``page_in`` overlaps the tokenizer, so the parts add up to more than the phase);
* ``to_device``: the weights placed in the model (assigned, tied, cast if needed) and the model moved to
  the device;
* ``warm_up``: one forward of a one-token prompt (first-call allocations and kernel choices).
"""

import ctypes
import gc
import json
import logging
import mmap
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import decoder as llama_family
from .decoder import no_init_on_meta
from .model_store import ModelStoreError, read_manifest
from .tokenizer import Tokenizer
from .tokenizer import Unsupported as TokenizerUnsupported

log = logging.getLogger("vajra.runtime.base_model")

MADV_POPULATE_READ = 22  # Linux >= 5.14; older kernels answer EINVAL and the pages are touched instead
PAGE = mmap.PAGESIZE


def cpu_has_native_bf16():
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(requested):
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def pick_dtype(requested, device):
    """bf16 on CUDA or a CPU with native bf16; fp32 elsewhere (bf16 is slower on AVX2-only CPUs)."""
    if requested != "auto":
        return requested
    if device.startswith("cuda") or cpu_has_native_bf16():
        return "bfloat16"
    return "float32"


@dataclass
class BaseModel:
    name: str
    model: object
    tokenizer: object
    device: str
    dtype: str
    manifest: dict
    timings_ms: dict


class FastPathUnsupported(RuntimeError):
    """The checkpoint is not one the fast path loads exactly; ``from_pretrained`` loads it instead."""


def use_torch_threads():
    """Applies the process's torch thread count (``torch.set_num_threads``, which ``load_base_model`` calls with
    the node's ``torch_threads``) to the calling thread. OpenMP keeps the count per thread: a thread started later,
    such as the engine's, would otherwise run its ops on every core whatever the node was given."""
    torch.set_num_threads(torch.get_num_threads())


def variant_dir(model_store, name, manifest, dtype):
    """The model store's directory of the variant a base in ``dtype`` loads: that dtype's where the store holds
    one, else float32's (cast on load)."""
    return Path(model_store) / name / (dtype if dtype in manifest["variants"] else "float32")


def load_base_model(config):
    manifest = read_manifest(config.model_store, config.base_model)
    if manifest is None:
        raise ModelStoreError(
            f"Base model {config.base_model} is not in {config.model_store}; "
            "run: python -m gpu_runtime.model_store import"
        )
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)  # before the first op: it sizes torch's CPU thread pool
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    path = variant_dir(config.model_store, config.base_model, manifest, dtype)
    variant = path.name
    collecting = gc.isenabled()
    gc.disable()  # building the model allocates enough to trigger a full collection: ~100 ms of torch's objects
    try:
        model, tokenizer, timings, loader = load_model_dir(path, getattr(torch, dtype), device)
    finally:
        if collecting:
            gc.enable()
    log.info("base model %s (%s) on %s as %s via %s, %d CPU threads: read %.0f ms (tokenizer %.0f, page-in %.0f), "
             "to device %.0f ms, warm-up %.0f ms", config.base_model, variant, device, dtype, loader,
             torch.get_num_threads(), timings["read"], timings["tokenizer"], timings.get("page_in", 0.0),
             timings["to_device"], timings["warm_up"])
    return BaseModel(config.base_model, model, tokenizer, device, dtype, manifest, timings)


def load_model_dir(path, dtype, device):
    """(model, tokenizer, timings in ms, loader) for a save_pretrained directory: eval mode, no gradients, on
    ``device``, warmed up; ``loader`` names the path that loaded it ("safetensors mmap" or "from_pretrained")."""
    path = Path(path)
    try:
        model, tokenizer, timings = _load_fast(path, dtype, device)
        loader = "safetensors mmap"
    except FastPathUnsupported as exc:
        log.warning("base model %s: %s; loading it with from_pretrained instead", path, exc)
        model, tokenizer, timings = _load_from_pretrained(path, dtype, device)
        loader = "from_pretrained"
    started = time.perf_counter()
    warm_up(model, tokenizer, device)
    timings["warm_up"] = _ms(started)
    return model, tokenizer, timings, loader


def warm_up(model, tokenizer, device):
    """One forward of a one-token prompt: the first call's allocations and kernel choices, off the first request."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        model(torch.tensor([[token if token is not None else 0]], device=device))


def load_tokenizer(path, config=None):
    """The tokenizer ``AutoTokenizer.from_pretrained(path)`` gives: the runtime's own (gpu_runtime.tokenizer) for a
    plain ``tokenizers`` one, which gives the same ids and text without importing transformers; else
    ``AutoTokenizer``'s, without parsing tokenizer.json twice.

    When tokenizer_config.json lists no ``added_tokens_decoder``, transformers parses the whole tokenizer.json
    (3.5 MB for SmolLM2) in Python only to collect its ``added_tokens`` list, and the Rust backend then parses
    the same file again (~35 ms of ~95 here). The list sits at the head of the file (``tokenizers`` writes
    version, truncation, padding, added_tokens, then the rest), so it is read from there and handed over as
    ``added_tokens_decoder``, which is what transformers builds from it. Any doubt (no such list at the
    head, a list the backend does not hold) means the plain ``AutoTokenizer.from_pretrained``."""
    path = Path(path)
    try:
        return Tokenizer.load(path)
    except TokenizerUnsupported as exc:
        log.info("tokenizer %s: transformers loads it (%s)", path, exc)
    return _auto_tokenizer(path, config)


def _auto_tokenizer(path, config=None):
    from transformers import AutoTokenizer

    config_file, tokenizer_file = path / "tokenizer_config.json", path / "tokenizer.json"
    if not tokenizer_file.is_file() or not config_file.is_file():
        return AutoTokenizer.from_pretrained(path)
    if "added_tokens_decoder" in json.loads(config_file.read_text(encoding="utf-8")):
        return AutoTokenizer.from_pretrained(path)  # transformers does not read tokenizer.json in Python then
    if (path / "special_tokens_map.json").is_file():
        return AutoTokenizer.from_pretrained(path)  # given added_tokens_decoder, transformers would not merge it in
    added = _head_added_tokens(tokenizer_file)
    if added is None:
        return AutoTokenizer.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path, added_tokens_decoder={i: dict(t) for i, t in added.items()},
                                              **({"config": config} if config is not None else {}))
    held = tokenizer.added_tokens_decoder
    if any(i not in held or held[i].content != t["content"] for i, t in added.items()):
        log.warning("tokenizer %s: added tokens read from the head of tokenizer.json do not match; reloading", path)
        return AutoTokenizer.from_pretrained(path)
    return tokenizer


def _head_added_tokens(tokenizer_file, window=1 << 16):
    """{id: AddedToken fields} of the top-level ``added_tokens`` list when it comes before the model in the
    file (as ``tokenizers`` writes it), else None. Reads only as much of the file as the list needs."""
    key = b'"added_tokens"'
    with open(tokenizer_file, "rb") as f:
        data = f.read(window)
        at = data.find(key)
        if at < 0 or b'"model"' in data[:at]:
            return None
        colon = re.compile(rb"\s*:\s*").match(data, at + len(key))
        if colon is None:
            return None
        while True:
            try:
                tokens, _ = json.JSONDecoder().raw_decode(data[colon.end():].decode("utf-8"))
                break
            except (json.JSONDecodeError, UnicodeDecodeError):  # cut short by the window (or not JSON)
                more = f.read(len(data))  # doubling: a list that is not there costs one read of the file
                if not more:
                    return None
                data += more
    if not isinstance(tokens, list) or not all(isinstance(t, dict) and isinstance(t.get("id"), int)
                                               and isinstance(t.get("content"), str) for t in tokens):
        return None
    return {t["id"]: {k: v for k, v in t.items() if k != "id"} for t in tokens}


def _load_fast(path, dtype, device, *, with_tokenizer=True):
    """(model, tokenizer, timings) by the mmap path; ``with_tokenizer=False`` leaves the tokenizer out (None),
    for the benchmark's model-only figure."""
    weights_file = path / "model.safetensors"
    if not weights_file.is_file():
        raise FastPathUnsupported("no single model.safetensors (sharded or another format)")
    from safetensors.torch import load_file

    timings = {}
    started = time.perf_counter()
    weights = load_file(weights_file)  # maps the file; nothing is read until a page is touched
    page_in = _PageIn(weights)
    page_in.start()  # the kernel maps the pages while this thread parses the tokenizer and builds the model
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
        try:
            own = llama_family.DecoderConfig.read(raw)
        except llama_family.Unsupported as exc:
            log.info("base model %s: transformers' modeling code runs it (%s)", path, exc)
            own = None
        if own is None:
            from transformers import AutoConfig
            config = AutoConfig.from_pretrained(path)
        tokenizer_started = time.perf_counter()
        tokenizer = load_tokenizer(path, None if own else config) if with_tokenizer else None
        timings["tokenizer"] = _ms(tokenizer_started)
        model = None if own else _skeleton(path, config, dtype)
    finally:
        page_in.join()
    page_in.finish()
    timings["page_in"] = page_in.ms
    timings["read"] = _ms(started)

    started = time.perf_counter()
    if own is not None:
        try:
            model = llama_family.build(own, weights, dtype, _generation_file(path))
        except llama_family.Unsupported as exc:
            raise FastPathUnsupported(str(exc)) from None
    else:
        _assign(model, weights, dtype)
    if torch.device(device).type != "cpu":  # on the CPU the mapped weights are already where they serve from
        model.to(device)
    model.eval()
    timings["to_device"] = _ms(started)
    return model, tokenizer, timings


def _generation_file(path):
    """generation_config.json's token ids where the directory has one (what from_pretrained reads: an id it does
    not name is None, not config.json's), else None."""
    try:
        generation = json.loads((path / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(generation, dict):
        return None
    return {k: generation.get(k) for k in ("eos_token_id", "bos_token_id", "pad_token_id")}


def _skeleton(path, config, dtype):
    """The transformers model from its config with every parameter and buffer on ``meta`` (no memory, no init),
    frozen."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    with torch.device("meta"), no_init_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.requires_grad_(False)
    if model.can_generate():
        try:  # what from_pretrained does: generation_config.json when present, else the one from config.json
            model.generation_config = GenerationConfig.from_pretrained(path)
        except OSError:
            pass
    return model


def _assign(model, weights, dtype):
    """Makes the mapped tensors the model's parameters and persistent buffers (cast to ``dtype`` where the file
    holds another float type), re-ties tied weights and computes the non-persistent buffers. Raises
    FastPathUnsupported where the checkpoint and the model do not match key for key and shape for shape (or
    where from_pretrained would not tie: the checkpoint holds a tied copy too)."""
    modules = dict(model.named_modules())
    slots = {f"{prefix}{'.' if prefix else ''}{name}": (module, name, tensor)
             for prefix, module in modules.items()
             for name, tensor in [*module._parameters.items(),
                                  *((n, b) for n, b in module._buffers.items()
                                    if n not in module._non_persistent_buffers_set)]
             if tensor is not None}
    tied = set(model.all_tied_weights_keys)
    unexpected = sorted(set(weights) - set(slots))
    if unexpected:
        raise FastPathUnsupported(f"keys the model does not have: {unexpected[:5]}")
    missing = sorted(set(slots) - set(weights) - tied)
    if missing or tied & set(weights):
        raise FastPathUnsupported(f"keys missing from the checkpoint: {missing[:5]}" if missing else
                                  f"the checkpoint holds tied weights: {sorted(tied & set(weights))[:5]}")
    for key, tensor in weights.items():
        module, name, old = slots[key]
        if tensor.shape != old.shape:
            raise FastPathUnsupported(f"{key}: shape {tuple(tensor.shape)} in the checkpoint, {tuple(old.shape)} "
                                      "in the model")
        if tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        if name in module._parameters:
            module._parameters[name] = torch.nn.Parameter(tensor, requires_grad=False)
        else:
            module._buffers[name] = tensor
    model.tie_weights()
    _compute_meta_buffers(model)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise FastPathUnsupported(f"tensors left without a value: {left[:5]}")


def _compute_meta_buffers(model):
    """Non-persistent buffers (rotary ``inv_freq``) are not in the checkpoint and were built on ``meta``: a
    fresh instance of each module holding one, made on the CPU from the module's config, computes them just
    as the module's constructor does in ``from_pretrained``, and they are put into the module in place."""
    for name, module in model.named_modules():
        meta = [b for b, t in module._buffers.items() if t is not None and t.is_meta]
        if not meta:
            continue
        if set(meta) - module._non_persistent_buffers_set or getattr(module, "config", None) is None:
            raise FastPathUnsupported(f"{name} ({type(module).__name__}) has buffers that are not in the checkpoint")
        try:
            fresh = type(module)(module.config)
        except TypeError as exc:
            raise FastPathUnsupported(f"cannot rebuild {name} ({type(module).__name__}): {exc}") from None
        for buffer in meta:
            module._buffers[buffer] = fresh._buffers[buffer]


class _PageIn(threading.Thread):
    """Faults in every page of the mapped weights (they are in the page cache: this maps them, no copy), so
    that no forward reads the file. ``MADV_POPULATE_READ`` is a ctypes call, which drops the GIL: ``start()``
    returns once the thread is about to make it, and the caller's work runs beside it (on 2 vCPUs this hides
    about 5 of its 10 ms). Without it (Linux < 5.14), ``finish()`` reads one byte of every page instead."""

    def __init__(self, weights):
        super().__init__(name="base-model-page-in", daemon=True)
        self.weights, self.ranges = weights, _address_ranges(weights.values())
        self.entering, self.populated, self.ms = threading.Event(), False, 0.0

    def start(self):
        super().start()
        self.entering.wait()

    def run(self):
        started = time.perf_counter()
        try:
            self.populated = _madvise_populate(self.ranges, self.entering.set)
        finally:
            self.entering.set()
            self.ms = _ms(started)

    def finish(self):
        if not self.populated:
            started = time.perf_counter()
            for t in self.weights.values():
                if t.numel():
                    t.detach().reshape(-1).view(torch.uint8)[::PAGE].max()  # one byte of every page
            self.ms += _ms(started)


def _address_ranges(tensors):
    """Page-aligned [start, end) address ranges covering the tensors' storages, adjacent ones merged (one
    mapped file: usually a single range)."""
    ranges = []
    for start, size in sorted({(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors}):
        start, end = start & ~(PAGE - 1), start + size
        if ranges and start <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], end)
        else:
            ranges.append([start, end])
    return ranges


_libc = None


def _madvise_populate(ranges, entering):
    """MADV_POPULATE_READ over each range (``entering()`` just before); False when the kernel or libc cannot."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        madvise = _libc.madvise
    except (OSError, AttributeError):
        return False
    entering()
    return all(madvise(start, end - start, MADV_POPULATE_READ) == 0 for start, end in ranges)


def _load_from_pretrained(path, dtype, device):
    from transformers import AutoModelForCausalLM

    timings = {}
    started = time.perf_counter()
    tokenizer = load_tokenizer(path)
    timings["tokenizer"] = _ms(started)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    timings["read"] = _ms(started)
    started = time.perf_counter()
    try:  # the same weights in the runtime's decoder where it covers the model
        model = llama_family.from_transformers(model)
    except llama_family.Unsupported:
        pass
    model.to(device).eval().requires_grad_(False)
    timings["to_device"] = _ms(started)
    return model, tokenizer, timings


def _ms(started):
    return (time.perf_counter() - started) * 1000
