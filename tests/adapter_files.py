"""Adapter files as tenants upload them: a PEFT folder written with chosen shapes, PEFT's own save of the tiny
Llama, zip and tar archives of them, and what landed in storage."""

import io
import json
import tarfile
import zipfile

import numpy as np
from safetensors.numpy import save_file

from gpu_runtime.adapter_validation import CONFIG_FILE, WEIGHTS_FILE, BaseFacts
from tests.factories import TINY_ARCHITECTURE

MANIFEST = {"name": "tiny-llama", "architecture": TINY_ARCHITECTURE}
BASE = BaseFacts.from_manifest(MANIFEST, aliases=("org/tiny-llama",))


def write_adapter(path, *, config=None, tensors=None, r=4, modules=("q_proj", "v_proj"), dtype=np.float32):
    """A PEFT LoRA folder for tiny-llama: ``config`` overrides fields of adapter_config.json, ``tensors`` replaces
    the weights (default: every layer of ``modules`` at rank ``r``, small constant values)."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": 8, "target_modules": list(modules),
           "base_model_name_or_path": "tiny-llama"}
    cfg.update(config or {})
    (path / CONFIG_FILE).write_text(json.dumps(cfg))
    if tensors is None:
        tensors = {}
        for layer in range(2):
            for module in modules:
                block, fan_in, fan_out = BASE.modules[module]
                prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
                tensors[f"{prefix}.lora_A.weight"] = np.full((r, fan_in), 0.01, dtype=dtype)
                tensors[f"{prefix}.lora_B.weight"] = np.full((fan_out, r), 0.02, dtype=dtype)
    save_file(tensors, str(path / WEIGHTS_FILE))
    return path


def peft_adapter(tmp_dir, *, seed, r, targets):
    """A real adapter saved by PEFT from the tiny Llama of tests/runtime_fixtures.py: {file name: bytes}."""
    from tests.runtime_fixtures import save_peft_adapter, tiny_base

    path = save_peft_adapter(tiny_base(), tmp_dir / "adapter", seed=seed, r=r, targets=targets)
    return {name: (path / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}


def zip_bytes(members, *, compression=zipfile.ZIP_DEFLATED):
    """members: [(name or ZipInfo, bytes)]."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members:
            info = name if isinstance(name, zipfile.ZipInfo) else zipfile.ZipInfo(name)
            info.compress_type = compression
            archive.writestr(info, data)
    return buffer.getvalue()


def tar_bytes(members, *, mode="w:gz"):
    """members: [(name, bytes)] or [(TarInfo, None)] for links and other special entries."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in members:
            if isinstance(name, tarfile.TarInfo):
                archive.addfile(name)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def in_folder(files, folder="my-adapter"):
    return [(f"{folder}/{name}", data) for name, data in files.items()]


def zipped(adapter):
    """An adapter's files ({name: bytes}) as the one zip a tenant uploads: [(file name, bytes)]."""
    return [("support-bot.zip", zip_bytes(in_folder(adapter)))]


def stored_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
