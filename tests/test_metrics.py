"""/metrics: on web, refused without a staff session or the metrics token, and the platform's
gauges computed from the rows; on a runtime node, the collector's figures after real requests on the tiny
engine, and its HTTP server; the monitoring files (alert rules, scrape config, Grafana dashboard) parse and
name only metrics that exist."""

import json
import os
import re
import socket
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
import yaml
from django.utils import timezone
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fleet.models import ScaleUpSignal
from gpu_runtime import metrics as runtime_metrics
from gpu_runtime.contract import node_queue
from serving.models import InferenceRequest
from tests.billing_helpers import adapter_version, finish, submitted
from tests.factories import make_node, session_client
from vajra import metrics as web_metrics
from vajra.redis import get_redis

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "platform" / "monitoring"
TOKEN = "metrics-token-for-the-tests-0123456789"


def samples(text):
    """{(sample name, frozenset(labels)): value} of an exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found, name, **labels):
    return found[(name, frozenset(labels.items()))]


# ---- web --------------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _fresh_collector():
    web_metrics.collector.clear()
    yield
    web_metrics.collector.clear()


@pytest.fixture
def staff(db):
    from tenants.models import User

    return User.objects.create_user(email="ops@vajra.test", password="correct horse battery staple", is_staff=True)


def test_metrics_are_refused_without_a_staff_session_or_the_token(client, alice_client, settings):
    settings.VAJRA_METRICS_TOKEN = TOKEN
    assert client.get("/metrics").status_code == 403
    assert alice_client.get("/metrics").status_code == 403  # a tenant owner is not staff
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token-of-the-same-len-0123456").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Api-Key {TOKEN}").status_code == 403
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


def test_without_a_token_only_staff_sessions_read_metrics(client, staff, settings):
    settings.VAJRA_METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403
    assert session_client(staff).get("/metrics").status_code == 200


def test_platform_gauges_come_from_the_rows(client, acme, standard, settings):
    settings.VAJRA_METRICS_TOKEN = TOKEN
    now = timezone.now()
    up = make_node(f"gpu-{uuid.uuid4().hex[:6]}", base="smollm2-135m-instruct",
                   state={"queue_depth": 3, "busy_ratio": 0.25})
    down = make_node(f"gpu-{uuid.uuid4().hex[:6]}", base="smollm2-135m-instruct", age_s=600, state={"queue_depth": 9})
    r = get_redis()
    r.rpush(node_queue(up.name), "waiting-1", "waiting-2")
    try:
        # three hot requests finished in the window, one over the 10 ms guarantee; one queued; one warm kept
        hot = adapter_version(acme, "hot-bot", tier="hot")
        for ready_ms in (2.0, 3.0, 40.0):
            finish(acme, version=hot, ready_ms=ready_ms)
        finish(acme, version=adapter_version(acme, "warm-bot", tier="warm"), ready_ms=50.0)
        submitted(acme)
        old = submitted(acme, created_at=now - timedelta(hours=1))  # outside every window
        InferenceRequest.objects.filter(pk=old.pk).update(status=InferenceRequest.FAILED)
        signal = ScaleUpSignal.objects.create(base_model="smollm2-135m-instruct", reason="no node")
        ScaleUpSignal.objects.filter(pk=signal.pk).update(created_at=now - timedelta(hours=2))
        ScaleUpSignal.objects.create(base_model="smollm2-135m-instruct", reason="no node")
        ScaleUpSignal.objects.create(base_model="other-base", reason="no node")

        response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    finally:
        r.delete(node_queue(up.name))
    text = response.content.decode()
    found = samples(text)
    base = "smollm2-135m-instruct"
    assert value(found, "vajra_node_up", node=up.name, base_model=base) == 1
    assert value(found, "vajra_node_up", node=down.name, base_model=base) == 0
    assert value(found, "vajra_nodes", status="up") >= 1 and value(found, "vajra_nodes", status="down") >= 1
    assert value(found, "vajra_node_queue_depth", node=up.name, base_model=base) == 3
    assert value(found, "vajra_node_queue_backlog", node=up.name, base_model=base) == 2
    assert value(found, "vajra_node_busy_ratio", node=up.name, base_model=base) == 0.25
    assert ("vajra_node_queue_depth", frozenset({"node": down.name, "base_model": base}.items())) not in found
    assert value(found, "vajra_node_heartbeat_age_seconds", node=down.name, base_model=base) >= 600

    assert value(found, "vajra_inference_requests_5m", status="succeeded") == 4
    assert value(found, "vajra_inference_requests_5m", status="running") == 1
    assert value(found, "vajra_inference_requests_5m", status="failed") == 0
    assert value(found, "vajra_slo_requests_15m", tier="hot") == 3
    assert value(found, "vajra_slo_misses_15m", tier="hot") == 1
    assert value(found, "vajra_slo_miss_ratio", tier="hot") == pytest.approx(1 / 3)
    assert value(found, "vajra_slo_miss_ratio", tier="warm") == 0
    assert value(found, "vajra_slo_miss_ratio", tier="cold") == 0

    assert value(found, "vajra_scale_up_signals_total", base_model=base) == 2
    assert value(found, "vajra_scale_up_signals_5m", base_model=base) == 1
    assert value(found, "vajra_scale_up_signals_total", base_model="other-base") == 1
    # billing.metering_lag's lag over the ledger rows the finished requests wrote
    assert value(found, "vajra_metering_lag_events") == 4
    assert value(found, "vajra_metering_lag_seconds", quantile="0.95") >= 0
    assert value(found, "vajra_metrics_collect_ok") == 1
    # django-prometheus's own families are there too
    assert "django_http_requests_latency_seconds_by_view_method" in text
    assert "django_db_execute_total" in text


def test_scale_up_signals_count_up_without_rereading_old_rows(db):
    counter = web_metrics.ScaleUpSignalCount()
    now = timezone.now()
    old = ScaleUpSignal.objects.create(base_model="b", reason="r")
    ScaleUpSignal.objects.filter(pk=old.pk).update(created_at=now - timedelta(hours=1))
    assert counter.collect(now)[0] == {"b": 1}
    ScaleUpSignal.objects.create(base_model="b", reason="r")
    totals, recent = counter.collect(now)
    assert totals == {"b": 2} and recent == {"b": 1}
    # ten minutes on: the recent row has settled into the running total, once
    later = now + timedelta(minutes=10)
    assert counter.collect(later) == ({"b": 2}, {})
    assert counter.collect(later + timedelta(seconds=15)) == ({"b": 2}, {})


def test_a_database_outage_still_answers_and_says_so(monkeypatch, db):
    collector = web_metrics.VajraCollector(cache_seconds=0)

    def broken(now):
        raise RuntimeError("database down")
        yield

    monkeypatch.setattr(collector, "_from_database", broken)
    registry = CollectorRegistry()
    registry.register(collector)
    assert value(samples(generate_latest(registry).decode()), "vajra_metrics_collect_ok") == 0


def test_every_declared_web_family_is_exported(client, staff, acme, standard):
    make_node(f"gpu-{uuid.uuid4().hex[:6]}", base="b", state={"queue_depth": 1})
    ScaleUpSignal.objects.create(base_model="b", reason="r")
    finish(acme, version=adapter_version(acme, "bot", tier="warm"), ready_ms=1.0)
    text = session_client(staff).get("/metrics").content.decode()
    exported = {family.name for family in text_string_to_metric_families(text)}
    assert set(web_metrics.METRIC_NAMES) <= exported


# ---- runtime ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.runtime_fixtures import save_peft_adapter, tiny_base

    base = tiny_base()
    return base, save_peft_adapter(base, tmp_path_factory.mktemp("objects") / "a0", seed=7)


@pytest.fixture
def runtime_node(tiny, tmp_path):
    from gpu_runtime.adapter_store import AdapterStore
    from gpu_runtime.engine import Engine
    from gpu_runtime.lora import SlotPool
    from gpu_runtime.prefetch import Prefetcher
    from gpu_runtime.prefix_cache import PrefixCache
    from gpu_runtime.streams import StreamWriter
    from tests.runtime_fixtures import BASE_FACTS, runtime_model, tiny_base_model

    model = runtime_model(tiny[0])
    store = AdapterStore(SlotPool(model, BASE_FACTS, buckets={4: 2, 8: 2}), BASE_FACTS, disk_dir=tmp_path / "disk")
    base = tiny_base_model(model)
    streams = StreamWriter(redis.Redis.from_url(os.environ["REDIS_URL"]), ttl_seconds=60)
    engine = Engine(base, store, streams, max_batch=4, prefix_cache=PrefixCache(block=4))
    engine.start()
    config = SimpleNamespace(node_name="node-test", base_model="tiny-llama")
    yield SimpleNamespace(config=config, engine=engine, store=store, base=base, prefetcher=Prefetcher())
    engine.stop()
    store.shutdown()


def run_request(node, adapter_path, prompt_ids, max_tokens=6):
    from gpu_runtime.generation import AdapterRef, GenerationRequest, SamplingParams
    from tests.runtime_fixtures import words

    ref = AdapterRef(adapter_id="adapter-0", version=1, uri=str(adapter_path), tier="warm")
    request = GenerationRequest(request_id=f"req_{uuid.uuid4().hex}", prompt=words(prompt_ids), adapter=ref,
                               tenant="acme", sampling=SamplingParams(max_tokens=max_tokens))
    final = node.engine.submit(request).wait(60)
    assert final is not None and final["finish_reason"] in ("stop", "length"), final
    return final


def scrape(node, sampler=None):
    return samples(generate_latest(runtime_metrics.node_registry(node, sampler)).decode())


def test_runtime_collector_reports_what_the_engine_did(runtime_node, tiny):
    node, labels = runtime_node, {"node": "node-test"}
    before = scrape(node)
    assert value(before, "vajra_runtime_model_loaded", **labels) == 1
    assert value(before, "vajra_runtime_tokens_generated_total", **labels) == 0
    assert value(before, "vajra_runtime_info", node="node-test", base_model="tiny-llama", device="cpu",
                 dtype="float32") == 1

    prompt = [5, 17, 33, 9, 40, 41, 42, 43, 12]  # two full 4-token blocks for the prefix cache
    first = run_request(node, tiny[1], prompt)
    second = run_request(node, tiny[1], prompt)
    found = scrape(node)

    tokens = first["usage"]["completion_tokens"] + second["usage"]["completion_tokens"]
    assert value(found, "vajra_runtime_tokens_generated_total", **labels) == tokens == node.engine.tokens_out
    assert value(found, "vajra_runtime_decode_steps_total", **labels) == node.engine.steps
    assert value(found, "vajra_runtime_queue_depth", **labels) == 0
    assert value(found, "vajra_runtime_running_rows", **labels) == 0
    assert value(found, "vajra_runtime_max_batch", **labels) == 4
    assert value(found, "vajra_runtime_inference_seconds_total", **labels) == pytest.approx(
        node.engine.busy_ms / 1000)
    assert value(found, "vajra_runtime_inference_seconds_total", **labels) > 0
    assert 0 < value(found, "vajra_runtime_busy_ratio", **labels) <= 1
    assert value(found, "vajra_runtime_training_micro_steps_total", **labels) == 0

    # the adapter came up the tiers once: object -> disk -> host -> device, each move timed
    for source, target in (("object", "disk"), ("disk", "host"), ("host", "device")):
        assert value(found, "vajra_runtime_adapter_moves_total", node="node-test", source=source, target=target) == 1
        move = {"node": "node-test", "source": source, "target": target, "tier": "warm"}
        assert value(found, "vajra_runtime_adapter_load_seconds_count", **move) == 1
        assert value(found, "vajra_runtime_adapter_load_seconds_bucket", **move, le="+Inf") == 1
        assert value(found, "vajra_runtime_adapter_load_seconds_sum", **move) > 0
    assert value(found, "vajra_runtime_adapter_device_hits_total", **labels) == 1  # the second request
    assert value(found, "vajra_runtime_adapters", node="node-test", location="device") == 1
    assert value(found, "vajra_runtime_adapter_slots", **labels) == 4

    # the second request reused the first one's prompt prefix
    assert value(found, "vajra_runtime_prefix_cache_lookups_total", **labels) == 2
    assert value(found, "vajra_runtime_prefix_cache_hits_total", **labels) == 1
    assert value(found, "vajra_runtime_prefix_cache_hit_ratio", **labels) == 0.5
    assert value(found, "vajra_runtime_prefix_cache_tokens_saved_total", **labels) == 8

    # a scrape observes each move once: nothing new, nothing counted twice
    again = scrape(node)
    assert value(again, "vajra_runtime_adapter_load_seconds_count", node="node-test", source="object",
                 target="disk", tier="warm") == 1


def test_batch_sizes_are_sampled_per_decode_step():
    engine = SimpleNamespace(steps=0, rows=[])
    sampler = runtime_metrics.BatchSampler(SimpleNamespace(engine=engine))
    sampler.sample()
    engine.steps, engine.rows = 5, [object()] * 3  # five steps at batch 3
    sampler.sample()
    engine.steps = 6  # one more at batch 3... then the batch empties: an idle look counts nothing
    sampler.sample()
    engine.rows = []
    engine.steps = 6
    sampler.sample()
    buckets, total = sampler.snapshot()
    assert dict(buckets)["2.0"] == 0 and dict(buckets)["4.0"] == 6 and dict(buckets)["+Inf"] == 6
    assert total == 18


def test_a_node_without_its_engine_yet_says_so():
    node = SimpleNamespace(config=SimpleNamespace(node_name="n", base_model="b"), engine=None, store=None, base=None)
    found = scrape(node)
    assert value(found, "vajra_runtime_model_loaded", node="n") == 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_node_serves_its_metrics_over_http(runtime_node, tiny):
    run_request(runtime_node, tiny[1], [5, 6, 7])
    server = runtime_metrics.start_metrics_server(runtime_node, "127.0.0.1", free_port())
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        server.stop()
    exported = {family.name for family in text_string_to_metric_families(text)}
    assert set(runtime_metrics.METRIC_NAMES) <= exported
    assert "process_resident_memory_bytes" in text


def test_metrics_port_from_the_environment(monkeypatch):
    from gpu_runtime.config import ConfigError

    monkeypatch.delenv("VAJRA_METRICS_PORT", raising=False)
    monkeypatch.delenv("VAJRA_METRICS_ADDR", raising=False)
    assert runtime_metrics.metrics_address() == ("127.0.0.1", 9108)
    monkeypatch.setenv("VAJRA_METRICS_PORT", "0")
    assert runtime_metrics.start_metrics_server(SimpleNamespace()) is None  # 0 turns it off
    for bad in ("nine", "70000"):
        monkeypatch.setenv("VAJRA_METRICS_PORT", bad)
        with pytest.raises(ConfigError, match="VAJRA_METRICS_PORT"):
            runtime_metrics.metrics_address()


# ---- monitoring files -------------------------------------------------------------------------------------------

SUFFIXES = ("_total", "_created", "_bucket", "_sum", "_count")


def known_metric_names():
    import django_prometheus.db  # noqa: F401  (registers the database families)
    from django_prometheus.middleware import Metrics

    Metrics.get_instance()  # the HTTP families, registered by the first request otherwise
    names = set(web_metrics.METRIC_NAMES) | set(runtime_metrics.METRIC_NAMES)
    # django-prometheus's and the process's families, by their sample names (describing reads no database)
    names |= set(REGISTRY._names_to_collectors)
    names |= {"up"}  # Prometheus's own, per target
    return names


def referenced(expr):
    """Metric names in a PromQL expression: identifiers that are neither functions, keywords nor labels."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    words = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    keywords = {"and", "or", "unless", "bool", "offset", "inf", "nan", "e"}
    return {w for w in words if w not in keywords and not re.fullmatch(r"\d+[smhdwy]?", w)}


def assert_known(expr, where):
    known = known_metric_names()
    for name in referenced(expr):
        base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s) and name[: -len(s)] in known), name)
        assert base in known, f"{where}: {name!r} is not a metric VAJRA exports ({expr})"


def test_alert_rules_parse_and_name_existing_metrics():
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in alerts}
    assert {"VajraRuntimeNodeDown", "VajraSLOMissRateHigh", "VajraMeteringLagHigh", "VajraQueueDepthHigh"} <= names
    for rule in alerts:
        assert rule["expr"].strip() and rule["labels"]["severity"] in {"page", "ticket", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert_known(rule["expr"], rule["alert"])


def test_prometheus_scrape_config_reads_the_rules_and_both_targets():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert "alerts.yml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"vajra-web", "vajra-runtime"} <= set(jobs)
    assert jobs["vajra-web"]["metrics_path"] == "/metrics"
    assert jobs["vajra-web"]["authorization"]["credentials_file"]  # VAJRA_METRICS_TOKEN


def test_grafana_dashboard_parses_and_its_panels_name_existing_metrics():
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dashboard["title"] and dashboard["uid"]
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert len(exprs) >= 10
    for panel in panels:
        assert panel["title"] and panel["targets"], panel
        for target in panel["targets"]:
            assert_known(target["expr"], panel["title"])
    text = " ".join(exprs)
    for needed in ("vajra_runtime_tokens_generated_total", "vajra_runtime_batch_size_bucket",
                   "vajra_runtime_adapter_load_seconds_bucket", "vajra_runtime_prefix_cache_hit",
                   "vajra_runtime_training_micro_steps_total", "vajra_slo_miss_ratio", "vajra_node_queue_depth",
                   "vajra_metering_lag_seconds", "vajra_scale_up_signals_total"):
        assert needed in text, needed
