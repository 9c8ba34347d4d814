"""This process's runtime node: the resident base model, its adapter store and engine, the prefetcher and the
heartbeat thread. It starts when the Celery worker is ready (gpu_runtime.celery_app) and stops with it; the tasks
(gpu_runtime.tasks, gpu_runtime.training_tasks) delegate to it."""

import gc
import logging
import resource
import threading
import time
from collections import OrderedDict, deque
from datetime import UTC, datetime

from celery import signals

from .celery_app import app, config, send_control
from .contract import CONTROL_QUEUE, TASK_INFERENCE_FINISHED, TASK_NODE_HEARTBEAT, Heartbeat
from .metrics import metrics_address, start_metrics_server
from .prefetch import Prefetcher, PrefetchLoop
from .streams import REDIS_DOWN, StreamWriter

log = logging.getLogger("vajra.runtime.node")

metrics_addr, metrics_port = metrics_address()  # read now: a bad value stops the worker at start


class Node:
    """The resident base model, its adapter store and engine, and the heartbeat thread."""

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
        self._streams = None
        self._stop = threading.Event()
        self._threads = []

    @property
    def streams(self):
        """The tasks' writer of request streams (the engine has its own)."""
        if self._streams is None:
            self._streams = StreamWriter.from_url(self.config.redis_url, ttl_seconds=self.config.stream_ttl_seconds)
        return self._streams

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
        from .adapter_entry import adapter_key

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
            # looked up in this module when it runs: a wrapper put there (a test's clock) is the one called
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
            run_id = self.streams.redis.info("server")["run_id"]
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

    base = load_base_model(config)
    facts = BaseFacts.from_manifest(base.manifest, aliases=HF_ALIASES.get(config.base_model, ()))
    pool = SlotPool(base.model, facts, config.slot_buckets)
    store = AdapterStore(pool, facts, disk_dir=config.adapter_cache_dir, host_budget_bytes=config.host_budget_bytes,
                         disk_budget_bytes=config.disk_budget_bytes, eviction_threshold=config.eviction_threshold,
                         max_rank=config.max_lora_rank)
    streams = StreamWriter.from_url(config.redis_url, ttl_seconds=config.stream_ttl_seconds)
    prefix_cache = PrefixCache(config.prefix_cache_bytes) if config.prefix_cache_bytes else None
    engine = Engine(base, store, streams, max_batch=config.max_batch, prefix_cache=prefix_cache,
                    training_every=config.training_every, training_preemption=config.training_preemption)
    # Everything so far lives as long as the node (modules, the model, the slots): out of the collector's sight, so
    # that a full collection walks what serving allocates, not torch's import-time objects (~100 ms each here, on
    # whichever thread triggers it, the engine's included).
    gc.freeze()
    return base, store, engine


# Names adapters trained elsewhere carry in base_model_name_or_path for the same weights.
HF_ALIASES = {"smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct",)}


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
    """Sends a request's final (its JSON) to the control plane, which records usage from it (idempotent on the
    request id), and keeps it for a Redis restart."""
    recent_finals.add(request_id, final)
    send_control(TASK_INFERENCE_FINISHED, [request_id, final])


node = Node(config)


@signals.worker_ready.connect
def _on_worker_ready(**_):
    node.start()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_):
    node.stop()
