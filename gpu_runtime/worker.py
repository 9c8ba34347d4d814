"""The runtime node's entry: a Celery worker (threads pool, never prefork) on queue ``node.<name>``.

    celery -A gpu_runtime.worker worker --pool threads --concurrency 64

Each ``runtime.infer`` task holds a pool thread while its request waits in the engine, so the concurrency is how
many requests reach the engine's per-tenant admission queues (gpu_runtime.admission), where tenants take turns;
tasks beyond it wait in the node's Celery queue, first come, first served, behind whatever came first. A waiting
thread costs next to nothing: keep the concurrency at least what the tenants' quotas may put on this node.
On start it loads the base model once (kept resident) and heartbeats to the ``control`` queue. Its
Celery app is configured from environment variables only; it never imports Django.
"""

import logging
import os
import resource
import threading
import time
from collections import OrderedDict, deque
from datetime import UTC, datetime

from celery import Celery, signals
from kombu import Queue

from . import broker, logs
from .config import RuntimeConfig
from .contract import (
    CONTROL_QUEUE,
    SUPERSEDED,
    TASK_INFER,
    TASK_INFERENCE_FINISHED,
    TASK_INFERENCE_STARTED,
    TASK_NODE_HEARTBEAT,
    ContractError,
    Heartbeat,
    node_queue,
)
from .metrics import metrics_address, start_metrics_server
from .prefetch import Prefetcher, PrefetchLoop
from .redis_url import celery_url
from .streams import REDIS_DOWN

log = logging.getLogger("vajra.runtime.worker")

config = RuntimeConfig.from_env()
metrics_addr, metrics_port = metrics_address()  # read now: a bad value stops the worker at start

# Log lines name the request being served: the id that came with the task (or the inference request's own),
# and, as JSON (VAJRA_LOG_FORMAT=json), this node too.
logs.carry_request_ids(logs.request_id_var)
if logs.log_format() == "json":
    logs.json_logs_in_celery(logs.JsonFormatter(static={"node": config.node_name}))

broker.install()
# No fixups: Celery's Django fixup would set Django up whenever DJANGO_SETTINGS_MODULE is in the
# environment (it is, under `make up`), and the runtime must stay Django-free. The worker imports the task
# modules named in include when it starts: gpu_runtime.train_task registers runtime.train on this app (it
# imports this module, so this module does not import it).
app = Celery("vajra-runtime", fixups=[], include=["gpu_runtime.train_task"])
app.conf.update(
    broker_url=celery_url(config.redis_url),
    result_backend=celery_url(config.redis_url),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_soft_time_limit=int(os.environ.get("CELERY_TASK_SOFT_TIME_LIMIT", 300)),
    task_time_limit=int(os.environ.get("CELERY_TASK_TIME_LIMIT", 330)),
    broker_connection_retry_on_startup=True,
    task_queues=[Queue(node_queue(config.node_name))],
    task_default_queue=node_queue(config.node_name),
    worker_hijack_root_logger=False,
    # An unacknowledged task is redelivered after the visibility timeout: it must outlast a training job.
    broker_transport_options={"visibility_timeout": config.train_time_limit_s + 600},
)


class Node:
    """This process's node: the resident base model and the heartbeat thread."""

    def __init__(self, config):
        self.config = config
        self.started_at = datetime.now(UTC).isoformat()
        self.base = self.store = self.engine = None
        self.prefetcher = Prefetcher(lookahead_ms=config.prefetch_lookahead_ms)
        self.prefetch_loop = None
        # key -> AdapterRef of recent requests: the prefetcher speaks in keys, prepare() needs the ref
        self.adapter_refs = OrderedDict()
        self.load_error = None
        self.redis_run_id = None  # the Redis instance this node last saw (check_redis_restart)
        self.ready = threading.Event()
        self.metrics = None
        self._stop = threading.Event()
        self._threads = []

    def start(self):
        self.metrics = start_metrics_server(self, metrics_addr, metrics_port)  # /metrics (gpu_runtime.metrics)
        for target, name in ((self._load, "base-model-loader"), (self._heartbeat_loop, "heartbeat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def observe(self, request):
        """A request arrived: the prefetcher learns its adapter's arrival pattern (Algorithm 1)."""
        if request.adapter is None or self.store is None:
            return
        from .adapter_store import adapter_key

        key = adapter_key(request.adapter)
        self.adapter_refs[key] = request.adapter
        self.adapter_refs.move_to_end(key)
        while len(self.adapter_refs) > self.prefetcher.max_adapters:
            self.adapter_refs.popitem(last=False)
        self.prefetcher.observe(key, time.monotonic(), tier=self.store.where(key))

    def _prefetch_to_host(self, key):  # disk targets too: the store's smallest move up is to host RAM
        ref = self.adapter_refs.get(key)
        if ref is not None:
            self.store.prepare(ref)

    def _prefetch_to_device(self, key):
        ref = self.adapter_refs.get(key)
        if ref is None:
            return

        def activate(future):  # slot copies happen on the engine thread only
            if future.exception() is None:
                self.engine.call(lambda: self.store.activate(key, acquire=False))

        self.store.prepare(ref).add_done_callback(activate)

    def stop(self):
        self._stop.set()
        if self.metrics:
            self.metrics.stop()
        if self.prefetch_loop:
            self.prefetch_loop.stop()
        if self.engine:
            self.engine.stop()
        if self.store:
            self.store.shutdown()

    def require_engine(self, timeout=600):
        if not self.ready.wait(timeout) or self.engine is None:
            raise RuntimeError(f"node {self.config.node_name} has no engine: {self.load_error or 'still loading'}")
        return self.engine

    def _load(self):
        try:
            self.base, self.store, self.engine = build_engine(self.config)
            self.engine.start()
            self.prefetch_loop = PrefetchLoop(self.prefetcher, self.store.where, to_device=self._prefetch_to_device,
                                              to_host=self._prefetch_to_host, moves=self.store.moves)
            self.prefetch_loop.start()
        except Exception as exc:
            self.load_error = str(exc)
            log.exception("base model failed to load")
        self.ready.set()
        self.send_heartbeat()

    def heartbeat(self):
        memory = {"host_max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        device, dtype = "unknown", "unknown"
        if self.base is not None:
            device, dtype = self.base.device, self.base.dtype
            if device.startswith("cuda"):
                import torch

                memory["device_allocated"] = torch.cuda.memory_allocated()
        return Heartbeat(
            node=self.config.node_name,
            started_at=self.started_at,
            sent_at=datetime.now(UTC).isoformat(),
            base_model=self.config.base_model,
            device=device,
            dtype=dtype,
            model_loaded=self.base is not None,
            memory=memory,
            adapters=self.store.summary() if self.store else {},
            base_architecture=self.base.manifest["architecture"] if self.base else {},
            context_length=self.engine.max_context if self.engine else 0,
            resident=self.store.resident() if self.store else {},
            prefix_cache=self.engine.prefix_cache.stats() if self.engine and self.engine.prefix_cache else {},
            prefetch=self.prefetcher.stats(),
            queue_depth=self.engine.queue_depth + len(self.engine.rows) if self.engine else 0,
            busy_ratio=round(self.engine.busy_ratio(), 4) if self.engine else 0.0,
            max_batch=self.config.max_batch,
        )

    def check_redis_restart(self):
        """Sends recent final events again when Redis is a new instance (its run id changed): the old one may have
        taken their messages down with it. Returns how many were sent again."""
        try:
            run_id = _streams().redis.info("server")["run_id"]
        except REDIS_DOWN:
            return 0
        previous = self.redis_run_id
        finals = [] if previous in (None, run_id) else recent_finals.recent()
        if finals:
            log.warning("Redis restarted (run id %s, was %s): reporting %d recent final events again", run_id,
                        previous, len(finals))
        for request_id, final in finals:
            send_control(TASK_INFERENCE_FINISHED, [request_id, final])
        self.redis_run_id = run_id  # only once all went: a failure tries again at the next beat
        return len(finals)

    def send_heartbeat(self):
        try:
            self.check_redis_restart()
        except Exception:  # the broker went away again: the next beat tries again
            log.warning("final events not sent again", exc_info=True)
        try:
            app.send_task(TASK_NODE_HEARTBEAT, args=[self.heartbeat().to_json()], queue=CONTROL_QUEUE,
                          expires=self.config.heartbeat_seconds * 3)
        except Exception:  # the broker may be restarting; the next beat tries again
            log.warning("heartbeat not sent", exc_info=True)

    def _heartbeat_loop(self):
        while not self._stop.wait(self.config.heartbeat_seconds):
            self.send_heartbeat()


def build_engine(config):
    """Frozen Core + slot pool + adapter store + engine, from the model store."""
    from .adapter_store import AdapterStore
    from .adapter_validation import BaseFacts
    from .base_model import load_base_model
    from .engine import Engine
    from .lora import SlotPool
    from .prefix_cache import PrefixCache
    from .streams import StreamWriter

    base = load_base_model(config)
    facts = BaseFacts.from_manifest(base.manifest, aliases=HF_ALIASES.get(config.base_model, ()))
    pool = SlotPool(base.model, facts, config.slot_buckets)
    store = AdapterStore(pool, facts, disk_dir=config.adapter_cache_dir, host_budget_bytes=config.host_budget_bytes,
                         disk_budget_bytes=config.disk_budget_bytes, eviction_threshold=config.eviction_threshold,
                         max_rank=config.max_lora_rank)
    streams = StreamWriter.from_url(config.redis_url, ttl_seconds=config.stream_ttl_seconds)
    prefix_cache = PrefixCache(config.prefix_cache_bytes) if config.prefix_cache_bytes else None
    return base, store, Engine(base, store, streams, max_batch=config.max_batch, prefix_cache=prefix_cache,
                               training_every=config.training_every,
                               training_preemption=config.training_preemption)


# Names adapters trained elsewhere carry in base_model_name_or_path for the same weights.
HF_ALIASES = {"smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct",)}

node = Node(config)


@signals.worker_ready.connect
def _on_worker_ready(**_):
    node.start()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_):
    node.stop()


# What the control plane bills from must reach it through a broker restart: a send is retried for about a minute
# (kombu reconnects between tries) before the task fails loudly. Heartbeats are not: the next beat replaces one.
CONTROL_RETRY = {"max_retries": 60, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 1.0}


def send_control(name, args):
    app.send_task(name, args=args, queue=CONTROL_QUEUE, retry=True, retry_policy=CONTROL_RETRY)


class RecentFinals:
    """The final events this node reported in the last ``window_s``. A Redis that restarts without its data loses
    the ones still queued for the control worker, so the heartbeat sends these again when it sees a new Redis (the
    control plane records each request once, so a second copy changes nothing)."""

    def __init__(self, window_s=120, limit=10_000):
        self.window_s = window_s
        self._finals = deque(maxlen=limit)
        self._lock = threading.Lock()

    def add(self, request_id, final):
        with self._lock:
            self._finals.append((time.monotonic(), request_id, final))

    def recent(self):
        cutoff = time.monotonic() - self.window_s
        with self._lock:
            while self._finals and self._finals[0][0] < cutoff:
                self._finals.popleft()
            return [(request_id, final) for _, request_id, final in self._finals]


recent_finals = RecentFinals()


def report_finished(request_id, final):
    recent_finals.add(request_id, final)
    send_control(TASK_INFERENCE_FINISHED, [request_id, final])


def _error(code, message):
    return {"finish_reason": "error", "error": {"code": code, "message": message}}


@app.task(name=TASK_INFER, acks_late=True)
def infer(payload):
    """Runs one inference request to its end; its tokens go to the request's Redis Stream."""
    from .requests import InferenceRequest

    logs.default_request_id(payload.get("request_id") if isinstance(payload, dict) else None)
    try:
        request = InferenceRequest.from_json(payload)
    except ContractError as exc:
        result = _error("invalid_request", str(exc))
        if isinstance(payload, dict) and isinstance(payload.get("request_id"), str):
            _streams().final(payload["request_id"], result)
        return result
    try:
        final, current = _streams().run_state(request.request_id)
    except REDIS_DOWN:  # Redis restarting: whatever it held is gone with it, so this is no known redelivery
        final, current = None, None
    if final is None and current is not None and current != request.attempt:
        # A superseded attempt (its node was lost and the request went to another node): the current attempt
        # reports the request's end; this one does nothing.
        log.info("request %s: attempt %s superseded by attempt %s", request.request_id, request.attempt, current)
        return {"superseded": request.attempt, "current": current}
    if final is None and _cancelled_before_start(request):
        from .engine import unadmitted_final

        final = {**unadmitted_final(time.perf_counter(), "cancelled"),
                 **({"attempt": request.attempt} if request.attempt > 1 else {})}
        _streams().final(request.request_id, final)
    if final is None:  # not a redelivery of a request that already ran: run it (never twice)
        engine = node.require_engine()
        node.observe(request)
        handle = engine.submit(request)
        send_control(TASK_INFERENCE_STARTED, [request.request_id, config.node_name, request.attempt])
        final = handle.wait()
        if final.get("finish_reason") == SUPERSEDED:  # another node runs the current attempt and reports it
            return final
    # the control plane records usage from this (idempotent on the request id)
    report_finished(request.request_id, final)
    return final


def _cancelled_before_start(request):
    """Whether the request was cancelled while its task waited in the node's queue: it ends ``cancelled`` without
    reaching the engine (no prefill, no token, 0 GPU-ms: the ledger bills it nothing)."""
    return request.request_id in _streams().cancelled([request.request_id])


@app.task(name="runtime.cancel")
def cancel(request_id):
    """Cancels a request; the engine drops its row within one step (the web may also set the key itself)."""
    from .contract import cancel_key

    _streams().redis.set(cancel_key(request_id), 1, ex=config.stream_ttl_seconds)
    return {"cancel_requested": request_id}


@app.task(name="runtime.prefetch")
def prefetch(adapter):
    """Moves an adapter to this node's disk and host RAM ahead of its requests."""
    from .requests import AdapterRef

    ref = AdapterRef(**adapter)
    node.require_engine()
    node.store.prepare(ref).result(timeout=120)
    return {"where": node.store.where((ref.adapter_id, ref.version))}


@app.task(name="runtime.set_tier")
def set_tier(adapter, tier):
    """hot: pinned in a device slot; warm: disk + host RAM; cold: object storage only."""
    from .adapter_store import adapter_key
    from .requests import AdapterRef

    ref = AdapterRef(**{**adapter, "tier": tier})
    engine = node.require_engine()
    future = node.store.set_tier(ref, tier)
    if future is not None:
        future.result(timeout=120)
    if tier == "hot":
        engine.call(lambda: node.store.activate(adapter_key(ref), acquire=False)).result(timeout=60)
    return {"where": node.store.where(adapter_key(ref)), "tier": tier}


@app.task(name="runtime.evict")
def evict(adapter_id, version, to="host"):
    engine = node.require_engine()
    engine.call(lambda: node.store.evict((adapter_id, int(version)), to=to)).result(timeout=60)
    return {"where": node.store.where((adapter_id, int(version)))}


@app.task(name="runtime.validate")
def validate(path):
    """Validates adapter files against this node's base model (typed refusal or the adapter's facts)."""
    from .adapter_validation import AdapterRejected, validate_adapter

    node.require_engine()
    try:
        facts = validate_adapter(path, node.store.base_facts, max_rank=config.max_lora_rank)
    except AdapterRejected as exc:
        return {"ok": False, "error": exc.to_json()}
    return {"ok": True, "rank": facts.rank, "target_modules": facts.target_modules, "dtype": facts.dtype}


_stream_writer = None


def _streams():
    global _stream_writer
    if _stream_writer is None:
        from .streams import StreamWriter

        _stream_writer = StreamWriter.from_url(config.redis_url, ttl_seconds=config.stream_ttl_seconds)
    return _stream_writer


@app.task(name="runtime.ping")
def ping():
    """Round trip through the node's queue: what is loaded and where."""
    beat = node.heartbeat().to_json()
    beat["pong_at"] = time.time()
    if node.engine is not None:  # inference forward time, which the requests' gpu_ms split among them exactly
        beat["busy_ms"] = round(node.engine.busy_ms, 3)
    if node.load_error:
        beat["load_error"] = node.load_error
    return beat

