"""/metrics on web: django-prometheus's process, HTTP and database metrics, plus the platform's own gauges.

The ``vajra_*`` families are computed from the database when Prometheus scrapes (a custom collector, cached for
a few seconds so several scrapers cost one read): runtime nodes and their queues from the heartbeats, recent
requests by status, the SLO-miss rate, metering lag and placement's scale-up signals, which the runtime
autoscaler (platform/k8s/runtime-autoscaling.yaml) reads. Every web pod exports the same values: aggregate
them with ``max``, not ``sum``.

Access: a staff session, or ``Authorization: Bearer <VAJRA_METRICS_TOKEN>`` (what Prometheus sends).
"""

import hmac
import logging
import threading
import time
from collections import Counter
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Q
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django_prometheus import middleware as django_prometheus
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .middleware import InlineHooks

log = logging.getLogger(__name__)

CACHE_SECONDS = 10
METERING_CACHE_SECONDS = 60  # billing.metering_lag reads up to 50k ledger rows
REQUESTS_WINDOW = timedelta(minutes=5)
SLO_WINDOW = timedelta(minutes=15)
SIGNALS_SETTLE = timedelta(minutes=5)  # a signal row is committed well within this after its created_at
MAX_NODES = 1000
TIERS = ("hot", "warm", "cold")

# Every family this module exports (tests and platform/monitoring check their references against it).
METRIC_NAMES = (
    "vajra_nodes", "vajra_node_up", "vajra_node_queue_depth", "vajra_node_queue_backlog", "vajra_node_busy_ratio",
    "vajra_node_heartbeat_age_seconds", "vajra_inference_requests_5m", "vajra_slo_requests_15m",
    "vajra_slo_misses_15m", "vajra_slo_miss_ratio", "vajra_metering_lag_seconds", "vajra_metering_lag_events",
    "vajra_scale_up_signals", "vajra_scale_up_signals_5m", "vajra_metrics_collect_ok",
    "vajra_metrics_collect_seconds",
)


# ---- django-prometheus's middleware, async-capable -------------------------------------------------------------
# Its classes are MiddlewareMixin-based and their hooks only touch in-memory counters; the view and template-response
# hooks are left out (the response hook labels by view anyway).
class PrometheusBeforeMiddleware(InlineHooks):
    hooks_class = django_prometheus.PrometheusBeforeMiddleware


class PrometheusAfterMiddleware(InlineHooks):
    hooks_class = django_prometheus.PrometheusAfterMiddleware

    def process_exception(self, request, exception):  # Django calls exception hooks synchronously anyway
        self.hooks.process_exception(request, exception)


# ---- the platform's gauges --------------------------------------------------------------------------------------
class ScaleUpSignalCount:
    """Placement's scale-up signals per base model since the table began, counted without rereading it:
    rows older than SIGNALS_SETTLE are added once to a running total; only the recent ones are recounted."""

    def __init__(self):
        self.settled_until = None
        self.settled = Counter()

    def collect(self, now):
        from fleet.models import ScaleUpSignal

        cutoff = now - SIGNALS_SETTLE
        older = ScaleUpSignal.objects.filter(created_at__lt=cutoff)
        if self.settled_until is not None:
            older = older.filter(created_at__gte=self.settled_until)
        self.settled.update(_counts(older, "base_model"))
        self.settled_until = cutoff
        recent = _counts(ScaleUpSignal.objects.filter(created_at__gte=cutoff), "base_model")
        return self.settled + recent, recent


def _counts(queryset, field):
    return Counter({row[field]: row["n"] for row in queryset.values(field).annotate(n=Count("pk")).order_by()})


class VajraCollector:
    def __init__(self, cache_seconds=CACHE_SECONDS):
        self.cache_seconds = cache_seconds
        self.signals = ScaleUpSignalCount()
        self._lock = threading.Lock()
        self._cached_at = self._metering_at = None
        self._families = []
        self._metering = None

    def clear(self):
        """Forgets everything read, as a new process would."""
        with self._lock:
            self._cached_at = self._metering_at = None
            self.signals = ScaleUpSignalCount()

    def describe(self):
        return []  # registering must not read the database

    def collect(self):
        with self._lock:
            if self._cached_at is None or time.monotonic() - self._cached_at >= self.cache_seconds:
                self._families = self._collect()
                self._cached_at = time.monotonic()
            return list(self._families)

    def _collect(self):
        started = time.perf_counter()
        ok = GaugeMetricFamily("vajra_metrics_collect_ok", "1 when the last collection read the database")
        try:
            families = list(self._from_database(timezone.now()))
        except Exception:  # a scrape during a database outage still answers, saying so
            log.warning("metrics: collection failed", exc_info=True)
            families = []
            ok.add_metric([], 0)
        else:
            ok.add_metric([], 1)
        took = GaugeMetricFamily("vajra_metrics_collect_seconds", "Time the last collection took")
        took.add_metric([], time.perf_counter() - started)
        return [*families, ok, took]

    def _from_database(self, now):
        yield from self._nodes(now)
        yield from self._requests(now)
        yield from self._metering_lag()
        totals, recent = self.signals.collect(now)
        signals = CounterMetricFamily("vajra_scale_up_signals", "Placement found no node for a request "
                                      "(the paper's ProvisionNewGPU), by base model", labels=["base_model"])
        signals_5m = GaugeMetricFamily("vajra_scale_up_signals_5m", "Scale-up signals in the last 5 minutes",
                                       labels=["base_model"])
        for base_model in sorted(totals):
            signals.add_metric([base_model], totals[base_model])
            signals_5m.add_metric([base_model], recent.get(base_model, 0))
        yield signals
        yield signals_5m

    def _nodes(self, now):
        from fleet.liveness import node_down_cutoff
        from fleet.models import Node

        cutoff = node_down_cutoff()
        rows = list(Node.objects.order_by("name").values_list(
            "name", "status", "base_model", "last_heartbeat_at", "state__queue_depth", "state__busy_ratio")[:MAX_NODES])
        nodes = GaugeMetricFamily("vajra_nodes", "Runtime nodes by status (up: heartbeat within the allowed misses)",
                                  labels=["status"])
        up = GaugeMetricFamily("vajra_node_up", "1 while the node heartbeats", labels=["node", "base_model"])
        depth = GaugeMetricFamily("vajra_node_queue_depth", "Requests waiting for or running on the node's engine, "
                                  "from its last heartbeat", labels=["node", "base_model"])
        backlog = GaugeMetricFamily("vajra_node_queue_backlog", "Tasks waiting in the node's broker queue "
                                    "(not yet taken by its worker)", labels=["node", "base_model"])
        busy = GaugeMetricFamily("vajra_node_busy_ratio", "Share of time the node's engine computed since it started",
                                 labels=["node", "base_model"])
        age = GaugeMetricFamily("vajra_node_heartbeat_age_seconds", "Seconds since the node's last heartbeat",
                                labels=["node", "base_model"])
        counts = Counter()
        live = []
        for name, status, base_model, last_beat, queue_depth, busy_ratio in rows:
            is_up = status == Node.UP and last_beat >= cutoff
            counts["up" if is_up else "down"] += 1
            up.add_metric([name, base_model], 1 if is_up else 0)
            age.add_metric([name, base_model], max((now - last_beat).total_seconds(), 0.0))
            if is_up:
                live.append((name, base_model))
                depth.add_metric([name, base_model], _number(queue_depth))
                busy.add_metric([name, base_model], _number(busy_ratio))
        for status in ("up", "down"):
            nodes.add_metric([status], counts[status])
        for (name, base_model), length in zip(live, _backlogs([name for name, _ in live]), strict=True):
            if length is not None:
                backlog.add_metric([name, base_model], length)
        yield from (nodes, up, depth, backlog, busy, age)

    def _requests(self, now):
        from serving.models import InferenceRequest

        by_status = _counts(InferenceRequest.objects.filter(created_at__gte=now - REQUESTS_WINDOW), "status")
        recent = GaugeMetricFamily("vajra_inference_requests_5m", "Inference requests created in the last 5 minutes "
                                   "by status", labels=["status"])
        for status, _ in InferenceRequest.STATUS_CHOICES:
            recent.add_metric([status], by_status.get(status, 0))
        yield recent

        # An SLO miss: a finished request whose adapter took longer to be ready than its tier guarantees.
        rows = {row["tier"]: row for row in InferenceRequest.objects.filter(
            created_at__gte=now - SLO_WINDOW, finished_at__isnull=False, adapter_version__isnull=False,
        ).values("tier").annotate(n=Count("pk"), broken=Count("pk", filter=Q(guarantee_broken=True))).order_by()}
        total = GaugeMetricFamily("vajra_slo_requests_15m", "Finished adapter requests in the last 15 minutes",
                                  labels=["tier"])
        misses = GaugeMetricFamily("vajra_slo_misses_15m", "Of those, the ones over their tier's adapter-ready "
                                   "guarantee", labels=["tier"])
        ratio = GaugeMetricFamily("vajra_slo_miss_ratio", "SLO misses / finished adapter requests, last 15 minutes "
                                  "(0 without requests)", labels=["tier"])
        for tier in TIERS:
            row = rows.get(tier, {"n": 0, "broken": 0})
            total.add_metric([tier], row["n"])
            misses.add_metric([tier], row["broken"])
            ratio.add_metric([tier], row["broken"] / row["n"] if row["n"] else 0.0)
        yield from (total, misses, ratio)

    def _metering_lag(self):
        if self._metering_at is None or time.monotonic() - self._metering_at >= METERING_CACHE_SECONDS:
            self._metering = _read_metering_lag()
            self._metering_at = time.monotonic()
        lag = self._metering
        if lag is None:
            return
        seconds = GaugeMetricFamily("vajra_metering_lag_seconds", "Time from a request's end on its node to its "
                                    "ledger row, last hour (quantile 1 = max)", labels=["quantile"])
        for quantile, key in (("0.5", "p50_seconds"), ("0.95", "p95_seconds"), ("1", "max_seconds")):
            if lag.get(key) is not None:
                seconds.add_metric([quantile], lag[key])
        events = GaugeMetricFamily("vajra_metering_lag_events", "Ledger rows the lag was measured over")
        events.add_metric([], lag.get("events", 0))
        yield seconds
        yield events


def _read_metering_lag():
    try:
        from billing.metering_lag import metering_lag
    except ImportError:  # billing without a metering module: no lag gauges
        return None
    return metering_lag()


def _number(value):
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def _backlogs(names):
    """LLEN of each node's Celery queue (a Redis list named like the queue); None where Redis did not answer."""
    if not names:
        return []
    from gpu_runtime.contract import node_queue

    from .redis import get_redis

    try:
        pipe = get_redis().pipeline(transaction=False)
        for name in names:
            pipe.llen(node_queue(name))
        return pipe.execute()
    except Exception:  # Redis down: the backlog is unknown, the other gauges still count
        log.warning("metrics: node queue lengths unavailable", exc_info=True)
        return [None] * len(names)


collector = VajraCollector()
_registered = False
_register_lock = threading.Lock()


def register(registry=REGISTRY):
    global _registered
    with _register_lock:
        if not _registered:
            registry.register(collector)
            _registered = True


def allowed(request):
    token = settings.VAJRA_METRICS_TOKEN
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode()):
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)


@never_cache
def metrics_view(request):
    if not allowed(request):
        log.warning("metrics: refused (no staff session or metrics token)")
        return HttpResponse("metrics: a staff session or the metrics bearer token is required\n", status=403,
                            content_type="text/plain")
    register()
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
