"""The Usage page's charts (billing/usage_views.py: cost by day, by tier, by adapter) show the ledger's figures:
each chart's table holds the exact sum of the range's rows in its group and their request count (inference rows),
and its JSON the same sums for the chart; adjustments count by day and tier but not by adapter, another tenant's
rows appear nowhere, and a chosen range leaves out the days outside it."""

import json
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import UsageEvent
from billing.plans import money_text
from tests.billing_helpers import base_model
from tests.factories import make_adapter, session_client


@pytest.mark.django_db
def test_the_charts_show_the_ledgers_sums(alice, acme, contoso):
    now = timezone.now()
    month_start = datetime(now.year, now.month, 1, tzinfo=UTC)
    first_day = month_start + timedelta(minutes=1)
    latest = max(now - timedelta(minutes=5), first_day)
    bot = make_adapter(acme, base_model(), "support-bot", "warm")
    summarizer = make_adapter(acme, base_model(), "summarizer", "hot")
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
    tables = figures(html)
    for day, (cost, requests) in by_day.items():
        assert tables["day"][day] == (f"${money_text(cost, 4)}", str(requests)), (day, tables["day"])
    for tier in ("cold", "warm", "hot"):
        cost, requests = by_tier[tier]
        assert tables["tier"][tier] == (f"${money_text(cost, 4)}", str(requests)), (tier, tables["tier"])
    for name, (cost, requests) in by_adapter.items():
        assert tables["adapter"][name] == (f"${money_text(cost, 4)}", str(requests)), (name, tables["adapter"])
    # days without rows show $0 bars; the month's total is the ledger's net sum
    total = sum(Decimal(cost) for *_, cost in specs)
    assert f"${total:.4f}" in html and "9.9999" not in html, "contoso's row shows nowhere"
    assert len(tables["day"]) == (now.date() - month_start.date()).days + 1
    daily = chart_json(html, "chart-day")
    assert daily["labels"] == list(tables["day"])
    assert daily["series"][0]["values"] == [float(by_day[label][0]) for label in daily["labels"]]

    if latest.date() != first_day.date():  # a range of the latest day alone leaves out the first day's rows
        day = latest.date().isoformat()
        tables = figures(session_client(alice).get(f"/usage/?start={day}&end={day}").content.decode())
        assert list(tables["day"]) == [f"{latest:%b} {latest.day}"]
        assert set(tables["adapter"]) == {"support-bot", "base model only"}


def figures(html):
    """{chart kind: {row label: (cost, requests)}} from the tables beside the charts."""
    out = {}
    for kind, body in re.findall(r'data-chart-table="(\w+)">.*?<tbody>(.*?)</tbody>', html, re.S):
        rows = re.findall(r'<th scope="row">([^<]*)</th><td class="num">([^<]*)</td><td class="num">([^<]*)</td>', body)
        out[kind] = {label: (cost, requests) for label, cost, requests in rows}
    return out


def chart_json(html, element_id):
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


def usage_plan():
    from billing.plans import ensure_default_plan

    return ensure_default_plan()
