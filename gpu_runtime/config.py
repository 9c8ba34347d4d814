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


def _bool(name, default):
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r}: use true or false.")


def _buckets(raw):
    """"8:16,16:8" -> {8: 16, 16: 8}: slot rank buckets and their slot counts."""
    try:
        buckets = {int(r): int(n) for r, n in (item.split(":") for item in raw.split(",") if item.strip())}
    except ValueError:
        raise ConfigError(f"VAJRA_SLOT_BUCKETS={raw!r}: use rank:slots pairs, e.g. 8:16,16:8,64:2") from None
    if not buckets or any(r < 1 or n < 1 for r, n in buckets.items()):
        raise ConfigError(f"VAJRA_SLOT_BUCKETS={raw!r}: ranks and slot counts must be positive")
    return buckets


def _float(name, default, low, high):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number.") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is outside [{low}, {high}].")
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
    slot_buckets: dict
    max_batch: int
    stream_ttl_seconds: int
    adapter_cache_dir: Path
    host_budget_bytes: int
    disk_budget_bytes: int
    eviction_threshold: float
    max_lora_rank: int
    prefix_cache_bytes: int
    prefetch_lookahead_ms: int
    training_preemption: bool = True  # TRAINING_PREEMPTION_ENABLED (Table 6)
    training_every: int = 10  # inference priority 10x training: decode steps per training micro-step
    train_time_limit_s: int = 24 * 3600  # a training task's hard limit (and the broker's redelivery timeout)
    torch_threads: int = 0  # CPU threads of torch's ops (0: torch's default, one per core)

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
            # VAJRA paper Table 6: MAX_VRAM_ADAPTERS=100 device slots over all buckets
            slot_buckets=_buckets(os.environ.get("VAJRA_SLOT_BUCKETS", "").strip() or "8:64,16:24,32:8,64:4"),
            max_batch=_int("VAJRA_MAX_BATCH", 32),
            stream_ttl_seconds=_int("VAJRA_STREAM_TTL_SECONDS", 3600),
            adapter_cache_dir=Path(os.environ.get("VAJRA_ADAPTER_CACHE") or var_dir / "adapter-cache" / name),
            host_budget_bytes=_int("VAJRA_HOST_ADAPTER_BYTES", 2 << 30),
            disk_budget_bytes=_int("VAJRA_DISK_ADAPTER_BYTES", 20 << 30),
            eviction_threshold=_float("VAJRA_LRU_EVICTION_THRESHOLD", 0.9, 0.1, 1.0),
            max_lora_rank=_int("VAJRA_MAX_LORA_RANK", 64),
            prefix_cache_bytes=_int("VAJRA_PREFIX_CACHE_BYTES", 512 << 20, minimum=0),
            prefetch_lookahead_ms=_int("VAJRA_PREFETCH_LOOKAHEAD_MS", 5000),  # VAJRA paper, Table 6
            training_preemption=_bool("TRAINING_PREEMPTION_ENABLED", True),  # VAJRA paper, Table 6
            training_every=_int("VAJRA_TRAINING_EVERY", 10),  # VAJRA paper 6.1.2: P_inference = 10 x P_training
            train_time_limit_s=_int("VAJRA_TRAIN_TIME_LIMIT_SECONDS", 24 * 3600, minimum=60),
            # Several nodes on one machine's CPU share its cores: `manage.py up --nodes` splits them
            torch_threads=_int("VAJRA_TORCH_THREADS", 0, minimum=0),
        )
