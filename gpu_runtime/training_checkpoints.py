"""A training job's files in object storage (gpu_runtime.object_io): checkpoints (weights + AdamW state) under
``<output_uri>/checkpoints/step-<n>/`` and the trained adapter under ``<output_uri>/final/``, each a PEFT folder
(safetensors, never pickle) whose state file is written last."""

import hashlib
import json
from dataclasses import dataclass

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from . import object_io

STATE_FILE = "training.json"  # written last: a folder without it is unfinished


@dataclass
class Checkpoint:
    step: int
    tensors: dict
    optimizer: dict
    loss: float | None


def checkpoint_uri(spec, step):
    return object_io.join(spec.output_uri, "checkpoints", f"step-{step:07d}")


def last_checkpoint(spec):
    """The newest complete checkpoint under the job's output folder, or None."""
    for name in reversed(object_io.subfolders(object_io.join(spec.output_uri, "checkpoints"))):
        uri = object_io.join(spec.output_uri, "checkpoints", name)
        if object_io.exists(object_io.join(uri, STATE_FILE)):
            return uri
    return None


@dataclass(frozen=True)
class SavedCheckpoint:
    """A checkpoint read back: its step, the adapter's tensors (PEFT names) and the optimizer state."""

    step: int
    tensors: dict
    optimizer: dict


def read_checkpoint(uri):
    state = json.loads(object_io.read_bytes(object_io.join(uri, STATE_FILE)))
    tensors = load_safetensors(object_io.read_bytes(object_io.join(uri, "adapter_model.safetensors")))
    optimizer = load_safetensors(object_io.read_bytes(object_io.join(uri, "optimizer.safetensors")))
    return SavedCheckpoint(state["step"], tensors, optimizer)


def write_checkpoint(run, checkpoint, *, final=False):
    """Writes weights (+ optimizer state for a checkpoint) as a PEFT folder; returns (uri, adapter facts)."""
    weights = save_safetensors(checkpoint.tensors)
    config = json.dumps(run.lora.peft_config(run.spec.base_model), indent=1).encode()
    files = {"adapter_model.safetensors": weights, "adapter_config.json": config}
    if not final:
        files["optimizer.safetensors"] = save_safetensors(checkpoint.optimizer)
    summary = {"rank": run.lora.rank, "alpha": run.lora.alpha, "target_modules": list(run.lora.targets)}
    files[STATE_FILE] = json.dumps({"job_id": run.job_id, "step": checkpoint.step, "loss": checkpoint.loss,
                                    "adapter": summary}).encode()
    uri = object_io.join(run.spec.output_uri, "final") if final else checkpoint_uri(run.spec, checkpoint.step)
    object_io.write_folder(uri, files)
    return uri, {"uri": uri, "sha256": hashlib.sha256(weights).hexdigest(), "size_bytes": len(weights), **summary,
                 "dtype": "F32"}


def finished_result(spec):
    """The result of a job whose final adapter is already written (a redelivered, finished job), or None."""
    uri = object_io.join(spec.output_uri, "final")
    if not object_io.exists(object_io.join(uri, STATE_FILE)):
        return None
    state = json.loads(object_io.read_bytes(object_io.join(uri, STATE_FILE)))
    weights = object_io.read_bytes(object_io.join(uri, "adapter_model.safetensors"))
    config = json.loads(object_io.read_bytes(object_io.join(uri, "adapter_config.json")))
    # the largest rank and the layers' names (the config's r and target_modules differ from them with patterns)
    summary = state.get("adapter") or {"rank": config["r"], "alpha": config["lora_alpha"],
                                       "target_modules": config["target_modules"]}
    return {"status": "succeeded", "error": None, "steps": state["step"], "final_loss": state.get("loss"),
            "adapter": {"uri": uri, "sha256": hashlib.sha256(weights).hexdigest(), "size_bytes": len(weights),
                        **summary, "dtype": "F32"}}
