"""Dashboard: what this month costs (charts by day, tier and adapter, drawn as inline SVG: no script, no CDN),
the plan's prices and guarantees, and the tenant's spend cap."""

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
    period_start,
    plain,
    plan_for,
    training_cost,
    units_cost,
)
from .selectors import spend_by

CHART_WIDTH, CHART_HEIGHT, BAR_GAP = 640, 160, 2
ROW_HEIGHT, LABEL_WIDTH = 22, 150
MAX_ADAPTERS = 10


def _scale(values):
    top = max([v for v in values if v > 0], default=Decimal(0))
    return (lambda v: 0.0) if top == 0 else (lambda v: float(max(v, 0) / top))


def column_chart(points):
    """Vertical bars, one per day of the month so far: [{x, y, width, height, label, title}]."""
    if not points:
        return None
    scale = _scale([p["cost"] for p in points])
    width = CHART_WIDTH / len(points)
    bars = []
    for i, point in enumerate(points):
        height = round(scale(point["cost"]) * (CHART_HEIGHT - 20), 1)
        bars.append({"x": round(i * width + BAR_GAP / 2, 1), "width": round(max(width - BAR_GAP, 1), 1),
                     "y": round(CHART_HEIGHT - 20 - height, 1), "height": height,
                     "label": point["label"] if len(points) <= 12 or i % 5 == 0 else "",
                     "label_x": round(i * width + BAR_GAP / 2, 1),
                     "title": f"{point['label']}: ${money_text(point['cost'], 4)}, {point['requests']} requests"})
    top = max(point["cost"] for point in points)
    return {"width": CHART_WIDTH, "height": CHART_HEIGHT, "bars": bars, "baseline": CHART_HEIGHT - 20,
            "top": f"${money_text(top, 4)}" if top > 0 else ""}


def bar_chart(points):
    """Horizontal bars, one per tier or adapter: [{y, width, label, value}]."""
    if not points:
        return None
    scale = _scale([p["cost"] for p in points])
    room = CHART_WIDTH - LABEL_WIDTH - 110
    bars = [{"y": i * ROW_HEIGHT, "text_y": i * ROW_HEIGHT + 15, "width": round(max(scale(p["cost"]) * room, 1), 1),
             "label": p["label"], "value": f"${money_text(p['cost'], 4)} · {p['requests']} req",
             "value_x": LABEL_WIDTH + round(max(scale(p["cost"]) * room, 1), 1) + 6}
            for i, p in enumerate(points)]
    return {"width": CHART_WIDTH, "height": ROW_HEIGHT * len(points), "bars": bars, "label_width": LABEL_WIDTH}


def month_charts(*, tenant, now):
    start = period_start(now.date().replace(day=1))
    end = now + timedelta(seconds=1)
    by_day = {row["key"].date(): row for row in spend_by(tenant=tenant, start=start, end=end, field="day")}
    days = [start.date() + timedelta(days=n) for n in range((now.date() - start.date()).days + 1)]
    daily = [{"label": f"{day:%b} {day.day}", "cost": by_day.get(day, {}).get("cost", Decimal(0)),
              "requests": by_day.get(day, {}).get("requests", 0)} for day in days]
    tiers = {row["key"]: row for row in spend_by(tenant=tenant, start=start, end=end, field="tier")}
    by_tier = [{"label": tier, "cost": tiers[tier]["cost"], "requests": tiers[tier]["requests"]}
               for tier in TIERS if tier in tiers]
    adapters = sorted(spend_by(tenant=tenant, start=start, end=end, field="adapter__name",
                               exclude_kinds=[UsageEvent.ADJUSTMENT]), key=lambda row: row["cost"], reverse=True)
    by_adapter = [{"label": row["key"] or "base model only", "cost": row["cost"], "requests": row["requests"]}
                  for row in adapters[:MAX_ADAPTERS]]
    return {"daily_chart": column_chart(daily) if any(d["requests"] or d["cost"] for d in daily) else None,
            "tier_chart": bar_chart(by_tier), "adapter_chart": bar_chart(by_adapter),
            "adapters_more": max(len(adapters) - MAX_ADAPTERS, 0)}


def usage_context(*, tenant, now):
    """The usage page's billing part: this month's estimate, the cap, and the charts."""
    return {"spend": spend_status(tenant, now=now), **month_charts(tenant=tenant, now=now)}


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
