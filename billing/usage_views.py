"""Dashboard: what the chosen days cost (charts by day, tier and adapter: JSON that vajra/charts.js draws, with
the figures in a table beside each), the plan's prices and guarantees, and the tenant's spend cap."""

from datetime import timedelta
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.contrib import messages
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST
from rest_framework.exceptions import APIException

from tenants.views import tenant_member_required

from .caps import spend_cap_set, spend_status
from .models import UsageEvent
from .plans import (
    MS_PER_HOUR,
    TIERS,
    account_for,
    compute_cost,
    money_text,
    plain,
    plan_for,
    training_cost,
    units_cost,
)
from .selectors import spend_by
from .usage_range import range_bounds

MAX_ADAPTERS = 10


def _money(value):
    return float(value)


def cost_chart(rows, *, kind, x):
    """A chart's JSON for charts.js, [{label, cost, requests}] -> bars or columns of dollars, with the exact
    figures for the table beside it."""
    if not rows:
        return None
    spec = {"kind": "bars", "x_label": x, "labels": [r["label"] for r in rows], "y_label": "Cost (USD)",
            "y_prefix": "$", "y_decimals": 4,
            "series": [{"label": "Cost", "values": [_money(r["cost"]) for r in rows]}]}
    table = [{"label": r["label"], "cost": f"${money_text(r['cost'], 4)}", "requests": r["requests"]} for r in rows]
    return {"spec": spec, "rows": table, "kind": kind}


def range_charts(*, tenant, start, end):
    """Cost by day, tier and adapter between two dates (whole UTC days, ``end`` included)."""
    low, high = range_bounds(start, end)
    by_day = {row["key"].date(): row for row in spend_by(tenant=tenant, start=low, end=high, field="day")}
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    daily = [{"label": f"{day:%b} {day.day}", "cost": by_day.get(day, {}).get("cost", Decimal(0)),
              "requests": by_day.get(day, {}).get("requests", 0)} for day in days]
    tiers = {row["key"]: row for row in spend_by(tenant=tenant, start=low, end=high, field="tier")}
    by_tier = [{"label": tier, "cost": tiers[tier]["cost"], "requests": tiers[tier]["requests"]}
               for tier in TIERS if tier in tiers]
    adapters = sorted(spend_by(tenant=tenant, start=low, end=high, field="adapter__name",
                               exclude_kinds=[UsageEvent.ADJUSTMENT]), key=lambda row: row["cost"], reverse=True)
    by_adapter = [{"label": row["key"] or "base model only", "cost": row["cost"], "requests": row["requests"]}
                  for row in adapters[:MAX_ADAPTERS]]
    return {"daily_chart": cost_chart(daily, kind="day", x="Day") if any(d["requests"] or d["cost"] for d in daily)
            else None,
            "tier_chart": cost_chart(by_tier, kind="tier", x="Tier"),
            "adapter_chart": cost_chart(by_adapter, kind="adapter", x="Adapter"),
            "adapters_more": max(len(adapters) - MAX_ADAPTERS, 0),
            "range_cost": sum((d["cost"] for d in daily), Decimal(0)),
            "range_requests": sum(d["requests"] for d in daily)}


def usage_context(*, tenant, now, start=None, end=None):
    """The usage page's billing part: this month's estimate, the cap, and the charts over the chosen days."""
    today = now.date()
    return {"spend": spend_status(tenant, now=now),
            **range_charts(tenant=tenant, start=start or today.replace(day=1), end=end or today)}


def tier_prices(plan):
    slice_cost = compute_cost(plan, plan.billing_granularity_ms)
    rows = []
    for tier in TIERS:
        units = plan.units_for(tier)
        premium = max(units - plan.units_cold, 0)
        rows.append({"tier": tier, "units": units, "usd": money_text(units_cost(plan, units), 6),
                     "ready_ms": settings.VAJRA_TIER_READY_MS[tier],
                     "credit_usd": money_text(units_cost(plan, premium), 6) if premium else None})
    return {"tiers": rows, "slice_usd": money_text(slice_cost, 10),
            "gpu_ms_usd": money_text(plan.gpu_price_per_hour * plan.tenancy_factor / MS_PER_HOUR, 10),
            "million_gradients_usd": plain(training_cost(plan, gradients=1_000_000)),
            "prices": {name: plain(getattr(plan, name)) for name in (
                "unit_price", "gpu_price_per_hour", "tenancy_factor", "gradient_price_per_million")}}


@tenant_member_required
def plan(request):
    principal, now = request.principal, timezone.now()
    account = account_for(principal.tenant)
    current = plan_for(principal.tenant, now, account=account)
    context = {"plan": current, "account": account, **tier_prices(current), "spend": spend_status(principal.tenant,
                                                                                                  now=now),
               "can_manage": principal.can("billing.manage"), "grace_days": settings.VAJRA_PAYMENT_GRACE_DAYS}
    return render(request, "billing/plan.html", context)


@require_POST
@tenant_member_required
def spend_cap(request):
    raw = request.POST.get("spend_cap", "").strip().lstrip("$")
    try:
        cap = None if raw == "" else Decimal(raw).quantize(Decimal("0.01"))
        if cap is not None and not cap.is_finite():
            raise InvalidOperation
    except InvalidOperation:
        messages.error(request, f"“{raw}” is not an amount in dollars, e.g. 250 or 99.50.")
        return redirect("plan")
    try:
        spend_cap_set(principal=request.principal, cap=cap)
    except APIException as exc:
        messages.error(request, exc.detail)
        return redirect("plan")
    messages.success(request, f"Monthly spend cap set to ${cap}." if cap is not None else
                     "Monthly spend cap removed: the plan's applies.")
    return redirect("plan")
