"""Base-model ready time: the runtime's ``load_base_model`` vs ``AutoModelForCausalLM.from_pretrained`` of the
same safetensors directory (alone, and with ``AutoTokenizer`` and a forward, i.e. the same job done with
transformers alone) and vs ``torch.load`` of the same weights saved with ``torch.save``, beside the floor:
reading the safetensors file's bytes into a buffer. Targets: a fresh process (imports included) ready to serve
in <= 1.5 s, the node's real cold start; in process, ready <= 1.2x the floor.

Three "ready" figures are reported, each against the floor:

* ready to serve = the read + to-device phases (config, tokenizer, model built, every weight page mapped and
  paged in, weights in the model on the device). The base answers requests from here on. The in-process
  target is judged on this one: it is the time to a servable base, tokenizer included.
* ready + warm-up = the whole ``load_base_model`` call, with its warm-up: one forward of a one-token prompt,
  which takes first-call costs (lazy imports, allocations, kernel choices) off the first request. A forward
  reads every weight from RAM once, so it costs about one decode step whatever the loader did (the table
  has a steady-state 1-token forward beside it). Reported with its ratio, not judged.
* the model alone = the same code without the tokenizer: the like-for-like figure beside from_pretrained
  and torch.load, which load no tokenizer either. Reported, not judged.

Warm page cache only: nothing is dropped from it (that needs root and would also measure the VM's disk),
so every figure is "files already in RAM". The cases run round-robin in one process. Last rows time a fresh
Python process (imports + load_base_model), the node's real cold start.

    .venv/bin/python bench/cold_start.py [--quick]
"""

import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

NAME = "cold_start"
TARGET_X = 1.2
FRESH_TARGET_MS = 1500  # a fresh node: process start to ready to serve, imports included
READY = "load_base_model: ready to serve (read + to device)"
READY_WARM = "load_base_model: ready + warm-up (the whole call)"
MODEL_READY = "load_base_model's path without the tokenizer: the model alone (read + to device)"
JUDGED = "ready_to_serve_le_1.2x_floor"
FRESH = "fresh process: imports + load_base_model"
TORCH_IMPORT = "    of which `import torch` alone"
FRESH_JUDGED = "fresh_process_le_1500ms"
WARM_UP = "  load_base_model warm_up phase"
STEADY = "steady-state 1-token forward (one decode step)"
TOKENIZER = "    of which tokenizer"
FLOOR = "floor: read the safetensors file's bytes"
HF_READY = "transformers alone: AutoTokenizer + from_pretrained + forward"
FRESH_PROCESS = """
import json, time
started = time.perf_counter()
import torch
torch_ms = (time.perf_counter() - started) * 1000
import sys; sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import common
from gpu_runtime.base_model import load_base_model
imported = time.perf_counter()
base = load_base_model(common.runtime_config())
print(json.dumps({{"import_ms": (imported - started) * 1000, "torch_import_ms": torch_ms,
                  "total_ms": (time.perf_counter() - started) * 1000,
                  "transformers_modules": sum(name.startswith("transformers") for name in sys.modules),
                  **{{k + "_ms": v for k, v in base.timings_ms.items()}}}}))
"""


def main():
    args = common.parse_args(__doc__.splitlines()[0])
    repeats = 3 if args.quick else 10
    fresh_repeats = 1 if args.quick else 3
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from gpu_runtime.base_model import _load_fast, load_base_model, load_tokenizer

    hf_logging.disable_progress_bar()
    config = common.ensure_model_imported()
    directory = Path(config.model_store) / config.base_model / "float32"
    weights = directory / "model.safetensors"
    file_bytes = weights.stat().st_size
    phases, hf_split = [], []
    kept = {}

    def ours():
        base = load_base_model(config)
        phases.append(base.timings_ms)
        kept["model"] = base

    def hf():
        kept["model"] = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)

    def hf_ready():
        """The same work as load_base_model, written out with transformers alone."""
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval().requires_grad_(False)
        loaded = time.perf_counter()
        with torch.inference_mode():
            model(tokenizer("Hello", return_tensors="pt").input_ids)
        hf_split.append(((loaded - started) * 1000, (time.perf_counter() - loaded) * 1000))
        kept["model"] = model

    buffer = [bytearray(file_bytes)]

    def raw_read():
        with open(weights, "rb", buffering=0) as f:
            view = memoryview(buffer[0])
            while view:
                got = f.readinto(view)
                if not got:
                    break
                view = view[got:]

    steady = {"model": load_base_model(config).model}  # loaded and warmed once: its forwards are steady-state
    one_token = torch.tensor([[1]])

    def steady_forward():
        with torch.inference_mode():
            steady["model"](one_token)

    def release():
        kept.clear()
        gc.collect()

    with tempfile.TemporaryDirectory(prefix="vajra-bench-cold-start-") as tmp:
        pt_path = Path(tmp) / "state_dict.pt"
        torch.save(AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).state_dict(), pt_path)
        pt_bytes = pt_path.stat().st_size
        gc.collect()
        cases = {
            READY_WARM: (ours, release),
            MODEL_READY: (lambda: kept.update(model=_load_fast(directory, torch.float32, "cpu", with_tokenizer=False)),
                          release),
            HF_READY: (hf_ready, release),
            "AutoModelForCausalLM.from_pretrained": (hf, release),
            "AutoTokenizer.from_pretrained": (lambda: kept.update(tok=AutoTokenizer.from_pretrained(directory)),
                                              release),
            "runtime load_tokenizer (same tokenizer)": (lambda: kept.update(tok=load_tokenizer(directory)), release),
            "torch.load (state dict from torch.save)": (lambda: kept.update(sd=torch.load(pt_path)), release),
            "safetensors load_file (state dict, mapped only)": (lambda: kept.update(sd=load_file(str(weights))),
                                                                release),
            STEADY: steady_forward,
            FLOOR: (raw_read, release),
        }
        timings = common.interleaved_ms(cases, repeats)
    buffer.clear()
    steady.clear()
    phases = phases[1:]  # the warm-up round is not in the timings either
    hf_split = hf_split[1:]
    measured = timings
    timings = {READY: common.summarize([p["read"] + p["to_device"] for p in phases])}
    for phase, label in (("read", "  load_base_model read phase"), ("tokenizer", TOKENIZER),
                         ("page_in", "    of which map + page-in of the weights (a thread, beside the tokenizer)"),
                         ("to_device", "  load_base_model to_device phase")):
        timings[label] = common.summarize([p[phase] for p in phases])
    timings[READY_WARM] = measured.pop(READY_WARM)
    timings[WARM_UP] = common.summarize([p["warm_up"] for p in phases])
    timings[MODEL_READY] = measured.pop(MODEL_READY)
    timings[HF_READY] = measured.pop(HF_READY)
    timings["  transformers alone: AutoTokenizer + from_pretrained (pages not read yet)"] = common.summarize(
        [s[0] for s in hf_split])
    timings["  transformers alone: its forward (reads the pages)"] = common.summarize([s[1] for s in hf_split])
    timings.update(measured)
    fresh = [_fresh_process() for _ in range(fresh_repeats)]
    timings[FRESH] = common.summarize([f["total_ms"] for f in fresh])
    timings["  of which imports (torch and the runtime's modules)"] = common.summarize([f["import_ms"] for f in fresh])
    timings[TORCH_IMPORT] = common.summarize([f["torch_import_ms"] for f in fresh])
    timings["  of which ready to serve (read + to device)"] = common.summarize(
        [f["read_ms"] + f["to_device_ms"] for f in fresh])
    for phase in ("read", "tokenizer", "to_device", "warm_up"):
        timings[f"  of which load_base_model {phase} phase"] = common.summarize([f[f"{phase}_ms"] for f in fresh])

    floor_ms = timings[FLOOR]["median_ms"]
    rows = []
    for name, t in timings.items():
        t["x_floor"] = round(t["median_ms"] / floor_ms, 2)
        rows.append([name, t["median_ms"], t["min_ms"], t["x_floor"]])
    common.print_table(f"Base model ready, SmolLM2-135M fp32 ({file_bytes / 1e6:.0f} MB safetensors), warm page "
                       f"cache, {repeats} repeats ({fresh_repeats} for the fresh process)",
                       ["path", "median ms", "min ms", "x floor"], rows)
    targets = {name: {"value_x": timings[row]["x_floor"], "target_x": TARGET_X,
                      "met": timings[row]["x_floor"] <= TARGET_X, "judged": name == JUDGED}
               for name, row in (("ready_to_serve_le_1.2x_floor", READY),
                                 ("ready_plus_warm_up_le_1.2x_floor", READY_WARM),
                                 ("model_alone_le_1.2x_floor", MODEL_READY))}
    fresh_ms = timings[FRESH]["median_ms"]
    targets[FRESH_JUDGED] = {"value_ms": fresh_ms, "target_ms": FRESH_TARGET_MS, "met": fresh_ms <= FRESH_TARGET_MS,
                             "judged": True}
    print(f"\nfloor bandwidth {file_bytes / floor_ms / 1e6:.2f} GB/s")
    print(f"TARGET, a fresh node (process start to ready to serve, imports included): {fresh_ms:.0f} ms against "
          f"{FRESH_TARGET_MS} ms, {common.verdict(fresh_ms <= FRESH_TARGET_MS)} (`import torch` alone "
          f"{timings[TORCH_IMPORT]['median_ms']:.0f} ms)")
    judged = targets[JUDGED]
    print(f"TARGET, in-process ready to serve (read + to device, tokenizer included): {judged['value_x']:.2f}x the "
          f"floor, {common.verdict(judged['met'])}")
    for name in ("ready_plus_warm_up_le_1.2x_floor", "model_alone_le_1.2x_floor"):
        t = targets[name]
        print(f"  reported, not judged: {name.removesuffix('_le_1.2x_floor').replace('_', ' ')} "
              f"{t['value_x']:.2f}x the floor ({'within' if t['met'] else 'over'} 1.2x)")
    print(f"  warm-up forward {timings[WARM_UP]['x_floor']:.2f}x, steady-state 1-token forward "
          f"{timings[STEADY]['x_floor']:.2f}x, tokenizer {timings[TOKENIZER]['x_floor']:.2f}x the floor")
    common.write_result(NAME, {
        "benchmark": NAME, "quick": args.quick, "machine": common.machine_facts(),
        "model": {"name": config.base_model, "variant": "float32", "safetensors_bytes": file_bytes,
                  "torch_save_bytes": pt_bytes},
        "repeats": repeats, "fresh_process_repeats": fresh_repeats, "timings": timings,
        "floor_GBps": round(file_bytes / floor_ms / 1e6, 2), "targets": targets,
        "judged_on": "a fresh process (imports + load_base_model) <= 1500 ms: a new node's time to a servable "
                     "base; and in process, ready to serve = load_base_model's read + to_device phases, tokenizer "
                     "included, <= 1.2x the floor. The warm-up (a first forward that takes first-call costs off "
                     "the first request) and the model alone (what from_pretrained and torch.load produce) are "
                     "reported beside them, not judged.",
        "notes": ["Warm page cache: nothing is dropped from it, so no figure includes a disk read.",
                  "load_base_model maps model.safetensors and faults in every page of it (MADV_POPULATE_READ) "
                  "in its read phase, so every weight byte is in the process's memory when it is ready to "
                  "serve; on the CPU the weights are those mapped pages (no copy), which is why the model "
                  "alone costs less than the floor's copy of the same bytes.",
                  "load_base_model's read phase includes the tokenizer (the runtime's load_tokenizer: the ids, "
                  "text and chat renders of AutoTokenizer, from the tokenizers library alone). "
                  "What it costs is the tokenizers library's Rust parse of the 3.5 MB tokenizer.json, which "
                  "holds the GIL throughout: only GIL-free work overlaps it (the weights' page-in, a madvise "
                  "call in a thread); building the model cannot.",
                  "ready to serve is the read + to_device phases of the same calls as the ready + warm-up row. "
                  "The model alone is its own case: load_base_model's code with the tokenizer left out.",
                  "torch.load and load_file give a state dict only, not a model; load_file maps the file and "
                  "reads nothing until a tensor is touched, and from_pretrained keeps such mapped tensors "
                  "without touching them, so they come in under the read floor: their pages are then faulted "
                  "in by the first forward (the 'its forward' row of transformers alone).",
                  "The warm-up and the steady-state 1-token forward each read all 538 MB of weights from RAM "
                  "(a decode step is memory-bound).",
                  "The fresh-process rows are a new Python that imports the runtime and calls load_base_model. "
                  "It imports no transformers module (the runtime's own decoder and tokenizer: "
                  f"{fresh[0]['transformers_modules']} transformers modules in sys.modules), so what is left "
                  "past `import torch` is the load itself; a full garbage collection over torch's "
                  "import-time objects (~100 ms) is kept out of it (gc paused while loading)."],
    }, quick=args.quick)


def _fresh_process():
    code = FRESH_PROCESS.format(root=str(common.ROOT), bench=str(Path(__file__).resolve().parent))
    out = subprocess.run([sys.executable, "-c", code], cwd=common.ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
