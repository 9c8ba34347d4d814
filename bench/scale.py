"""Scale: one runtime node vs two, and Algorithm 2's placement locality vs random placement.

    nodes      the platform as real processes (bench/platform_procs.py: private Redis, throwaway SQLite, daphne,
               the control worker) with one runtime node, then a second one started beside it; the same load
               in both phases: CONCURRENT SSE streams opened at once on /v1/models/<m>/infer (greedy,
               MAX_TOKENS each), ROUNDS rounds per phase. Aggregate tokens/s (tokens / wall time of a round),
               client TTFT (request sent -> first delta) p50/p99, and how many requests each node ran (from its
               own log). On this 2-core machine both nodes share the same two cores: a second node adds no
               compute, so the figure says what placement and a second engine cost or give here, not what a
               second GPU would. Then the same two nodes again with the cores split between them
               (VAJRA_TORCH_THREADS, as `manage.py up --nodes` starts them), each with threads of its own.
    tiers      on the two nodes of the first phase: one hot and one warm adapter (random r=8 q,v LoRAs), then
               TIER_REQUESTS requests through each while a flood of base-model SSE streams keeps both nodes busy.
               Adapter-ready p50/p99 (the final's ``timings.adapter_ready_ms``) beside the tier's guarantee
               (hot <= 10 ms, warm <= 100 ms), and on which node each ran (its request row): every hot request
               should run on the node that pins its adapter. The engine measures adapter-ready from the request's
               submission to its admission into the batch, so on a busy node it includes waiting for the step
               under way, even for an adapter already in its slot.
    placement  a synthetic multi-tenant trace (TENANTS tenants with 1-5 adapters each, Zipf-skewed adapter
               popularity, requests that run for a few arrivals) replayed against NODES simulated nodes with
               DEVICE_SLOTS device slots (LRU, in-use adapters pinned) and HOST_SLOTS host-RAM adapters. Every
               request is placed by fleet.placement's own candidate filter and Algorithm 2 ranking (load,
               locality, tenant affinity with the settings' weights), or uniformly at random among the same
               candidates. Hit rate = the share of requests whose adapter was already in a device slot of the
               chosen node (host hits reported beside).

    .venv/bin/python bench/scale.py [--quick] [--tiny]     # ~4-5 min (--quick ~3 min); slower when the cores are shared

--tiny serves tiny-llama (random weights, SmolLM2's tokenizer; gpu_runtime.model_store.write_tiny_llama).
"""

import argparse
import asyncio
import heapq
import json
import logging
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, OrderedDict, deque
from pathlib import Path

import common
from platform_procs import Platform

NAME = "scale"
SMOLLM2, TINY = "smollm2-135m-instruct", "tiny-llama"
NODES, DEVICE_SLOTS, HOST_SLOTS, TENANTS = 4, 8, 24, 60
GUARANTEE_MS = {"hot": 10, "warm": 100}


# ---- one node vs two (real processes) -------------------------------------------------------------------------------
def round_of_streams(url, secret, model, n, max_tokens, tag):
    import httpx

    async def one(client, i):
        body = {"prompt": f"Stream {tag}-{i}: here are three facts about the sea:\n1.", "stream": True,
                "parameters": {"temperature": 0, "max_tokens": max_tokens}}
        started, first, final, request_id = time.perf_counter(), None, None, None
        async with client.stream("POST", f"/v1/models/{model}/infer", json=body) as response:
            response.raise_for_status()
            event = {}
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event["kind"] = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if event.get("kind") == "request":
                        request_id = data["id"]
                    elif event.get("kind") == "delta" and data.get("text") and first is None:
                        first = time.perf_counter()
                    elif event.get("kind") == "done":
                        final = data
                elif not line:
                    event = {}
        if not final or final.get("finish_reason") not in {"stop", "length"}:
            raise RuntimeError(f"stream {i} failed: {final}")
        return {"ttft_ms": (first - started) * 1000 if first else None, "request_id": request_id,
                "tokens": final["usage"]["completion_tokens"]}

    async def run_all():
        limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=600,
                                     limits=limits) as client:
            started = time.perf_counter()
            streams = await asyncio.gather(*(one(client, i) for i in range(n)))
            return time.perf_counter() - started, streams

    return asyncio.run(run_all())


def per_node(platform, request_ids):
    counts = {}
    for name in platform.nodes:
        ran = set(re.findall(r"runtime\.infer\[(req_[0-9a-f]+)\] succeeded", platform.node_log(name).read_text()))
        counts[name] = len(ran & set(request_ids))
    return counts


def phase(platform, model, label, rounds, n, max_tokens):
    walls, tokens, ttft, ids = [], [], [], []
    for r in range(rounds):
        wall, streams = round_of_streams(platform.url, platform.secret, model, n, max_tokens, f"{label}{r}")
        walls.append(wall)
        tokens.append(sum(s["tokens"] for s in streams))
        ttft += [s["ttft_ms"] for s in streams if s["ttft_ms"] is not None]
        ids += [s["request_id"] for s in streams]
        print(f"  {label} round {r + 1}: {tokens[-1]} tokens in {wall:.1f} s", flush=True)
    time.sleep(1.5)  # the nodes' logs catch up with their last task
    return {"rounds": rounds, "streams": n, "max_tokens": max_tokens,
            "tok_s": round(sum(tokens) / sum(walls), 2), "tok_s_per_round": [round(t / w, 2) for t, w in
                                                                            zip(tokens, walls, strict=True)],
            "ttft_ms": {"p50": round(statistics.median(ttft), 1), "p99": round(common.percentile(ttft, 99), 1)},
            "requests_per_node": per_node(platform, ids)}


def nodes_benchmark(args, tmp):
    store, model = common.MODEL_STORE, SMOLLM2
    if args.tiny:
        from gpu_runtime.model_store import write_tiny_llama

        store, model = tmp / "models", TINY
        write_tiny_llama(store, tokenizer_from=common.MODEL_STORE / SMOLLM2 / "float32")
    n = 16 if args.quick else 32
    max_tokens, rounds = (16, 1) if args.quick else (16, 2)
    one, two, tiers = two_phases(tmp / "default", store, model, n, max_tokens, rounds, {}, "",
                                 tier_requests=8 if args.quick else 24)
    # The same two nodes with this machine's cores split between them, as `manage.py up --nodes` starts them
    split = str(max(1, (os.cpu_count() or 1) // 2))
    _, two_split, _ = two_phases(tmp / "split", store, model, n, max_tokens, rounds, {"VAJRA_TORCH_THREADS": split},
                              f" ({split} thread{'s' if split != '1' else ''} each)", only_two=True)
    return {"model": model, "one_node": one, "two_nodes": two, "two_nodes_cores_split": two_split, "tiers": tiers,
            "threads_per_node_split": int(split),
            "two_over_one_tok_s": round(two["tok_s"] / one["tok_s"], 3),
            "two_split_over_one_tok_s": round(two_split["tok_s"] / one["tok_s"], 3),
            "note": f"both nodes run on the same {os.cpu_count()} CPU cores: a second node adds no compute here"}


def two_phases(tmp, store, model, n, max_tokens, rounds, node_env, label, *, only_two=False, tier_requests=0):
    """A platform with one node (its phase skipped when ``only_two``), then a second node beside it (and the
    tier phase on both when ``tier_requests``)."""
    tmp.mkdir(parents=True)
    # heartbeats every second: placement sees each node's queue depth and adapters while the load runs
    platform = Platform(tmp, max_batch=n, model_store=store, base_model=model,
                        node_env={"VAJRA_HEARTBEAT_SECONDS": "1", **node_env})
    one = tiers = None
    try:
        print(f"starting the platform with one node ({model}){label} ...", flush=True)
        platform.start()
        round_of_streams(platform.url, platform.secret, model, 2, 4, "warm")  # first-call costs off the figures
        if not only_two:
            one = phase(platform, model, "one node", rounds, n, max_tokens)
        print("starting a second node ...", flush=True)
        platform.add_node("b")
        round_of_streams(platform.url, platform.secret, model, 4, 4, "warm2")
        two = phase(platform, model, f"two nodes{label}", rounds, n, max_tokens)
        if tier_requests:
            tiers = tier_phase(platform, store, model, tier_requests, n, max_tokens)
    except BaseException:
        for proc in platform.procs:
            print(f"--- {proc.name} log tail\n{proc.tail(1500)}", file=sys.stderr)
        raise
    finally:
        platform.stop()
    return one, two, tiers


MAKE_ADAPTER = """
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
torch.manual_seed({seed})
model = AutoModelForCausalLM.from_pretrained({model_dir!r})
peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                        init_lora_weights=False))
peft.save_pretrained({out!r})
"""


def upload_zip(http, name, model, path):
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for f in path.iterdir():
            archive.write(f, f"{name}/{f.name}")
    response = http.post("/api/v1/adapters", data={"name": name, "base_model": model},
                         files={"file": ("adapter.zip", buffer.getvalue(), "application/zip")})
    if response.status_code != 201:
        raise RuntimeError(f"adapter upload refused: {response.status_code} {response.text}")


def tier_phase(platform, store, model, n_requests, n_flood, max_tokens):
    """Hot and warm adapters' adapter-ready times over two busy nodes, and where the hot requests ran."""
    import threading

    import httpx

    http = httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {platform.secret}"}, timeout=300)
    for seed, (name, tier) in enumerate((("hot-bot", "hot"), ("warm-bot", "warm"))):
        out = platform.tmp / name
        subprocess_run([sys.executable, "-c", MAKE_ADAPTER.format(seed=seed, model_dir=str(store / model / "float32"),
                                                                 out=str(out))])
        upload_zip(http, name, model, out)
        response = http.patch(f"/api/v1/adapters/{name}", json={"tier": tier})
        if response.status_code != 200:
            raise RuntimeError(f"tier {tier} refused: {response.status_code} {response.text}")
    time.sleep(3)  # the set_tier tasks run and the next heartbeats report the pin and host RAM
    results = {}
    flood = threading.Thread(target=round_of_streams,
                             args=(platform.url, platform.secret, model, n_flood, max_tokens * 2, "flood"))
    flood.start()
    time.sleep(1)
    for name, tier in (("hot-bot", "hot"), ("warm-bot", "warm")):
        ready, nodes = [], Counter()
        for i in range(n_requests):
            body = {"prompt": f"Tier {tier} request {i}: say something.", "adapter_id": name,
                    "parameters": {"temperature": 0, "max_tokens": 4}}
            answer = http.post(f"/v1/models/{model}/infer", json=body)
            answer.raise_for_status()
            result = answer.json()
            ready.append(result["timings"]["adapter_ready_ms"])
            nodes[http.get(f"/v1/requests/{result['id']}").json()["node"]] += 1
        results[tier] = {"requests": n_requests, "guarantee_ms": GUARANTEE_MS[tier],
                         "adapter_ready_ms": {"p50": round(statistics.median(ready), 3),
                                              "p99": round(common.percentile(ready, 99), 3)},
                         "within_guarantee": sum(ms <= GUARANTEE_MS[tier] for ms in ready),
                         "requests_per_node": dict(nodes)}
        print(f"  {tier}: adapter ready p50 {results[tier]['adapter_ready_ms']['p50']} ms, "
              f"p99 {results[tier]['adapter_ready_ms']['p99']} ms (guarantee {GUARANTEE_MS[tier]} ms); "
              f"nodes {dict(nodes)}", flush=True)
    flood.join()
    return results


def subprocess_run(argv):
    import subprocess

    subprocess.run(argv, cwd=common.ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---- placement locality (simulated nodes, the platform's own scoring) -----------------------------------------------
class SimNode:
    """A node as placement sees it (state from heartbeats), with LRU device slots and host RAM behind it."""

    def __init__(self, pk):
        self.pk, self.name = pk, f"node-{pk}"
        self.device, self.host = OrderedDict(), OrderedDict()
        self.running = Counter()  # adapter token -> requests running on it

    @property
    def state(self):
        return {"adapters": {"slots": DEVICE_SLOTS, "device": len(self.running)},
                "resident": {"device": list(self.device), "host": list(self.host)},
                "queue_depth": sum(self.running.values())}

    def start(self, token):
        hit = token in self.device
        host_hit = not hit and token in self.host
        if not hit:
            while len(self.device) >= DEVICE_SLOTS:  # evict the least recently used adapter not running
                victim = next(t for t in self.device if t not in self.running)
                del self.device[victim]
                self.host[victim] = True
            self.host.pop(token, None)
        self.device[token] = True
        self.device.move_to_end(token)
        while len(self.host) > HOST_SLOTS:
            self.host.popitem(last=False)
        self.running[token] += 1
        return hit, host_hit

    def finish(self, token):
        self.running[token] -= 1
        if not self.running[token]:
            del self.running[token]


def synthetic_trace(n, seed):
    rng = random.Random(seed)
    adapters = [(t, f"a{t}-{k}") for t in range(TENANTS) for k in range(rng.randint(1, 5))]
    rng.shuffle(adapters)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(adapters))]  # Zipf: a few adapters carry most traffic
    picks = rng.choices(adapters, weights=weights, k=n)
    return [(tenant, token, rng.randint(4, 24)) for tenant, token in picks], len(adapters)


def replay(trace, policy, seed):
    from django.conf import settings

    from fleet.placement import AFFINITY_WINDOW, candidate, rank

    rng = random.Random(seed)
    nodes = [SimNode(pk) for pk in range(NODES)]
    recent = {}  # tenant -> its last AFFINITY_WINDOW nodes
    running = []  # heap of (ends at arrival index, request index, node, token)
    hits = host_hits = refused = 0
    served = Counter()
    for i, (tenant, token, duration) in enumerate(trace):
        while running and running[0][0] <= i:
            _, _, node, done = heapq.heappop(running)
            node.finish(done)
        candidates = [(node, *facts) for node in nodes if (facts := candidate(node, token)) is not None]
        if not candidates:
            refused += 1
            continue
        window = recent.setdefault(tenant, deque(maxlen=AFFINITY_WINDOW))
        if policy == "algorithm2":
            chosen = rank(candidates, Counter(window), settings.VAJRA_PLACEMENT_WEIGHTS)[0].node
        else:
            chosen = rng.choice(candidates)[0]
        hit, host_hit = chosen.start(token)
        hits, host_hits = hits + hit, host_hits + host_hit
        served[chosen.name] += 1
        window.append(chosen.pk)
        heapq.heappush(running, (i + duration, i, chosen, token))
    placed = len(trace) - refused
    return {"device_hit_rate": round(hits / placed, 4), "host_hit_rate": round(host_hits / placed, 4),
            "refused": refused, "requests_per_node": dict(sorted(served.items()))}


def placement_benchmark(args):
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vajra.settings")
    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Django's logging config would print every request
    from django.conf import settings

    n = 4000 if args.quick else 20000
    trace, adapters = synthetic_trace(n, seed=1)
    result = {"requests": n, "tenants": TENANTS, "adapters": adapters, "nodes": NODES, "device_slots": DEVICE_SLOTS,
              "host_slots": HOST_SLOTS, "weights": list(settings.VAJRA_PLACEMENT_WEIGHTS)}
    for policy in ("algorithm2", "random"):
        started = time.perf_counter()
        result[policy] = replay(trace, policy, seed=2)
        print(f"  {policy}: device hit rate {result[policy]['device_hit_rate']:.3f} "
              f"({time.perf_counter() - started:.1f} s)", flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: one round, fewer streams and tokens")
    parser.add_argument("--tiny", action="store_true", help="serve tiny-llama instead of SmolLM2")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop what we started
    load_before = common.load_average()
    common.ensure_model_imported()
    print("placement: Algorithm 2 vs random on a synthetic trace ...", flush=True)
    placement = placement_benchmark(args)
    tmp = Path(tempfile.mkdtemp(prefix="vajra-bench-scale-"))
    try:
        nodes = nodes_benchmark(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    one, two, split = nodes["one_node"], nodes["two_nodes"], nodes["two_nodes_cores_split"]
    common.print_table(f"one vs two runtime nodes ({nodes['model']}, {one['streams']} concurrent SSE streams x "
                       f"{one['max_tokens']} tokens, {one['rounds']} rounds each)",
                       ["", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "requests per node"],
                       [["one node", one["tok_s"], one["ttft_ms"]["p50"], one["ttft_ms"]["p99"],
                         one["requests_per_node"]],
                        ["two nodes", two["tok_s"], two["ttft_ms"]["p50"], two["ttft_ms"]["p99"],
                         two["requests_per_node"]],
                        [f"two nodes, {nodes['threads_per_node_split']} thread(s) each", split["tok_s"],
                         split["ttft_ms"]["p50"], split["ttft_ms"]["p99"], split["requests_per_node"]]])
    print(f"two / one tokens/s: {nodes['two_over_one_tok_s']}x; cores split: {nodes['two_split_over_one_tok_s']}x  "
          f"({nodes['note']})")
    tiers = nodes["tiers"]
    common.print_table("tier promise over two nodes (adapter ready, under a flood of base-model streams)",
                       ["tier", "requests", "p50 ms", "p99 ms", "guarantee ms", "within", "requests per node"],
                       [[tier, t["requests"], t["adapter_ready_ms"]["p50"], t["adapter_ready_ms"]["p99"],
                         t["guarantee_ms"], t["within_guarantee"], t["requests_per_node"]]
                        for tier, t in tiers.items()])
    idle = [name for name, count in two["requests_per_node"].items() if not count]
    if idle:
        print(f"placement sent no request to {', '.join(idle)}")
    common.print_table(f"placement locality ({placement['requests']} requests, {placement['tenants']} tenants, "
                       f"{placement['adapters']} adapters, {NODES} nodes x {DEVICE_SLOTS} device slots)",
                       ["policy", "device hit rate", "host hit rate", "refused", "requests per node"],
                       [[p, placement[p]["device_hit_rate"], placement[p]["host_hit_rate"], placement[p]["refused"],
                         placement[p]["requests_per_node"]] for p in ("algorithm2", "random")])
    common.write_result(NAME, {"machine": common.machine_facts(), "load_average_before": load_before,
                               "nodes": nodes, "placement": placement}, quick=args.quick)


if __name__ == "__main__":
    main()
