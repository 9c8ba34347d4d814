"""Runtime node configuration from environment variables (the runtime never reads Django settings)."""

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from .redis_url import redis_url_from_env

BASE_DIR = Path(__file__).resolve().parent.parent


class ConfigError(RuntimeError):
    """A bad environment value; the message names the variable."""


def _int(name, default, minimum=1):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer.") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum {minimum}.")
    return value


@dataclass(frozen=True)
class RuntimeConfig:
    node_name: str
    redis_url: str
    model_store: Path
    base_model: str
    device: str  # "auto", "cpu", "cuda", "cuda:1"
    dtype: str  # "auto", "float32", "bfloat16", "float16"
    heartbeat_seconds: int

    @classmethod
    def from_env(cls):
        var_dir = Path(os.environ.get("VAJRA_VAR_DIR") or BASE_DIR / "var")
        dtype = os.environ.get("VAJRA_DTYPE", "auto").strip() or "auto"
        if dtype not in {"auto", "float32", "bfloat16", "float16"}:
            raise ConfigError(f"VAJRA_DTYPE={dtype!r}: use auto, float32, bfloat16 or float16.")
        name = os.environ.get("VAJRA_NODE_NAME", "").strip() or socket.gethostname().split(".")[0]
        if not name.replace("-", "").replace("_", "").isalnum() or len(name) > 63:
            raise ConfigError(f"VAJRA_NODE_NAME={name!r}: use letters, digits, '-' and '_' (at most 63).")
        return cls(
            node_name=name,
            redis_url=redis_url_from_env(var_dir),
            model_store=Path(os.environ.get("VAJRA_MODEL_STORE") or var_dir / "models"),
            base_model=os.environ.get("VAJRA_BASE_MODEL", "").strip() or "smollm2-135m-instruct",
            device=os.environ.get("VAJRA_DEVICE", "auto").strip() or "auto",
            dtype=dtype,
            heartbeat_seconds=_int("VAJRA_HEARTBEAT_SECONDS", 5),
        )
