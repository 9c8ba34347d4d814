"""The Usage page's charts (billing/usage_views.py: cost by day, by tier, by adapter) show the ledger's figures:
each bar's title carries the exact sum of the month's rows in its group and their request count (inference rows),
adjustments count by day and tier but not by adapter, and another tenant's rows appear nowhere."""

import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import UsageEvent
from billing.plans import money_text
from tests.billing_fixtures import make_adapter
from tests.conftest import session_client

pytestmark = pytest.mark.usefixtures("fast_password_hashing")


@pytest.mark.django_db
def test_the_charts_show_the_ledgers_sums(alice, acme, contoso):
    now = timezone.now()
    month_start = datetime(now.year, now.month, 1, tzinfo=UTC)
    first_day = month_start + timedelta(minutes=1)
    latest = max(now - timedelta(minutes=5), first_day)
    bot, summarizer = make_adapter(acme, "support-bot", "warm"), make_adapter(acme, "summarizer", "hot")
    specs = [  # (when, kind, tier, adapter, cost)
        (first_day, UsageEvent.INFERENCE, "warm", bot, "0.0005000000"),
        (first_day, UsageEvent.INFERENCE, "hot", summarizer, "0.0020001234"),
        (latest, UsageEvent.INFERENCE, "warm", bot, "0.0005123456"),
        (latest, UsageEvent.INFERENCE, "cold", None, "0.0001000001"),
        (latest, UsageEvent.TRAINING, "", bot, "0.0300000000"),
        (latest, UsageEvent.SLO_CREDIT, "warm", bot, "-0.0004000000"),
        (latest, UsageEvent.ADJUSTMENT, "", None, "-0.0010000000"),
    ]
    for i, (when, kind, tier, adapter, cost) in enumerate(specs):
        UsageEvent.objects.create(key=f"{kind}:chart-{i}", tenant=acme, kind=kind, plan=usage_plan(), occurred_at=when,
                                  period=month_start.date(), tier=tier, adapter=adapter, cost=Decimal(cost))
    UsageEvent.objects.create(key="inference:contoso", tenant=contoso, kind=UsageEvent.INFERENCE, plan=usage_plan(),
                              occurred_at=latest, period=month_start.date(), tier="warm", cost=Decimal("9.9999"))

    by_day, by_tier, by_adapter = (defaultdict(lambda: [Decimal(0), 0]) for _ in range(3))
    for when, kind, tier, adapter, cost in specs:
        counts = int(kind == UsageEvent.INFERENCE)
        for groups, key in ((by_day, f"{when:%b} {when.day}"), (by_tier, tier)):
            groups[key][0] += Decimal(cost)
            groups[key][1] += counts
        if kind != UsageEvent.ADJUSTMENT:
            by_adapter[adapter.name if adapter else "base model only"][0] += Decimal(cost)
            by_adapter[adapter.name if adapter else "base model only"][1] += counts

    html = session_client(alice).get("/usage/").content.decode()
    titles = set(re.findall(r"<title>([^<]*)</title>", html))
    for day, (cost, requests) in by_day.items():
        assert f"{day}: ${money_text(cost, 4)}, {requests} requests" in titles, (day, sorted(titles))
    for tier in ("cold", "warm", "hot"):
        cost, requests = by_tier[tier]
        assert f"{tier}: ${money_text(cost, 4)} · {requests} req" in titles, (tier, sorted(titles))
    for name, (cost, requests) in by_adapter.items():
        assert f"{name}: ${money_text(cost, 4)} · {requests} req" in titles, (name, sorted(titles))
    # days without rows show $0 bars; the month's total is the ledger's net sum
    total = sum(Decimal(cost) for *_, cost in specs)
    assert f"${total:.4f}" in html and "9.9999" not in html, "contoso's row shows nowhere"
    assert len([t for t in titles if " requests" in t]) == (now.date() - month_start.date()).days + 1


def usage_plan():
    from billing.plans import ensure_default_plan

    return ensure_default_plan()
