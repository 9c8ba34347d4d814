"""SLO credits: a request that broke its tier's adapter-ready guarantee gets the tier's premium
over cold back as its own ledger row, once, in the same transaction as the request's charge."""

from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing.models import UsageEvent
from billing.plans import period_of
from billing.selectors import period_spend
from tests.billing_helpers import adapter_version, final_event, finish, ledger, submitted
from tests.factories import create_key, key_client, record_node_final

pytestmark = pytest.mark.usefixtures("standard")


@pytest.mark.parametrize("tier, ready_ms, credit_units, credit", [
    ("hot", 11.0, -19, "-0.0019"),  # guarantee 10 ms
    ("warm", 100.5, -4, "-0.0004"),  # guarantee 100 ms
])
def test_a_broken_guarantee_credits_the_premium_over_cold(acme, tier, ready_ms, credit_units, credit):
    version = adapter_version(acme, tier=tier)
    row = finish(acme, version=version, ready_ms=ready_ms, gpu_ms=10.0)
    assert row.guarantee_broken
    charge, refund = ledger(acme)
    assert (refund.key, refund.kind, refund.units, refund.cost) == (f"credit:{row.id}", "slo_credit", credit_units,
                                                                    Decimal(credit))
    assert refund.cost_units == refund.cost and refund.cost_compute == 0
    assert (refund.tier, refund.adapter_id, refund.request_id, refund.period) == (tier, version.adapter_id, row.id,
                                                                                   charge.period)
    # what the tenant pays for the request: cold's units and the GPU time
    assert charge.cost + refund.cost == Decimal("0.0001") + charge.cost_compute


def test_a_kept_guarantee_or_a_cold_tier_credits_nothing(acme):
    finish(acme, version=adapter_version(acme, "fast", tier="hot"), ready_ms=9.0)
    finish(acme, version=adapter_version(acme, "slow-cold", tier="cold"), ready_ms=5000.0)  # broken, no premium
    assert [r.kind for r in ledger(acme)] == ["inference", "inference"]


def test_no_credit_without_a_charge_for_units(acme):
    version = adapter_version(acme, tier="hot")
    finish(acme, version=version, ready_ms=50.0, reason="error", gpu_ms=12.0,
           error={"code": "runtime_error", "message": "boom"})
    [charge] = ledger(acme)
    assert charge.units == 0 and not UsageEvent.objects.filter(kind="slo_credit").exists()


def test_the_credit_is_written_once_and_lowers_the_months_spend(acme):
    version = adapter_version(acme, tier="hot")
    row = finish(acme, version=version, ready_ms=25.0, gpu_ms=0.0, completion=3)
    record_node_final(row.id, final_event(ready_ms=25.0))  # redelivered
    assert UsageEvent.objects.filter(kind="slo_credit").count() == 1
    spend, requests = period_spend(tenant=acme, period=period_of(timezone.now()))
    assert spend == Decimal("0.0001") and requests == 1
    assert UsageEvent.objects.aggregate(units=Sum("units"))["units"] == 1


def test_the_usage_api_shows_credits_as_their_own_kind(acme, alice):
    version = adapter_version(acme, tier="warm")
    finish(acme, version=version, ready_ms=500.0, gpu_ms=0.0, completion=1)
    submitted(acme)  # still running: not billed yet
    client = key_client(create_key(alice, acme, scopes=["usage:read"])[1])
    body = client.get("/v1/usage/acme/metrics", {"granularity": "month"}).json()
    kinds = {(row["kind"], row["tier"]): row for row in body["data"]}
    assert kinds[("slo_credit", "warm")]["cost"] == "-0.0004000000"
    assert kinds[("slo_credit", "warm")]["requests"] == 0
    assert kinds[("inference", "warm")]["cost"] == "0.0005000000"
    assert body["totals"]["cost"] == "0.0001000000" and body["totals"]["requests"] == 1
