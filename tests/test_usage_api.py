"""GET /v1/usage/{tenant_id}/metrics (VAJRA paper A.1): buckets by hour, day and month, filters by tier,
adapter and kind, exact cost sums, who may read it, and every bad input refused with the ledger unchanged."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from billing.ledger import record_adjustment, record_training_step
from billing.models import UsageEvent
from billing.plans import period_of
from billing.selectors import money_sum, money_value
from tenants.roles import BILLING_VIEWER
from tests.billing_helpers import adapter_version, base_model, final_event, submitted
from tests.factories import create_key, key_client, make_member, record_node_final, session_client
from tests.helpers import assert_error
from training.models import Dataset, TrainingJob, TrainingStep

pytestmark = pytest.mark.usefixtures("standard")
URL = "/v1/usage/acme/metrics"


def at(text):
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def billed(tenant, when, *, version=None, gpu_ms=10.0, prompt=5, completion=7):
    row = submitted(tenant, version=version, created_at=at(when))
    record_node_final(row.id, final_event(gpu_ms=gpu_ms, prompt=prompt, completion=completion,
                                                          total_ms=0.0))
    return row


@pytest.fixture
def usage(acme):
    """October 30th to November 2nd 2025: base-model queries (cold), a warm and a hot adapter, a training step
    (1,000,000 gradients: $0.0000001 at the default $0.00000005 per million gradients)."""
    warm = adapter_version(acme, "support-bot", tier="warm")
    hot = adapter_version(acme, "hot-bot", tier="hot")
    billed(acme, "2025-10-30T23:30:00")  # cold, base model: 0.0001 + 10 ms
    billed(acme, "2025-10-31T00:30:00", version=warm, gpu_ms=25.0)  # 0.0005 + 30 ms
    billed(acme, "2025-10-31T00:45:00", version=warm, gpu_ms=5.0, prompt=1, completion=1)  # 0.0005 + 10 ms
    billed(acme, "2025-10-31T01:15:00", version=hot, gpu_ms=100.0)  # 0.002 + 100 ms
    billed(acme, "2025-11-02T10:00:00")
    dataset = Dataset.objects.create(id="ds_1", tenant=acme, name="t.jsonl", format="completion", records=10,
                                      size_bytes=10, sha256="0" * 64, storage_key="k")
    job = TrainingJob.objects.create(id="ftjob_1", tenant=acme, base_model=base_model(), adapter=warm.adapter,
                                     dataset=dataset, status=TrainingJob.RUNNING, started_at=timezone.now())
    step = TrainingStep.objects.create(job=job, step=1, gradients=1_000_000, micro_batches=1, tokens=10,
                                       compute_ms=1200.0, loss=1.0)
    TrainingStep.objects.filter(pk=step.pk).update(created_at=at("2025-11-01T12:00:00"))  # a step of November 1st
    step.refresh_from_db()
    record_training_step(job, step)
    return {"warm": warm, "hot": hot}


@pytest.fixture
def api(alice, acme):
    return key_client(create_key(alice, acme, scopes=["usage:read"])[1])


def get(client, **params):
    return client.get(URL, params)


def test_daily_buckets_by_kind_tier_and_adapter(api, usage):
    response = get(api, **{"from": "2025-10-30", "to": "2025-11-02", "granularity": "day"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["object"], body["tenant"], body["granularity"], body["currency"]) == ("usage.metrics", "acme", "day",
                                                                                       "usd")
    assert (body["from"], body["to"]) == ("2025-10-30T00:00:00Z", "2025-11-03T00:00:00Z")  # 'to' names a whole day
    got = [(r["bucket"][:10], r["kind"], r["tier"], r["adapter"], r["requests"], r["cost"]) for r in body["data"]]
    assert got == [
        ("2025-10-30", "inference", "cold", None, 1, "0.0001016667"),
        ("2025-10-31", "inference", "hot", "hot-bot", 1, "0.0020166667"),
        ("2025-10-31", "inference", "warm", "support-bot", 2, "0.0010066667"),
        ("2025-11-01", "training", None, "support-bot", 0, "0.0000001000"),  # never "1.000E-7"
        ("2025-11-02", "inference", "cold", None, 1, "0.0001016667"),
    ]
    warm = body["data"][2]
    assert (warm["prompt_tokens"], warm["completion_tokens"], warm["gpu_ms"], warm["billed_gpu_ms"],
            warm["units"], warm["gradients"]) == (6, 8, 30.0, 40, 10, 0)
    assert body["data"][3]["gradients"] == 1_000_000 and body["data"][3]["gpu_ms"] == 1200.0
    totals = body["totals"]
    assert totals["requests"] == 5 and totals["gradients"] == 1_000_000 and totals["billed_gpu_ms"] == 160
    assert totals["cost"] == str(sum(Decimal(r[5]) for r in got))


def test_hourly_and_monthly_buckets(api, usage):
    hourly = get(api, **{"from": "2025-10-31T00:00:00Z", "to": "2025-10-31T02:00:00Z", "granularity": "hour"}).json()
    assert [(r["bucket"], r["tier"], r["requests"]) for r in hourly["data"]] == [
        ("2025-10-31T00:00:00Z", "warm", 2), ("2025-10-31T01:00:00Z", "hot", 1)]
    monthly = get(api, **{"from": "2025-10-01", "to": "2025-11-30", "granularity": "month"}).json()
    assert {(r["bucket"], r["kind"], r["tier"]): r["requests"] for r in monthly["data"]} == {
        ("2025-10-01T00:00:00Z", "inference", "cold"): 1, ("2025-10-01T00:00:00Z", "inference", "hot"): 1,
        ("2025-10-01T00:00:00Z", "inference", "warm"): 2, ("2025-11-01T00:00:00Z", "inference", "cold"): 1,
        ("2025-11-01T00:00:00Z", "training", None): 0}


def test_a_datetime_to_is_exclusive_and_offsets_are_honoured(api, usage):
    body = get(api, **{"from": "2025-10-31T00:30:00Z", "to": "2025-10-31T00:45:00Z"}).json()
    assert body["totals"]["requests"] == 1  # 00:30 in, 00:45 out
    body = get(api, **{"from": "2025-10-31T02:30:00+02:00", "to": "2025-10-31T02:40:00+02:00"}).json()
    assert body["from"] == "2025-10-31T00:30:00Z" and body["totals"]["requests"] == 1


def test_filters(api, usage):
    window = {"from": "2025-10-01", "to": "2025-11-30", "granularity": "month"}
    assert get(api, **window, tier="warm").json()["totals"]["requests"] == 2
    by_adapter = get(api, **window, adapter="support-bot").json()
    assert {r["kind"] for r in by_adapter["data"]} == {"inference", "training"}
    assert by_adapter["totals"]["requests"] == 2 and by_adapter["totals"]["gradients"] == 1_000_000
    training = get(api, **window, kind="training").json()
    assert training["totals"]["cost"] == "0.0000001000" and training["totals"]["requests"] == 0
    assert get(api, **window, adapter="no-such").json()["data"] == []


def test_default_window_is_this_month_so_far(api, acme):
    billed(acme, (timezone.now() - timedelta(seconds=5)).replace(tzinfo=None).isoformat())
    body = get(api).json()
    start = period_of(timezone.now())
    assert body["from"] == f"{start.isoformat()}T00:00:00Z" and body["granularity"] == "day"
    assert body["totals"]["requests"] == 1


def test_cost_sums_are_exact_where_sqlite_floats_are_not(acme, api):
    amounts = [Decimal("1234.5678901234"), Decimal("0.0000016667"), Decimal("77.1234567891")] * 200
    when = at("2025-06-15T12:00:00")
    for n, amount in enumerate(amounts):
        record_adjustment(tenant=acme, amount=amount, description="test", key=f"k{n}", at=when)
    exact = sum(amounts)
    assert money_value(UsageEvent.objects.aggregate(c=money_sum())["c"]) == exact
    body = get(api, **{"from": "2025-06-01", "to": "2025-06-30", "granularity": "month"}).json()
    assert body["totals"]["cost"] == str(exact) == "262338.2697158400"


def test_who_may_read(acme, alice, bob, usage, charlie, contoso):
    viewer = make_member("vera@acme.test", acme, BILLING_VIEWER)
    window = {"from": "2025-10-01", "to": "2025-11-30"}
    for client in (session_client(bob), session_client(viewer),  # developer: usage.read; viewer: both
                   key_client(create_key(alice, acme, scopes=["billing:read"])[1])):
        assert get(client, **window).status_code == 200
    assert_error(get(key_client(create_key(alice, acme, scopes=["infer"])[1]), **window), 403,
                 code="missing_scope")
    assert_error(get(APIClient(), **window), 401)


def test_another_tenants_id_is_404_and_says_nothing(usage, charlie, contoso, unchanged_db):
    charlie_api = key_client(create_key(charlie, contoso)[1])
    with unchanged_db():
        assert_error(charlie_api.get(URL), 404)
        assert_error(charlie_api.get("/v1/usage/no-such-tenant/metrics"), 404)
    assert charlie_api.get("/v1/usage/contoso/metrics").json()["data"] == []


@pytest.mark.parametrize("params, param, code", [
    ({"from": "2025-11-02", "to": "2025-10-30"}, "from", "invalid_range"),
    ({"from": "2025-10-31T12:00:00Z", "to": "2025-10-31T11:00:00Z"}, "from", "invalid_range"),
    ({"from": "2025-13-01"}, "from", "invalid_date"),
    ({"to": "yesterday"}, "to", "invalid_date"),
    ({"from": "2025-10-31T25:00:00Z"}, "from", "invalid_date"),
    ({"granularity": "week"}, "granularity", "invalid_granularity"),
    ({"granularity": ""}, None, None),
    ({"tier": "gold"}, "tier", "invalid_tier"),
    ({"kind": "refund"}, "kind", "invalid_kind"),
    ({"from": "2025-01-01", "to": "2025-03-01", "granularity": "hour"}, "granularity", "range_too_large"),
])
def test_bad_input_is_400_and_changes_nothing(api, usage, unchanged_db, params, param, code):
    with unchanged_db():
        response = get(api, **params)
        if code is None:  # an empty value means the default
            assert response.status_code == 200
        else:
            assert_error(response, 400, code=code, param=param)
