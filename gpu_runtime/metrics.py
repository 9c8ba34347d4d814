"""/metrics on a runtime node: prometheus_client's HTTP server on ``VAJRA_METRICS_PORT`` (default 9108, 0 turns
it off) and ``VAJRA_METRICS_ADDR`` (default 127.0.0.1; 0.0.0.0 in a pod), started by the worker.

Nothing is added to the engine's hot path: a custom collector reads, when Prometheus scrapes, what the engine,
the adapter store and the prefix cache already count (tokens, decode steps, busy and training time, tier
moves with their timings, cache lookups). One figure is sampled instead, on a thread of its own: the batch
size per decode step, from the steps taken between two samples (every 50 ms) at the batch size seen.
Adapter load latencies come from the store's log of recent moves (its last 1000), turned into histogram
buckets at each scrape; ``vajra_runtime_adapter_moves_total`` counts every move exactly.

Django-free, like the rest of the runtime.
"""

import logging
import os
import threading
from collections import Counter

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .config import ConfigError

log = logging.getLogger("vajra.runtime.metrics")

DEFAULT_PORT = 9108
LOAD_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SAMPLE_SECONDS = 0.05

# Every family this module exports (tests and platform/monitoring check their references against it).
METRIC_NAMES = (
    "vajra_runtime_info", "vajra_runtime_model_loaded", "vajra_runtime_tokens_generated", "vajra_runtime_decode_steps",
    "vajra_runtime_batch_size", "vajra_runtime_running_rows", "vajra_runtime_max_batch", "vajra_runtime_queue_depth",
    "vajra_runtime_inference_seconds", "vajra_runtime_training_seconds", "vajra_runtime_busy_ratio",
    "vajra_runtime_training_micro_steps", "vajra_runtime_training_jobs", "vajra_runtime_training_turns_held",
    "vajra_runtime_adapters", "vajra_runtime_adapter_slots", "vajra_runtime_adapter_moves",
    "vajra_runtime_adapter_load_seconds", "vajra_runtime_adapter_evictions", "vajra_runtime_adapter_device_hits",
    "vajra_runtime_slot_fragmentation", "vajra_runtime_prefix_cache_lookups", "vajra_runtime_prefix_cache_hits",
    "vajra_runtime_prefix_cache_hit_ratio", "vajra_runtime_prefix_cache_tokens_saved",
    "vajra_runtime_prefix_cache_bytes", "vajra_runtime_prefetch_predictions", "vajra_runtime_prefetch_hits",
)


def metrics_address():
    """(addr, port) from the environment; port 0 means no metrics server."""
    raw = os.environ.get("VAJRA_METRICS_PORT", "").strip()
    try:
        port = int(raw) if raw else DEFAULT_PORT
    except ValueError:
        raise ConfigError(f"VAJRA_METRICS_PORT={raw!r} is not an integer.") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"VAJRA_METRICS_PORT={port} is outside [0, 65535] (0 turns the metrics server off).")
    return os.environ.get("VAJRA_METRICS_ADDR", "").strip() or "127.0.0.1", port


class Buckets:
    """Cumulative histogram counts kept outside the hot path: observe() from the collector or the sampler."""

    def __init__(self, bounds):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value, times=1):
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += times
                break
        else:
            self.counts[-1] += times
        self.sum += value * times

    def family_buckets(self):
        running, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class BatchSampler:
    """Every ``interval`` s: the decode steps taken since the last look, each counted at the current batch size."""

    def __init__(self, node, interval=SAMPLE_SECONDS):
        self.node = node
        self.interval = interval
        self.buckets = Buckets(BATCH_BUCKETS)
        self._lock = threading.Lock()
        self._steps = 0
        self._stop = threading.Event()
        self._thread = None

    def sample(self):
        engine = self.node.engine
        if engine is None:
            return
        steps, rows = engine.steps, len(engine.rows)
        with self._lock:
            taken, self._steps = steps - self._steps, steps
            if taken > 0 and rows > 0:
                self.buckets.observe(rows, taken)

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="metrics-batch-sampler", daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # never let a metrics sample take anything down
                log.debug("batch sample failed", exc_info=True)

    def stop(self):
        self._stop.set()

    def snapshot(self):
        with self._lock:
            return self.buckets.family_buckets(), self.buckets.sum


class MoveLatencies:
    """The store's recent tier moves, each observed once, into latency buckets by (source, target, tier)."""

    def __init__(self):
        self.buckets = {}
        self.seen = 0
        self.unobserved = 0  # moves that left the store's log between two scrapes (counted, not timed)

    def update(self, store):
        # The store appends to its move log and counts the move under its lock; reading both under it keeps
        # them in step (iterating the deque while the loader thread appends would raise).
        with store._lock:
            total = sum(n for name, n in store.counters.items() if "->" in name)
            new = total - self.seen
            recent = list(store.moves)[-new:] if new > 0 else []
            tiers = {key: store.tier(key) for key, *_ in recent}
        self.seen = total
        self.unobserved += max(new - len(recent), 0)
        for key, source, target, ms in recent:
            labels = (source, target, tiers[key])
            self.buckets.setdefault(labels, Buckets(LOAD_BUCKETS_S)).observe(ms / 1000)


class RuntimeCollector:
    """Reads ``node`` (gpu_runtime.node.Node or anything with config, engine, store, prefetcher, base)."""

    def __init__(self, node, sampler=None):
        self.node = node
        self.sampler = sampler
        self.moves = MoveLatencies()
        self._lock = threading.Lock()

    def describe(self):
        return []

    def collect(self):
        with self._lock:
            return list(self._collect())

    def _collect(self):
        node, name = self.node, self.node.config.node_name
        engine, store, base = node.engine, node.store, node.base

        def gauge(metric, doc, value, labels=None):
            family = GaugeMetricFamily(metric, doc, labels=["node", *(labels or ())])
            if isinstance(value, dict):
                for key, v in value.items():
                    family.add_metric([name, *((key,) if isinstance(key, str) else key)], v)
            else:
                family.add_metric([name], value)
            return family

        def counter(metric, doc, value, labels=None):
            family = CounterMetricFamily(metric, doc, labels=["node", *(labels or ())])
            if isinstance(value, dict):
                for key, v in value.items():
                    family.add_metric([name, *((key,) if isinstance(key, str) else key)], v)
            else:
                family.add_metric([name], value)
            return family

        info = GaugeMetricFamily("vajra_runtime_info", "The node's base model, device and dtype",
                                 labels=["node", "base_model", "device", "dtype"])
        info.add_metric([name, node.config.base_model, base.device if base else "unknown",
                         base.dtype if base else "unknown"], 1)
        yield info
        yield gauge("vajra_runtime_model_loaded", "1 once the base model is resident and the engine runs",
                    1 if engine is not None else 0)
        if engine is None:
            return

        yield counter("vajra_runtime_tokens_generated", "Tokens generated (rate = tokens/s)", engine.tokens_out)
        yield counter("vajra_runtime_decode_steps", "Decode steps run (one per batch step)", engine.steps)
        if self.sampler is not None:
            buckets, total = self.sampler.snapshot()
            batch = HistogramMetricFamily("vajra_runtime_batch_size", "Rows per decode step (sampled)",
                                          labels=["node"])
            batch.add_metric([name], buckets, total)
            yield batch
        yield gauge("vajra_runtime_running_rows", "Requests in the running batch", len(engine.rows))
        yield gauge("vajra_runtime_max_batch", "The engine's batch rows", engine.max_batch)
        yield gauge("vajra_runtime_queue_depth", "Requests submitted and waiting to join the batch",
                    engine.queue_depth)
        yield counter("vajra_runtime_inference_seconds", "Engine time spent on inference forward passes",
                      engine.busy_ms / 1000)
        yield counter("vajra_runtime_training_seconds", "Engine time spent on training micro-steps",
                      engine.training.ms / 1000)
        yield gauge("vajra_runtime_busy_ratio", "Share of time the engine computed since it started "
                    "(windowed: rate of the inference + training seconds)", engine.busy_ratio())
        yield counter("vajra_runtime_training_micro_steps", "Training micro-steps run", engine.training.micro_steps)
        yield gauge("vajra_runtime_training_jobs", "Training jobs on the engine (the first one trains)",
                    len(engine.training.runs))
        yield counter("vajra_runtime_training_turns_held", "Training turns held back for a predicted request",
                      engine.training.held)

        if store is not None:
            yield from self._adapters(name, store, gauge, counter)
        cache = engine.prefix_cache
        if cache is not None:
            stats = cache.stats()
            yield counter("vajra_runtime_prefix_cache_lookups", "Prompt-prefix cache lookups", stats["lookups"])
            yield counter("vajra_runtime_prefix_cache_hits", "Lookups that reused cached KV", stats["hits"])
            yield gauge("vajra_runtime_prefix_cache_hit_ratio", "Hits / lookups since start", stats["hit_rate"])
            yield counter("vajra_runtime_prefix_cache_tokens_saved", "Prompt tokens not recomputed",
                          stats["tokens_saved"])
            yield gauge("vajra_runtime_prefix_cache_bytes", "KV bytes held by the prefix cache", stats["bytes"])
        prefetcher = getattr(node, "prefetcher", None)
        if prefetcher is not None:
            stats = prefetcher.stats()
            yield counter("vajra_runtime_prefetch_predictions", "Arrivals the prefetcher had predicted a time for",
                          stats.get("predictions", 0))
            yield counter("vajra_runtime_prefetch_hits", "Predicted arrivals that found their adapter ready",
                          stats.get("hits", 0))

    def _adapters(self, name, store, gauge, counter):
        self.moves.update(store)
        with store._lock:
            where = store.census()
            counts = Counter(store.counters)
            slots = store.pool.capacity
        yield gauge("vajra_runtime_adapters", "Adapter versions by where they are", where, labels=["location"])
        yield gauge("vajra_runtime_adapter_slots", "Device adapter slots (all rank buckets)", slots)
        moves = {tuple(move.split("->")): n for move, n in counts.items() if "->" in move}
        yield counter("vajra_runtime_adapter_moves", "Adapter moves between tiers (object -> disk -> host -> device)",
                      moves, labels=["source", "target"])
        latency = HistogramMetricFamily("vajra_runtime_adapter_load_seconds", "Time of each adapter move, by the "
                                        "adapter's tier", labels=["node", "source", "target", "tier"])
        for labels, buckets in sorted(self.moves.buckets.items()):
            latency.add_metric([name, *labels], buckets.family_buckets(), buckets.sum)
        yield latency
        yield counter("vajra_runtime_adapter_evictions", "Adapters evicted, by the tier they left",
                      {"device": counts["device evictions"], "host": counts["host evictions"]}, labels=["location"])
        yield counter("vajra_runtime_adapter_device_hits", "Activations that found the adapter in a device slot",
                      counts["device hits"])
        yield gauge("vajra_runtime_slot_fragmentation", "Share of occupied slot memory that is rank padding",
                    store.fragmentation_index())


class MetricsServer:
    def __init__(self, server, thread, sampler):
        self.server, self.thread, self.sampler = server, thread, sampler

    @property
    def port(self):
        return self.server.server_port

    def stop(self):
        self.sampler.stop()
        self.server.shutdown()
        self.server.server_close()


def node_registry(node, sampler=None):
    """A registry with the node's collector and the process's own metrics (CPU, memory, GC)."""
    registry = CollectorRegistry()
    registry.register(RuntimeCollector(node, sampler))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def start_metrics_server(node, addr=None, port=None):
    """Serves the node's metrics; None when turned off or the port is taken (the node serves on without)."""
    env_addr, env_port = metrics_address()
    addr, port = addr or env_addr, env_port if port is None else port
    if not port:
        return None
    sampler = BatchSampler(node)
    try:
        server, thread = start_http_server(port, addr=addr, registry=node_registry(node, sampler))
    except OSError as exc:
        log.warning("metrics server not started on %s:%s: %s", addr, port, exc)
        return None
    sampler.start()
    log.info("metrics on http://%s:%s/metrics", addr, port)
    return MetricsServer(server, thread, sampler)
