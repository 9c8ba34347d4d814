"""Shared pieces of the benchmarks: machine facts, timing with repeats, tables, JSON results, the real
SmolLM2 engine and random PEFT adapters for it.

Speed on these VMs drifts several-fold over minutes, so each benchmark measures the
things it compares back to back in one process, alternating between them, and reports ratios beside the
absolute figures.
"""

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("VAJRA_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
MODEL_STORE = ROOT / "var" / "models"
# fp32 on a CPU whatever `auto` would pick, so figures from different CPUs compare; recorded in every result.
# bench/device_check.sh sets both for a CUDA run.
DTYPE = os.environ.get("VAJRA_BENCH_DTYPE", "float32")
DEVICE = os.environ.get("VAJRA_BENCH_DEVICE", "cpu")

if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/, not the repository root, on the path
    sys.path.insert(0, str(ROOT))


def parse_args(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer repeats and tokens (< 1 min)")
    return parser.parse_args()


# ---- machine facts ---------------------------------------------------------------------------------------
def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average():
    """1-, 5- and 15-minute load averages: other work on the 2 cores shows up here."""
    return [round(v, 2) for v in os.getloadavg()]


def machine_facts(dtype=DTYPE, device=DEVICE):
    import peft
    import torch
    import transformers

    from gpu_runtime.base_model import cpu_has_native_bf16

    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "device": device,
        "dtype": dtype,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": load_average(),
    }


# ---- timing -------------------------------------------------------------------------------------------------
def timed_ms(fn):
    """(milliseconds, fn's result) for one call."""
    started = time.perf_counter()
    result = fn()
    return (time.perf_counter() - started) * 1000, result


def summarize(samples_ms):
    return {"median_ms": round(statistics.median(samples_ms), 3), "min_ms": round(min(samples_ms), 3),
            "max_ms": round(max(samples_ms), 3), "n": len(samples_ms)}


def repeat_ms(fn, repeats, *, warmup=1, setup=None):
    """Times ``fn`` ``repeats`` times after ``warmup`` untimed calls; ``setup`` runs untimed before each."""
    samples = []
    for i in range(warmup + repeats):
        if setup is not None:
            setup()
        ms, _ = timed_ms(fn)
        if i >= warmup:
            samples.append(ms)
    return summarize(samples)


def interleaved_ms(cases, repeats, *, warmup=1):
    """Times several cases round-robin so the VM's drift hits each alike.

    ``cases`` maps a name to ``fn`` or ``(fn, setup)``; returns name -> summary."""
    cases = {name: case if isinstance(case, tuple) else (case, None) for name, case in cases.items()}
    samples = {name: [] for name in cases}
    for i in range(warmup + repeats):
        for name, (fn, setup) in cases.items():
            if setup is not None:
                setup()
            ms, _ = timed_ms(fn)
            if i >= warmup:
                samples[name].append(ms)
    return {name: summarize(values) for name, values in samples.items()}


# ---- bandwidth floors ---------------------------------------------------------------------------------------
def memcpy_bandwidth(nbytes=256 << 20, repeats=5):
    """Bytes per second of a large tensor copy (the host RAM -> slot floor on a CPU device)."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = min(timed_ms(lambda: dst.copy_(src))[0] for _ in range(repeats))
    return nbytes / (best / 1000)


def read_bandwidth(path, repeats=3):
    """Bytes per second reading a file from the page cache into a preallocated buffer (warm cache only:
    nothing is dropped from the page cache)."""
    size = Path(path).stat().st_size
    buffer = bytearray(size)

    def read():
        with open(path, "rb", buffering=0) as f:
            view = memoryview(buffer)
            while view:
                got = f.readinto(view)
                if not got:
                    break
                view = view[got:]

    read()  # bring it into the page cache
    best = min(timed_ms(read)[0] for _ in range(repeats))
    return size / (best / 1000), best


# ---- output ---------------------------------------------------------------------------------------------------
def print_table(title, headers, rows):
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths,
                                                                                                   strict=True))))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _cell(value):
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def write_result(name, payload, *, quick):
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / (f"{name}.quick.json" if quick else f"{name}.json")
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path


def verdict(met):
    return "MET" if met else "MISSED"


# ---- the real model ----------------------------------------------------------------------------------------------
def runtime_config(**overrides):
    from gpu_runtime.config import RuntimeConfig

    os.environ.setdefault("VAJRA_MODEL_STORE", str(MODEL_STORE))
    config = RuntimeConfig.from_env()
    values = {**config.__dict__, "model_store": MODEL_STORE, "device": DEVICE, "dtype": DTYPE, **overrides}
    return config.__class__(**values)


def ensure_model_imported(**overrides):
    from gpu_runtime.model_store import is_imported

    config = runtime_config(**overrides)
    if not is_imported(config.model_store, config.base_model):
        print("importing SmolLM2 into var/models (~25 s, once)")
        subprocess.run([sys.executable, "-m", "gpu_runtime.model_store", "import"], cwd=ROOT, check=True,
                       env={**os.environ, "VAJRA_MODEL_STORE": str(MODEL_STORE)})
    return config


def load_smollm2(dtype=None):
    """The BaseModel (DTYPE on DEVICE unless ``dtype`` is given) through the runtime's own loader."""
    from gpu_runtime.base_model import load_base_model

    return load_base_model(ensure_model_imported(**({"dtype": dtype} if dtype else {})))


def transformers_smollm2(base):
    """(transformers' model, ``AutoTokenizer``) of the same files as ``base`` (a BaseModel from load_smollm2): the
    baselines' side (PEFT runs on transformers' model; the runtime serves its own decoder, gpu_runtime.decoder)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpu_runtime.base_model import variant_dir

    directory = variant_dir(runtime_config().model_store, base.name, base.manifest, base.dtype)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=getattr(torch, base.dtype)).to(base.device)
    return model.eval().requires_grad_(False), AutoTokenizer.from_pretrained(directory)


def base_facts(base):
    from gpu_runtime.adapter_validation import BaseFacts

    return BaseFacts.from_manifest(base.manifest)


def make_adapters(base, n, directory, *, r=8, targets=("q_proj", "v_proj"), seed=0):
    """N random PEFT LoRA adapters (r, alpha 2r) saved under ``directory``/a<i>; returns their paths.

    One PeftModel on a copy of the base is re-randomised and saved per adapter. B is scaled down so the
    adapters change the model without wrecking it (the text stays text)."""
    import torch
    from peft import LoraConfig, get_peft_model

    directory = Path(directory)
    peft = get_peft_model(copy.deepcopy(base.model), LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets),
                                                                 init_lora_weights=False))
    lora = [(name, param) for name, param in peft.named_parameters() if "lora_" in name]
    paths = []
    for i in range(n):
        generator = torch.Generator().manual_seed(seed * 100_003 + i)
        with torch.no_grad():
            for name, param in lora:
                scale = 0.3 / param.shape[1] ** 0.5 if "lora_B" in name else 1 / param.shape[1] ** 0.5
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
        path = directory / f"a{i}"
        peft.save_pretrained(path)
        paths.append(path)
    del peft
    return paths


def build_engine(base, streams, *, slots, max_batch, disk_dir, rank=8):
    """The runtime's SlotPool + AdapterStore + Engine around a private copy of the base model (the pool
    wraps the model's layers in place). Returns (engine, store); the engine is not started."""
    from gpu_runtime.adapter_store import AdapterStore
    from gpu_runtime.engine import Engine
    from gpu_runtime.lora import SlotPool

    facts = base_facts(base)
    model = copy.deepcopy(base.model)
    pool = SlotPool(model, facts, {rank: slots})
    store = AdapterStore(pool, facts, disk_dir=disk_dir)
    engine = Engine(base.__class__(**{**base.__dict__, "model": model}), store, streams, max_batch=max_batch)
    return engine, store


@contextlib.contextmanager
def private_redis():
    """A redis-server of our own on a unix socket; yields a StreamWriter over it and stops it after."""
    from gpu_runtime.streams import StreamWriter
    from vajra.embedded_redis import start_private_redis

    with tempfile.TemporaryDirectory(prefix="vajra-bench-redis-") as directory:
        proc, url = start_private_redis(directory)
        try:
            yield StreamWriter.from_url(url)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---- latency distributions and subprocess platforms (prefix_cache, platform_overhead) ------------------------
def percentile(values, p):
    """The p-th percentile (0-100) of ``values``, linearly interpolated between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return None
    k = (len(ordered) - 1) * p / 100
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def spread(values, digits=1):
    """p50, p90, p95, min, max and n of a list of milliseconds."""
    return {"p50": round(percentile(values, 50), digits), "p90": round(percentile(values, 90), digits),
            "p95": round(percentile(values, 95), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}


def stream_text(client, request_id, block_ms=600_000):
    """(generated text, final event, [(Redis entry time in epoch ms, type)]) of a request's Redis Stream,
    read from its start (the stream outlives the request)."""
    from gpu_runtime.streams import read_events

    parts, final, stamps = [], None, []
    for entry_id, kind, data in read_events(client, request_id, block_ms=block_ms):
        stamps.append((int(entry_id.split("-")[0]), kind))
        if kind == "delta":
            parts.append(data["text"])
        elif kind == "final":
            final = data
    return "".join(parts), final, stamps


def on_loader_thread(fn, name="base-model-loader"):
    """Runs ``fn`` on a new thread and returns its result (or raises its exception). A runtime node loads its
    model and starts its engine from such a thread (gpu_runtime.node.Node._load); an engine whose model was
    loaded on the main thread, or whose process then runs torch work on the main thread, measured up to ~25 %
    slower here, so the benchmarks that compare against a node build their engine this way."""
    import threading

    box = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
