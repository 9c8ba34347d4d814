"""Bounded load over loopback: 64 SSE streams (48 on /v1/models/{m}/infer, half of them through an adapter, 16 on
the OpenAI chat endpoint) and 16 playground websockets, each client issuing request after request for
VAJRA_LOAD_SECONDS (default 60, as CI runs it), against real daphne, a real runtime node on tiny-llama and the
control worker. Every request must end with its final event, no response may be a 5xx (or any other refusal),
no transport may fail, and each stream's text and token count must equal the runtime's record of that request:
the deltas on its Redis Stream joined, the final event's usage, and the request row the control worker wrote.
TTFT (client side, request sent -> first delta) p50/p99 and the counts are printed in the terminal summary and
written to var/test/load_test.json."""

import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass, field

import httpx
import pytest
import redis
import websockets

from adapters.models import BaseModel
from gpu_runtime.contract import stream_key
from gpu_runtime.model_store import TINY_MODEL
from serving.models import InferenceRequest
from tests.factories import create_key
from tests.processes import ROOT, SUMMARY, start_control_worker, start_daphne, start_runtime_node, wait_for

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("VAJRA_LOAD_SECONDS", "60"))
WALL_LIMIT_S = SECONDS + 240  # the clients stop starting requests at SECONDS; this stops everything regardless
SSE_CLIENTS, OPENAI_CLIENTS, WS_CLIENTS = 48, 16, 16
MAX_TOKENS = 16
REQUEST_TIMEOUT_S = 90
ADAPTER = "load-bot"
# Room for every stream at once: the tenant's rate limits, its plan's concurrency (load_platform) and the node's
# batch and task threads.
WEB_ENV = {"VAJRA_RATE_LIMIT_PER_KEY": "1000000", "VAJRA_RATE_LIMIT_PER_TENANT": "1000000"}
CLIENTS = SSE_CLIENTS + OPENAI_CLIENTS + WS_CLIENTS


@dataclass
class Outcome:
    kind: str
    request_id: str = ""
    text: str = ""
    deltas: int = 0  # non-empty text deltas received
    completion_tokens: int | None = None
    finish_reason: str | None = None
    ttft_ms: float | None = None
    status: int | None = None
    ended: bool = False  # the stream's final event arrived
    error: str = ""
    events: list = field(default_factory=list, repr=False)


async def aiter_events(response):
    event = {}
    async for line in response.aiter_lines():
        if not line:
            if event:
                yield event.get("event", "message"), event.get("data", "")
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            event[name] = value


async def infer_once(client, i, n, adapter):
    out = Outcome("infer-adapter" if adapter else "infer")
    body = {"prompt": f"Client {i} request {n}: tell me something.", "stream": True,
            "parameters": {"temperature": 0.8 if n % 2 else 0, "max_tokens": MAX_TOKENS},
            **({"adapter_id": ADAPTER} if adapter else {})}
    started = time.perf_counter()
    async with client.stream("POST", f"/v1/models/{TINY_MODEL}/infer", json=body) as response:
        out.status = response.status_code
        if response.status_code != 200:
            out.error = (await response.aread()).decode(errors="replace")[:300]
            return out
        async for kind, data in aiter_events(response):
            payload = json.loads(data)
            if kind == "request":
                out.request_id = payload["id"]
            elif kind == "delta" and payload["text"]:
                out.ttft_ms = out.ttft_ms or (time.perf_counter() - started) * 1000
                out.text += payload["text"]
                out.deltas += 1
            elif kind == "done":
                out.ended, out.finish_reason = True, payload["finish_reason"]
                out.completion_tokens = payload["usage"]["completion_tokens"]
    return out


async def openai_once(client, i, n):
    out = Outcome("openai-chat")
    body = {"model": TINY_MODEL, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": MAX_TOKENS,
            "temperature": 0.7, "messages": [{"role": "user", "content": f"Client {i} question {n}?"}]}
    started = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        out.status = response.status_code
        if response.status_code != 200:
            out.error = (await response.aread()).decode(errors="replace")[:300]
            return out
        async for _, data in aiter_events(response):
            if data == "[DONE]":
                out.ended = out.ended and out.completion_tokens is not None
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                out.completion_tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                if choice["delta"].get("content"):
                    out.ttft_ms = out.ttft_ms or (time.perf_counter() - started) * 1000
                    out.text += choice["delta"]["content"]
                    out.deltas += 1
                if choice["finish_reason"]:
                    out.ended, out.finish_reason = True, choice["finish_reason"]
                    out.request_id = chunk["vajra"]["request_id"]
    return out


async def http_client_loop(base_url, secret, i, deadline, outcomes):
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {secret}"},
                                 timeout=REQUEST_TIMEOUT_S) as client:
        n = 0
        while n == 0 or time.monotonic() < deadline:  # at least one request each, however short the run
            try:
                if i < SSE_CLIENTS:
                    outcomes.append(await infer_once(client, i, n, adapter=i % 2 == 1))
                else:
                    outcomes.append(await openai_once(client, i, n))
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                outcomes.append(Outcome("transport", error=f"client {i}: {exc!r}"))
                return
            n += 1


async def ws_client_loop(base_url, secret, i, deadline, outcomes):
    url = base_url.replace("http://", "ws://") + "/ws/v1/playground/"
    try:
        async with websockets.connect(url, subprotocols=["vajra.v1", f"bearer.{secret}"], open_timeout=30) as ws:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert welcome["type"] == "welcome", welcome
            n = 0
            while n == 0 or time.monotonic() < deadline:
                outcomes.append(await ws_once(ws, i, n))
                n += 1
    except (OSError, websockets.WebSocketException, TimeoutError, ValueError, KeyError, AssertionError) as exc:
        outcomes.append(Outcome("transport", error=f"websocket {i}: {exc!r}"))


async def ws_once(ws, i, n):
    out = Outcome("playground")
    model = ADAPTER if n % 2 else TINY_MODEL
    await ws.send(json.dumps({"type": "chat", "model": model, "max_tokens": MAX_TOKENS, "temperature": 0.9,
                              "messages": [{"role": "user", "content": f"Socket {i}, turn {n}: hi!"}]}))
    started = time.perf_counter()
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), REQUEST_TIMEOUT_S))
        if message["type"] == "start":
            out.request_id = message["request_id"]
        elif message["type"] == "delta" and message["text"]:
            out.ttft_ms = out.ttft_ms or (time.perf_counter() - started) * 1000
            out.text += message["text"]
            out.deltas += 1
        elif message["type"] == "done":
            out.ended, out.finish_reason = True, message["finish_reason"]
            out.completion_tokens = message["usage"]["completion_tokens"]
            return out
        elif message["type"] == "error":
            out.error = json.dumps(message)[:300]
            return out


async def run_load(base_url, secret):
    deadline = time.monotonic() + SECONDS
    outcomes = []
    loops = [http_client_loop(base_url, secret, i, deadline, outcomes) for i in range(SSE_CLIENTS + OPENAI_CLIENTS)]
    loops += [ws_client_loop(base_url, secret, i, deadline, outcomes) for i in range(WS_CLIENTS)]
    tasks = [asyncio.ensure_future(loop) for loop in loops]
    done, pending = await asyncio.wait(tasks, timeout=WALL_LIMIT_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()  # a bug in the client itself fails the test here
    return outcomes, len(pending)


def runtime_record(client, request_id):
    """(joined delta text, non-empty delta count, final event) from the request's Redis Stream."""
    text, deltas, final = "", 0, None
    for _, fields in client.xrange(stream_key(request_id)):
        data = json.loads(fields[b"data"])
        if fields[b"type"] == b"delta" and data.get("text"):
            text += data["text"]
            deltas += 1
        elif fields[b"type"] == b"final":
            final = data
    return text, deltas, final


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@pytest.fixture
def load_platform(transactional_db, tiny_model_store, tmp_path, alice, acme, tiny_adapter_zip):
    from billing.models import PricePlan
    from billing.plans import ensure_default_plan

    # the concurrency quota is the plan's (billing.plans.plan_limits), read by the web through its plan cache
    ensure_default_plan()
    PricePlan.objects.filter(name="standard").update(max_concurrent_requests=4 * CLIENTS)
    procs = []
    try:
        daphne, url = start_daphne(tmp_path / "daphne.log", **WEB_ENV)
        procs.append(daphne)
        node = start_runtime_node(tiny_model_store, tmp_path / "runtime.log", name=f"load-{os.getpid()}",
                                  base_model=TINY_MODEL, concurrency=CLIENTS + 16, VAJRA_MAX_BATCH=str(CLIENTS))
        procs.append(node)
        procs.append(start_control_worker(tmp_path / "control.log", concurrency=4))
        wait_for(lambda: BaseModel.objects.filter(name=TINY_MODEL).exists(), 120, "the tiny node to register", node)
        _, secret = create_key(alice, acme)
        up = httpx.post(f"{url}/api/v1/adapters", headers={"Authorization": f"Bearer {secret}"}, timeout=60,
                        data={"name": ADAPTER, "base_model": TINY_MODEL},
                        files={"file": ("adapter.zip", tiny_adapter_zip, "application/zip")})
        assert up.status_code == 201, up.text
        yield url, secret, procs
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_load_sse_and_websockets_lose_and_duplicate_no_token(load_platform, acme):
    url, secret, procs = load_platform
    started = time.monotonic()
    outcomes, cut_off = asyncio.run(run_load(url, secret))
    wall_s = time.monotonic() - started
    assert cut_off == 0, f"{cut_off} clients were still running at the wall limit of {WALL_LIMIT_S} s"
    transport = [o.error for o in outcomes if o.kind == "transport"]
    assert not transport, transport[:5]
    requests = [o for o in outcomes if o.kind != "transport"]
    server_errors = [o for o in requests if o.status is not None and o.status >= 500]
    assert not server_errors, [(o.status, o.error) for o in server_errors[:5]]
    refused = [(o.kind, o.status, o.error) for o in requests if o.error or (o.status not in (None, 200))]
    assert not refused, refused[:5]
    unfinished = [o for o in requests if not o.ended or not o.request_id]
    assert not unfinished, unfinished[:5]
    assert {o.kind for o in requests} == {"infer", "infer-adapter", "openai-chat", "playground"}

    # Each stream against the runtime's record: its Redis Stream and the final event on it.
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    engine_ttft = []
    for o in requests:
        text, deltas, final = runtime_record(client, o.request_id)
        engine_ttft.append(final["timings"]["first_token_ms"])
        assert final is not None and final["finish_reason"] == o.finish_reason, o
        assert (o.text, o.deltas) == (text, deltas), f"{o.kind} {o.request_id}: stream differs from the runtime's"
        assert o.completion_tokens == final["usage"]["completion_tokens"] > 0, o
    assert len({o.request_id for o in requests}) == len(requests)  # no request answered twice

    # ... and against the rows the control worker wrote from those final events (it may lag behind the load).
    ids = [o.request_id for o in requests]
    wait_for(lambda: InferenceRequest.objects.filter(pk__in=ids, status="succeeded").count() == len(ids), 180,
             "the control worker to record every final event", procs[-1])
    rows = dict(InferenceRequest.objects.filter(tenant=acme).values_list("id", "completion_tokens"))
    assert len(rows) == len(requests)  # no request row without a stream, none twice
    assert all(rows[o.request_id] == o.completion_tokens for o in requests)

    ttft = [o.ttft_ms for o in requests if o.ttft_ms is not None]
    tokens = sum(o.completion_tokens for o in requests)
    figures = {"seconds": SECONDS, "wall_s": round(wall_s, 1), "streams": {"sse_infer": SSE_CLIENTS,
               "sse_openai_chat": OPENAI_CLIENTS, "websocket": WS_CLIENTS}, "requests": len(requests),
               "requests_by_kind": {k: sum(o.kind == k for o in requests) for k in sorted({o.kind for o in requests})},
               "completion_tokens": tokens, "tokens_per_s": round(tokens / wall_s, 1),
               "ttft_ms": {"p50": round(statistics.median(ttft), 1), "p99": round(percentile(ttft, 0.99), 1),
                           "max": round(max(ttft), 1)},
               # the runtime's own clock, from the task's arrival on the node: what the web and queues add is the rest
               "engine_first_token_ms": {"p50": round(statistics.median(engine_ttft), 1),
                                         "p99": round(percentile(engine_ttft, 0.99), 1)},
               "http_5xx": 0, "transport_errors": 0, "lost_or_duplicated_tokens": 0, "model": TINY_MODEL,
               "cpus": os.cpu_count()}
    out = ROOT / "var" / "test"
    out.mkdir(parents=True, exist_ok=True)
    (out / "load_test.json").write_text(json.dumps(figures, indent=2))
    SUMMARY.append(f"load test: {len(requests)} requests ({figures['requests_by_kind']}), {tokens} tokens in "
                   f"{wall_s:.0f} s ({figures['tokens_per_s']} tok/s); TTFT p50 {figures['ttft_ms']['p50']} ms, "
                   f"p99 {figures['ttft_ms']['p99']} ms (engine's clock p50 "
                   f"{figures['engine_first_token_ms']['p50']} ms); 0 5xx, 0 transport errors, "
                   f"0 tokens lost or duplicated "
                   f"(var/test/load_test.json)")
