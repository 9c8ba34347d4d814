"""Loads the Frozen Core: the base model, once, read-only, on the node's device."""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .model_store import ModelStoreError, read_manifest

log = logging.getLogger("vajra.runtime.base_model")


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


def load_base_model(config):
    manifest = read_manifest(config.model_store, config.base_model)
    if manifest is None:
        raise ModelStoreError(
            f"Base model {config.base_model} is not in {config.model_store}; "
            "run: python -m gpu_runtime.model_store import"
        )
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    variant = dtype if dtype in manifest["variants"] else "float32"
    path = Path(config.model_store) / config.base_model / variant
    timings = {}
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    timings["read"] = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    model.to(device).eval().requires_grad_(False)
    timings["to_device"] = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    with torch.inference_mode():
        ids = tokenizer("Hello", return_tensors="pt").input_ids.to(device)
        model(ids)
    timings["warm_up"] = (time.perf_counter() - started) * 1000
    log.info("base model %s (%s) on %s as %s: read %.0f ms, to device %.0f ms, warm-up %.0f ms",
             config.base_model, variant, device, dtype, timings["read"], timings["to_device"], timings["warm_up"])
    return BaseModel(config.base_model, model, tokenizer, device, dtype, manifest, timings)
