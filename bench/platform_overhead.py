"""What the platform adds on top of the engine: the same prompts through REST and SSE vs the engine alone.

    direct         the runtime's Engine in this process, built by gpu_runtime.node.build_engine exactly as
                   a node builds it (SmolLM2 fp32 CPU, VAJRA_MAX_BATCH=32, prefix cache, slot buckets), timed
                   client-side: submit -> first delta on its Redis Stream -> final event
    platform REST  POST /v1/models/smollm2-135m-instruct/infer (non-stream): request -> JSON answer
    platform SSE   the same with "stream": true: request -> first `delta` SSE event -> `done` event

The platform is real processes started here against a throwaway SQLite database and a private Redis:
daphne (DJANGO_DEBUG=false), a runtime node (`celery -A gpu_runtime.celery_app`, threads, concurrency 40,
VAJRA_MAX_BATCH=32) and the control worker. The direct engine and the node share that Redis. Requests run
one at a time, the three cases interleaved per prompt (rotating which goes first) because the VM's speed
drifts; added ms = platform - direct per prompt, p50/p95 over the prompts. The runtime's own
first_token_ms/total_ms (engine clock, from the task's submit) are reported beside, so the added time can be
split into web (auth, row, task send: time to the SSE `request` event), Celery + Redis relay, and engine.
Then a base model + uploaded r=8 adapter variant, and 32 concurrent SSE streams (32 tokens each) vs 32
requests submitted at once to the direct engine: aggregate tokens/s.

Targets: <= 5 ms p50 added time to first token (total time reported beside); 32 concurrent streams >= 95 % of
the engine's tokens/s. Greedy decoding: platform and direct texts must be equal.

    .venv/bin/python bench/platform_overhead.py [--quick]
"""

import asyncio
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import common

NAME = "platform_overhead"
MODEL = "smollm2-135m-instruct"
MAX_BATCH = 32
CONCURRENT = 32
PROMPTS = [f"Here are three facts about {topic}:\n1." for topic in (  # greedy: >= 32 tokens before EOS
    "the moon", "honey bees", "the Nile", "volcanoes", "penguins", "the Eiffel Tower", "tea", "glaciers",
    "octopuses", "the Sahara", "Mount Everest", "owls", "coffee", "the Pacific Ocean", "lightning", "dolphins",
    "the Amazon rainforest", "bamboo", "the Great Wall", "whales", "rainbows", "Mars", "coral reefs", "tigers",
    "the Alps", "maple syrup", "comets", "giraffes", "the Arctic", "sunflowers", "Jupiter", "elephants",
    "the Danube", "wolves", "tulips", "Saturn", "hummingbirds", "the Andes", "cacti", "koalas")]


from platform_procs import Platform  # noqa: E402
from platform_report import report, summarize_latency  # noqa: E402

WEB_BREAKDOWN = """
import json, os, statistics, time
from django.db import close_old_connections, transaction
from adapters import access
from serving.dispatch import inference_submit
from fleet.placement import place
from serving.v1 import InferIn, _submit_and_describe, authorize, sampling_from
from tenants.keys import principal_from_key
from tenants.limits import rate_limit_wait

secret, n, model = os.environ["BENCH_SECRET"], int(os.environ["BENCH_N"]), os.environ["BENCH_MODEL"]
principal = principal_from_key(secret)
base_model = access.access_base_model(name=model)
sampling = sampling_from({"temperature": 0, "max_tokens": 1})
infer_in = InferIn(data={"prompt": "Hi", "parameters": {"temperature": 0, "max_tokens": 1}})
infer_in.is_valid(raise_exception=True)


def submit():
    inference_submit(principal=principal, base_model=base_model, prompt="Hi", sampling=sampling, api="infer")


def submit_rolled_back():
    with transaction.atomic():
        submit()
        transaction.set_rollback(True)


steps = {
    "API key -> principal (principal_from_key)": lambda: principal_from_key(secret),
    "rate limit (rate_limit_wait: Redis)": lambda: rate_limit_wait(principal),
    "access_base_model": lambda: access.access_base_model(name=model),
    "placement (place: score the up nodes)": lambda: place(tenant=principal.tenant, base_model=base_model),
    "inference_submit, rolled back (no commit, no task)": submit_rolled_back,
    "inference_submit (row committed + Celery task sent)": submit,
    "the infer view's submit job (key + rate limit + the above)": lambda: _submit_and_describe(
        authorize(secret), model, infer_in.validated_data),
}
samples = {name: [] for name in steps}
for i in range(n + 1):
    for name, fn in steps.items():
        started = time.perf_counter()
        fn()
        if i:
            samples[name].append((time.perf_counter() - started) * 1000)
    time.sleep(0.25)  # the 1-token requests sent run on the node between rounds, not during them
    close_old_connections()
print("JSON=" + json.dumps({name: {"p50": round(statistics.median(v), 2), "min": round(min(v), 2)}
                            for name, v in samples.items()}))
"""


def web_breakdown(platform, repeats):
    """The web's steps of an infer request timed in a Django process of the platform's own (same settings,
    database and Redis; no HTTP): each step alone, round-robin. The committed submits send real 1-token
    requests to the node."""
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", WEB_BREAKDOWN], cwd=common.ROOT, check=True,
                         capture_output=True, text=True,
                         env={**platform.env, "BENCH_SECRET": platform.secret, "BENCH_N": str(repeats),
                              "BENCH_MODEL": MODEL}).stdout
    return json.loads(next(line[5:] for line in out.splitlines() if line.startswith("JSON=")))


# ---- one request, each way ----------------------------------------------------------------------------------------
class Clock:
    """A request's start on both clocks: perf_counter for durations, epoch ms to place Redis entry ids."""

    def __init__(self):
        self.epoch_ms = time.time() * 1000
        self.perf = time.perf_counter()

    def since(self, perf):
        return round((perf - self.perf) * 1000, 2) if perf is not None else None

    def at(self, epoch_ms):
        return round(epoch_ms - self.epoch_ms, 2) if epoch_ms is not None else None


def direct_one(engine, client, prompt, max_tokens, adapter=None):
    """Client-side: submit -> first delta read from the Redis Stream -> final event read."""
    from gpu_runtime.generation import GenerationRequest, SamplingParams
    from gpu_runtime.streams import read_events

    request_id = f"bench_{uuid.uuid4().hex}"
    clock = Clock()
    engine.submit(GenerationRequest(request_id=request_id, prompt=prompt, adapter=adapter, base_model=MODEL,
                                   sampling=SamplingParams(max_tokens=max_tokens)))
    first = final = None
    parts = []
    for _, kind, data in read_events(client, request_id, block_ms=600_000):
        if kind == "delta":
            first = first or time.perf_counter()
            parts.append(data["text"])
        elif kind == "final":
            final = data
    done = time.perf_counter()
    _check(final)
    return _row(clock, first, done, final, "".join(parts), client, request_id)


def rest_one(http, client, prompt, max_tokens, adapter_id=None):
    clock = Clock()
    response = http.post(f"/v1/models/{MODEL}/infer", json=_body(prompt, max_tokens, adapter_id))
    done = time.perf_counter()
    response.raise_for_status()
    body = response.json()
    _check(body)
    return _row(clock, None, done, body, body["text"], client, body["id"])


def sse_one(http, client, prompt, max_tokens, adapter_id=None):
    clock = Clock()
    head = first = final = request_id = None
    parts = []
    with http.stream("POST", f"/v1/models/{MODEL}/infer", json={**_body(prompt, max_tokens, adapter_id),
                                                                  "stream": True}) as response:
        response.raise_for_status()
        for kind, data in sse_events(response.iter_lines()):
            if kind == "request":
                head, request_id = time.perf_counter(), data["id"]
            elif kind == "delta":
                first = first or time.perf_counter()
                parts.append(data["text"])
            elif kind == "done":
                final = data
                break
    done = time.perf_counter()
    _check(final)
    return {**_row(clock, first, done, final, "".join(parts), client, request_id),
            "request_event_ms": clock.since(head)}


def _body(prompt, max_tokens, adapter_id):
    body = {"prompt": prompt, "parameters": {"temperature": 0, "max_tokens": max_tokens}}
    if adapter_id:
        body["adapter_id"] = adapter_id
    return body


class SSEParser:
    """Turns SSE lines into (event, data) pairs, one line at a time: serves the sync and the async reader."""

    def __init__(self):
        self.kind = self.data = None

    def feed(self, line):
        """The finished event when ``line`` ends one, else None."""
        if not line:
            event = (self.kind, json.loads(self.data) if self.data else None) if self.kind else None
            self.kind = self.data = None
            return event
        if line.startswith("event: "):
            self.kind = line[7:]
        elif line.startswith("data: "):
            self.data = line[6:]
        return None


def sse_events(lines):
    parser = SSEParser()
    for line in lines:
        if (event := parser.feed(line)) is not None:
            yield event


async def sse_events_async(lines):
    parser = SSEParser()
    async for line in lines:
        if (event := parser.feed(line)) is not None:
            yield event


def _check(final):
    if not final or final.get("error") or final.get("finish_reason") not in {"stop", "length"}:
        raise RuntimeError(f"request failed: {final}")


def _ms(start, end):
    return round((end - start) * 1000, 2) if end is not None else None


def _stamps(client, request_id):
    """Epoch ms of the request's first delta and final entries on its Redis Stream (from the entry ids)."""
    from gpu_runtime.contract import stream_key

    first = final = None
    for entry_id, fields in client.xrange(stream_key(request_id)):
        ms = int(entry_id.split(b"-")[0])
        if fields[b"type"] == b"delta" and first is None:
            first = ms
        elif fields[b"type"] == b"final":
            final = ms
    return first, final


def _row(clock, first, done, final, text, client, request_id):
    """Client times, the runtime's own timings, and where the request was when (Redis entry times, 1 ms):
    engine_submit_ms = the final entry's time - runtime total_ms (the engine's clock starts at submit)."""
    timings = final["timings"]
    first_xadd, final_xadd = (clock.at(ms) for ms in _stamps(client, request_id))
    submit = round(final_xadd - timings["total_ms"], 2)
    return {"first_delta_ms": clock.since(first), "total_ms": clock.since(done),
            "runtime_first_token_ms": timings["first_token_ms"], "runtime_total_ms": timings["total_ms"],
            "runtime_adapter_ready_ms": timings.get("adapter_ready_ms"),
            "engine_submit_ms": submit,
            "relay_first_delta_ms": round(clock.since(first) - first_xadd, 2) if first is not None else None,
            "relay_final_ms": round(clock.since(done) - final_xadd, 2),
            "completion_tokens": final["usage"]["completion_tokens"], "text": text}


# ---- the latency comparison ---------------------------------------------------------------------------------------
def latency(label, engine, client, http, prompts, max_tokens, adapter=None, adapter_id=None):
    cases = {
        "direct": lambda p: direct_one(engine, client, p, max_tokens, adapter),
        "rest": lambda p: rest_one(http, client, p, max_tokens, adapter_id),
        "sse": lambda p: sse_one(http, client, p, max_tokens, adapter_id),
    }
    names = list(cases)
    for name in names:  # warm-up: first forward passes, the adapter into its slot on both sides
        cases[name](prompts[-1])
    rows = []
    print(f"{label}: {len(prompts)} prompts x (direct, REST, SSE), {max_tokens} tokens, one at a time ...", flush=True)
    for i, prompt in enumerate(prompts):
        order = names[i % 3:] + names[:i % 3]
        rows.append({"prompt": prompt, **{name: cases[name](prompt) for name in order}})
    return summarize_latency(label, rows, max_tokens)


def probes(http, repeats):
    """The web's floor: GET /healthz (HTTP + Django, no auth) and GET /v1/models/<m>/versions (API-key auth,
    rate limit, one query), interleaved."""
    cases = {"GET /healthz": lambda: http.get("/healthz").raise_for_status(),
             f"GET /v1/models/{MODEL}/versions": lambda: http.get(f"/v1/models/{MODEL}/versions").raise_for_status()}
    samples = {name: [] for name in cases}
    for i in range(repeats + 1):
        for name, fn in cases.items():
            ms, _ = common.timed_ms(fn)
            if i:
                samples[name].append(ms)
    return {name: common.spread(values, 2) for name, values in samples.items()}


# ---- concurrency ----------------------------------------------------------------------------------------------------
def concurrent_direct(engine, prompts, max_tokens):
    from gpu_runtime.generation import GenerationRequest, SamplingParams

    started = time.perf_counter()
    handles = [engine.submit(GenerationRequest(request_id=f"bench_{uuid.uuid4().hex}", prompt=p, base_model=MODEL,
                                              sampling=SamplingParams(max_tokens=max_tokens))) for p in prompts]
    for handle in handles:
        handle.wait(1800)
        _check(handle.result)
    wall = time.perf_counter() - started
    tokens = sum(h.result["usage"]["completion_tokens"] for h in handles)
    ttft = [h.result["timings"]["first_token_ms"] for h in handles]
    return {"wall_s": round(wall, 3), "tokens": tokens, "tok_s": round(tokens / wall, 2),
            "ttft_ms": common.spread(ttft)}


def concurrent_platform(url, secret, redis_client, prompts, max_tokens):
    """All streams opened at once; per stream: client times, and when the request reached the node's engine
    (its final Redis entry time - the runtime's total_ms)."""
    import httpx

    async def one(client, prompt, clock):
        head = first = final = request_id = None
        async with client.stream("POST", f"/v1/models/{MODEL}/infer",
                                 json={**_body(prompt, max_tokens, None), "stream": True}) as response:
            response.raise_for_status()
            async for kind, data in sse_events_async(response.aiter_lines()):
                if kind == "request":
                    head, request_id = time.perf_counter(), data["id"]
                elif kind == "delta":
                    first = first or time.perf_counter()
                elif kind == "done":
                    final = data
                    break
        _check(final)
        return {"request_event_ms": clock.since(head), "first_delta_ms": clock.since(first),
                "done_ms": clock.since(time.perf_counter()), "tokens": final["usage"]["completion_tokens"],
                "runtime_first_token_ms": final["timings"]["first_token_ms"],
                "runtime_total_ms": final["timings"]["total_ms"], "request_id": request_id}

    async def run_all():
        limits = httpx.Limits(max_connections=len(prompts) + 8, max_keepalive_connections=len(prompts) + 8)
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=600,
                                     limits=limits) as client:
            clock = Clock()
            streams = await asyncio.gather(*(one(client, p, clock) for p in prompts))
            return clock, time.perf_counter() - clock.perf, streams

    clock, wall, streams = asyncio.run(run_all())
    arrivals = [clock.at(_stamps(redis_client, s["request_id"])[1]) - s["runtime_total_ms"] for s in streams]
    tokens = sum(s["tokens"] for s in streams)
    return {"wall_s": round(wall, 3), "tokens": tokens, "tok_s": round(tokens / wall, 2),
            "ttft_ms": common.spread([s["first_delta_ms"] for s in streams]),
            "request_event_ms": common.spread([s["request_event_ms"] for s in streams]),
            "engine_submit_ms": common.spread(arrivals),
            "runtime_first_token_ms": common.spread([s["runtime_first_token_ms"] for s in streams])}


def concurrency(engine, url, secret, redis_client, prompts, max_tokens, quick):
    order = ["direct", "platform"] if quick else ["direct", "platform", "platform", "direct"]
    runs = {"direct": [], "platform": []}
    print(f"concurrency: {len(prompts)} streams x {max_tokens} tokens, {' '.join(order)} ...", flush=True)
    for kind in order:
        if kind == "direct":
            runs[kind].append(concurrent_direct(engine, prompts, max_tokens))
        else:
            runs[kind].append(concurrent_platform(url, secret, redis_client, prompts, max_tokens))
        run = runs[kind][-1]
        print(f"  {kind}: {run['tokens']} tokens in {run['wall_s']} s = {run['tok_s']} tok/s, TTFT p50 "
              f"{run['ttft_ms']['p50']} ms", flush=True)

    def mean_rate(kind):
        return round(sum(r["tok_s"] for r in runs[kind]) / len(runs[kind]), 2)

    out = {"streams": len(prompts), "max_tokens": max_tokens, "order": order,
           "direct": {"tok_s": mean_rate("direct"), "runs": runs["direct"]},
           "platform": {"tok_s": mean_rate("platform"), "runs": runs["platform"]}}
    out["platform_over_direct"] = round(out["platform"]["tok_s"] / out["direct"]["tok_s"], 3)
    return out


# ---- the adapter -----------------------------------------------------------------------------------------------------
MAKE_ADAPTER = """
import sys
sys.path.insert(0, {bench!r})
import common
common.make_adapters(common.load_smollm2(), 1, {directory!r}, seed=7)
"""


def make_adapter(tmp):
    """A random r=8 q,v adapter, made in a child process: torch work on this process's main thread slowed the
    direct engine's thread afterwards (measured: ~20 % on decode), which would tilt the comparison."""
    directory = tmp / "adapter"
    subprocess.run([sys.executable, "-c", MAKE_ADAPTER.format(bench=str(Path(__file__).resolve().parent),
                                                              directory=str(directory))],
                   cwd=common.ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return directory / "a0"


def upload_adapter(http, path):
    """Uploads the adapter folder as a zip; returns the platform's id for it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for f in path.iterdir():
            archive.write(f, f"bench-adapter/{f.name}")
    response = http.post("/api/v1/adapters", data={"name": "bench-adapter", "base_model": MODEL},
                         files={"file": ("adapter.zip", buffer.getvalue(), "application/zip")})
    if response.status_code != 201:
        raise RuntimeError(f"adapter upload refused: {response.status_code} {response.text}")
    return response.json()["model"]


# ---- main -----------------------------------------------------------------------------------------------------------
def main():
    args = common.parse_args(__doc__.splitlines()[0])
    n_base, n_adapter, n_probes = (5, 2, 5) if args.quick else (20, 8, 20)
    max_tokens = 8 if args.quick else 16
    concurrent_tokens = 16 if args.quick else 32
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop what we started
    import httpx
    import redis

    from gpu_runtime.generation import AdapterRef

    load_before = common.load_average()
    config = common.ensure_model_imported()
    tmp = Path(tempfile.mkdtemp(prefix="vajra-bench-platform-"))
    platform = Platform(tmp, max_batch=MAX_BATCH)
    engine = store = http = None
    results = {}
    try:
        adapter_path = make_adapter(tmp)
        print("starting redis, daphne, a runtime node and the control worker ...", flush=True)
        platform.start()
        node_loaded = re.findall(r"base model .*", (tmp / "runtime.log").read_text(errors="replace"))
        print(f"  platform ready in {platform.ready_s:.1f} s; node: {node_loaded[:1]}", flush=True)
        from gpu_runtime.node import build_engine

        direct_config = common.runtime_config(redis_url=platform.redis_url, max_batch=MAX_BATCH, node_name="direct",
                                              adapter_cache_dir=tmp / "direct-adapter-cache")
        def build():  # as gpu_runtime.node.Node._load does it: built and started on a loader thread
            built = build_engine(direct_config)
            built[2].start()
            return built

        base, store, engine = common.on_loader_thread(build)
        prompt_tokens = [len(base.tokenizer(p).input_ids) for p in PROMPTS]
        block = engine.prefix_cache.block if engine.prefix_cache else 16
        if max(prompt_tokens) > block:  # no prefix-cache hit on either side: both run every prompt in full
            raise RuntimeError(f"prompts must be <= {block} tokens, got {max(prompt_tokens)}")
        client = redis.Redis.from_url(platform.redis_url, socket_timeout=700)  # blocking XREADs of up to 600 s
        http = httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {platform.secret}"},
                            timeout=600)
        results["base"] = latency("base model", engine, client, http, PROMPTS[:n_base], max_tokens)
        results["probes"] = probes(http, n_probes)
        results["web_steps"] = web_breakdown(platform, n_probes)
        adapter_id = upload_adapter(http, adapter_path)
        ref = AdapterRef("bench-adapter", 1, str(adapter_path), tier="cold")
        results["adapter"] = latency(f"adapter {adapter_id}", engine, client, http, PROMPTS[n_base:n_base + n_adapter],
                                     max_tokens, adapter=ref, adapter_id=adapter_id)
        results["concurrency"] = concurrency(engine, platform.url, platform.secret, client, PROMPTS[:CONCURRENT],
                                             concurrent_tokens, args.quick)
    except BaseException:
        for proc in platform.procs:
            print(f"--- {proc.name} log tail\n{proc.tail(1500)}", file=sys.stderr)
        raise
    finally:
        if http is not None:
            http.close()
        if engine is not None:
            engine.stop()
        if store is not None:
            store.shutdown()
        platform.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, config, platform.ready_s, node_loaded, args.quick, load_before, prompt_tokens, MAX_BATCH)

if __name__ == "__main__":
    main()
