"""Fairness between tenants: a lone tenant's time to first token while other tenants flood the node.

Two parts, each side by side:

1. The engine (in process): one tenant sends lone requests one after another while 0, 1 or 3 other tenants each
   keep their plan's concurrency quota (16 by default) of requests in flight, on an engine with first come, first
   served admission and on one with fair admission (per-tenant queues taken in turns, gpu_runtime.admission).
   Reports the lone tenant's TTFT p50/p99 (the engine's first_token_ms: from its submit to its first token).
2. The node's task intake (real processes): a runtime node (`celery -A gpu_runtime.celery_app`, threads pool) on a
   private Redis; 1 or 3 tenants send their quota of tasks at once, then the lone tenant sends one. With a worker
   concurrency below what the quotas put on the node, the lone task waits in the Celery queue (first come, first
   served) behind the flood before the engine even sees it; with room for every task, it reaches the engine's
   per-tenant queues at once. Reports the lone request's time from sending its task to its first token on its
   Redis Stream, per worker concurrency.

The engine part runs SmolLM2-135M (``--model smollm2``, the default) or the tiny random-weight Llama
(``--model tiny``, written as fairness.tiny.json); the intake part runs the tiny model (its point is the queue, not
the model). fp32 on CPU.

    .venv/bin/python bench/fairness.py [--quick] [--model smollm2|tiny] [--skip-intake]
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

QUOTA = 16  # concurrent requests a tenant's plan allows (VAJRA_MAX_CONCURRENT_REQUESTS' default)
FLOODS = (0, 1, 3)
MAX_BATCH = 8  # VAJRA_MAX_BATCH's default
PROMPT = [{"role": "user", "content": "Name three colours of the rainbow."}]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer samples and tokens")
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2", help="the engine part's model")
    parser.add_argument("--skip-intake", action="store_true", help="only the engine part")
    return parser.parse_args()


def tiny_store(directory):
    """A model store holding tiny-llama (random weights, SmolLM2's tokenizer and chat template)."""
    from gpu_runtime.model_store import DEFAULT_MODEL, TINY_MODEL, write_tiny_llama

    common.ensure_model_imported()
    write_tiny_llama(directory, TINY_MODEL, tokenizer_from=common.MODEL_STORE / DEFAULT_MODEL / "float32")
    return Path(directory)


def load_base(model, directory):
    from gpu_runtime.base_model import load_base_model
    from gpu_runtime.model_store import TINY_MODEL

    if model == "smollm2":
        return common.on_loader_thread(common.load_smollm2)
    config = common.runtime_config(model_store=tiny_store(directory), base_model=TINY_MODEL)
    return common.on_loader_thread(lambda: load_base_model(config))


def infer_request(tenant, max_tokens, seed=None):
    from gpu_runtime.generation import GenerationRequest, SamplingParams

    return GenerationRequest(request_id=f"bench_{uuid.uuid4().hex}", messages=tuple(PROMPT), tenant=tenant,
                            sampling=SamplingParams(max_tokens=max_tokens, temperature=1.0 if seed else 0.0,
                                                    seed=seed))


# ---- 1. the engine ----------------------------------------------------------------------------------------------
def flood_tokens_of(seed, max_tokens):
    """A flooding request's max_tokens, between a quarter of ``max_tokens`` and all of it: rows free up at
    different steps, as under real traffic (equal lengths would free all of a flood's rows on the same step)."""
    return random.Random(seed).randint(max(1, max_tokens // 4), max_tokens)


def flood(engine, tenant, stop, max_tokens):
    """Keeps QUOTA requests of ``tenant`` in flight until ``stop`` is set (one thread per request slot)."""
    def keep_one(slot):
        n = 0
        while not stop.is_set():
            n += 1
            seed = slot * 1000 + n
            engine.submit(infer_request(tenant, flood_tokens_of(seed, max_tokens), seed=seed)).wait(600)

    threads = [threading.Thread(target=keep_one, args=(slot + 1,), daemon=True) for slot in range(QUOTA)]
    for thread in threads:
        thread.start()
    return threads


def engine_case(base, streams, *, fair, floods, samples, flood_tokens):
    from gpu_runtime.engine import Engine

    engine = Engine(base, None, streams, max_batch=MAX_BATCH, fair_admission=fair)
    engine.start()
    stop, threads = threading.Event(), []
    try:
        for f in range(floods):
            threads += flood(engine, f"flood-{f}", stop, flood_tokens)
        deadline = time.monotonic() + 60
        while floods and engine.queue_depth + len(engine.rows) < floods * QUOTA and time.monotonic() < deadline:
            time.sleep(0.01)  # every flooding request has reached the engine
        ttft = []
        for _ in range(samples):
            final = engine.submit(infer_request("lone", 4)).wait(600)
            if final is None or final.get("error"):
                raise RuntimeError(f"lone request failed: {final}")
            ttft.append(final["timings"]["first_token_ms"])
    finally:
        stop.set()
        for thread in threads:
            thread.join(600)
        engine.stop()
    return {"p50_ms": round(statistics.median(ttft), 1), "p99_ms": round(common.percentile(ttft, 99), 1),
            "max_ms": round(max(ttft), 1), "n": len(ttft)}


def engine_part(args, directory):
    base = load_base(args.model, directory)
    samples = 4 if args.quick else 20
    flood_tokens = {("smollm2", True): 16, ("smollm2", False): 32, ("tiny", True): 64, ("tiny", False): 128}[
        args.model, args.quick]
    print(f"engine: {args.model}, max_batch {MAX_BATCH}, {QUOTA} in flight per flooding tenant x up to {flood_tokens} "
          f"tokens, {samples} lone requests per case", flush=True)
    results = {}
    with common.private_redis() as streams:
        engine_case(base, streams, fair=True, floods=0, samples=1, flood_tokens=flood_tokens)  # warm-up
        for i, floods in enumerate(FLOODS):
            modes = ("fcfs", "fair") if i % 2 == 0 else ("fair", "fcfs")  # alternate: the VM's drift hits both
            for mode in modes:
                results[f"{mode}/{floods}"] = case = engine_case(base, streams, fair=mode == "fair", floods=floods,
                                                                 samples=samples, flood_tokens=flood_tokens)
                print(f"  {floods} flooding tenant(s), {mode}: p50 {case['p50_ms']} ms, p99 {case['p99_ms']} ms",
                      flush=True)
    rows = [[f"{floods} x {QUOTA}" if floods else "none", results[f"fcfs/{floods}"]["p50_ms"],
             results[f"fcfs/{floods}"]["p99_ms"], results[f"fair/{floods}"]["p50_ms"],
             results[f"fair/{floods}"]["p99_ms"],
             round(results[f"fcfs/{floods}"]["p50_ms"] / results[f"fair/{floods}"]["p50_ms"], 2)]
            for floods in FLOODS]
    common.print_table(f"Lone tenant's TTFT on the engine ({args.model}, ms)",
                       ["other tenants' flood", "FCFS p50", "FCFS p99", "fair p50", "fair p99", "FCFS/fair p50"],
                       rows)
    return {"model": args.model, "max_batch": MAX_BATCH, "quota": QUOTA, "flood_max_tokens": flood_tokens,
            "lone_max_tokens": 4, "cases": results}


# ---- 2. the node's task intake -------------------------------------------------------------------------------------
def start_node(store, redis_url, name, concurrency, log_path):
    from gpu_runtime.model_store import TINY_MODEL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAJRA_", "DJANGO_"))}
    env.update(REDIS_URL=redis_url, VAJRA_NODE_NAME=name, VAJRA_MODEL_STORE=str(store), VAJRA_BASE_MODEL=TINY_MODEL,
               VAJRA_DTYPE="float32", VAJRA_DEVICE="cpu", VAJRA_METRICS_PORT="0", VAJRA_HEARTBEAT_SECONDS="60",
               VAJRA_MAX_BATCH=str(MAX_BATCH), PYTHONUNBUFFERED="1")
    log = open(log_path, "wb")
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "gpu_runtime.celery_app", "worker", "--pool",
                             "threads", "--concurrency", str(concurrency), "--loglevel", "WARNING", "--hostname",
                             f"{name}@%h"], cwd=common.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def intake_case(app, client, name, floods, flood_tokens):
    """Each flooding tenant sends QUOTA tasks at once; then the lone one. The lone request's ms from sending its
    task to its first token on its stream, and the engine's part of it (submit to first token)."""
    from gpu_runtime.contract import TASK_INFER, node_queue

    def send(request):
        app.send_task(TASK_INFER, args=[request.to_json()], queue=node_queue(name), task_id=request.request_id,
                      ignore_result=True)
        return request.request_id

    seeds = [(f, f * 100 + n + 1) for f in range(floods) for n in range(QUOTA)]
    sent = [send(infer_request(f"flood-{f}", flood_tokens_of(seed, flood_tokens), seed=seed)) for f, seed in seeds]
    time.sleep(0.5)  # the node takes what its concurrency lets it
    sent_at = time.time() * 1000
    lone = send(infer_request("lone", 4))
    _, final, stamps = common.stream_text(client, lone, block_ms=600_000)
    first = next(t for t, kind in stamps if kind == "delta")
    for request_id in sent:  # the next case starts on an idle node
        common.stream_text(client, request_id, block_ms=600_000)
    return {"to_first_token_ms": round(first - sent_at, 1), "engine_first_token_ms": final["timings"]["first_token_ms"]}


def intake_part(args, directory):
    from celery import Celery

    from gpu_runtime.redis_io import client_from_url
    from gpu_runtime.redis_url import celery_url
    from vajra.embedded_redis import start_private_redis

    store = tiny_store(Path(directory) / "tiny")
    concurrencies = (12, 64)  # the Procfile's former 12 (max_batch + 4) and one with room for 3 x 16 + 1
    flood_tokens = 128 if args.quick else 256
    repeats = 1 if args.quick else 3
    print(f"intake: tiny model node, max_batch {MAX_BATCH}, {QUOTA} tasks per flooding tenant x up to {flood_tokens} "
          f"tokens, worker concurrency {concurrencies}", flush=True)
    redis_proc, url = start_private_redis(Path(directory) / "redis")
    app = Celery("bench-fairness", broker=celery_url(url), fixups=[])
    app.conf.update(task_serializer="json", accept_content=["json"])
    client = client_from_url(url, socket_timeout=700)  # reads block up to 600 s for a stream's next entry
    results = {}
    try:
        for concurrency in concurrencies:
            name = f"bench-fair-{concurrency}"
            node = start_node(store, url, name, concurrency, Path(directory) / f"{name}.log")
            try:
                warm = infer_request("lone", 2)  # the node is up once it answers one request
                app.send_task("runtime.infer", args=[warm.to_json()], queue=f"node.{name}", ignore_result=True)
                common.stream_text(client, warm.request_id, block_ms=300_000)
                for floods in (1, 3):
                    runs = [intake_case(app, client, name, floods, flood_tokens) for _ in range(repeats)]
                    results[f"{concurrency}/{floods}"] = {
                        "to_first_token_ms": statistics.median(r["to_first_token_ms"] for r in runs),
                        "engine_first_token_ms": statistics.median(r["engine_first_token_ms"] for r in runs),
                        "runs": runs}
                    print(f"  concurrency {concurrency}, {floods} flooding tenant(s): "
                          f"{results[f'{concurrency}/{floods}']['to_first_token_ms']} ms to the lone first token",
                          flush=True)
            finally:
                os.killpg(node.pid, 15)
                node.wait(30)
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
    rows = [[f"{floods} x {QUOTA}"] + [v for c in concurrencies for v in (
        results[f"{c}/{floods}"]["to_first_token_ms"], results[f"{c}/{floods}"]["engine_first_token_ms"])]
        for floods in (1, 3)]
    common.print_table("Lone task: send -> first token (and the engine's part: submit -> first token), ms",
                       ["other tenants' flood"] + [f"{h} c={c}" for c in concurrencies for h in ("total", "engine")],
                       rows)
    return {"model": "tiny-llama", "max_batch": MAX_BATCH, "quota": QUOTA, "flood_max_tokens": flood_tokens,
            "repeats": repeats, "cases": results}


def main():
    args = parse_args()
    facts = common.machine_facts()
    print(f"{facts['cpu_model']}, {facts['cores']} cores, {facts['dtype']}, load {facts['load_average']}")
    with tempfile.TemporaryDirectory(prefix="vajra-bench-fairness-") as directory:
        payload = {"machine": facts, "engine": engine_part(args, directory)}
        if not args.skip_intake:
            payload["intake"] = intake_part(args, directory)
    payload["machine"]["load_average_after"] = common.load_average()
    common.write_result("fairness" if args.model == "smollm2" else "fairness.tiny", payload, quick=args.quick)


if __name__ == "__main__":
    main()
