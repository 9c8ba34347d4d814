"""Dashboard pages of inference: the playground and usage (request counts and latencies per tier beside spend)."""

from datetime import timedelta

from django.core.exceptions import BadRequest, PermissionDenied
from django.shortcuts import render
from django.utils import timezone

from adapters.access import tenant_adapters, tenant_versions
from adapters.models import Adapter, AdapterVersion, BaseModel
from adapters.views import tier_infos
from billing.metering_lag import percentile
from billing.plans import plan_limits, tier_info
from billing.usage_range import usage_csv, usage_range
from billing.usage_views import usage_context
from tenants.views import tenant_member_required

from .access import tenant_requests
from .request_filters import filtered_requests

# Percentiles are computed here over the newest rows; a tenant past this many in a week sees a note.
USAGE_ROWS_CAP = 10_000
WINDOWS = (("Last 24 hours", timedelta(hours=24)), ("Last 7 days", timedelta(days=7)))


def tier_stats(rows, info):
    """Requests, p50/p95 adapter-ready and first-token times, and guarantee breaches for one tier's rows."""
    ready = sorted(r["adapter_ready_ms"] for r in rows if r["adapter_ready_ms"] is not None)
    first = sorted(r["first_token_ms"] for r in rows if r["first_token_ms"] is not None)
    p95 = percentile(ready, 95)
    return {**info, "requests": len(rows), "ready_p50": percentile(ready, 50), "ready_p95": p95,
            "first_p50": percentile(first, 50), "first_p95": percentile(first, 95),
            "broken": sum(1 for r in rows if r["guarantee_broken"]),
            "p95_over": p95 is not None and p95 > info["adapter_ready_ms_guarantee"]}


def tier_latency(*, tenant, now):
    """Per window and per day of the last week, per tier: the latency stats of the tenant's requests."""
    since = now - max(span for _, span in WINDOWS)
    rows = list(tenant_requests(tenant=tenant).filter(created_at__gte=since).values(
        "tier", "created_at", "adapter_ready_ms", "first_token_ms", "guarantee_broken")[:USAGE_ROWS_CAP])
    tiers = [tier for tier, _ in Adapter.TIER_CHOICES]
    infos = {tier: tier_info(tier, tenant=tenant) for tier in tiers}
    windows = []
    for label, span in WINDOWS:
        start = now - span
        recent = [r for r in rows if r["created_at"] >= start]
        windows.append({"label": label, "tiers": [tier_stats([r for r in recent if r["tier"] == t], infos[t])
                                                   for t in tiers]})
    by_day = {}
    for row in rows:
        by_day.setdefault((timezone.localdate(row["created_at"]), row["tier"]), []).append(row)
    days = [{"day": day, **tier_stats(day_rows, infos[tier])} for (day, tier), day_rows in
            sorted(by_day.items(), key=lambda item: (item[0][0], tiers.index(item[0][1])), reverse=True)]
    return {"windows": windows, "days": days, "capped": len(rows) >= USAGE_ROWS_CAP}


def latency_chart(days, infos):
    """Adapter-ready p95 per day and tier over the last week, beside each tier's guarantee."""
    if not days:
        return None
    dates = sorted({d["day"] for d in days})
    p95 = {(d["day"], d["tier"]): d["ready_p95"] for d in days}
    tiers = [tier for tier in infos if any(d["tier"] == tier for d in days)]
    series = [{"label": f"{tier} p95", "values": [p95.get((day, tier)) for day in dates]} for tier in tiers]
    series += [{"label": f"{tier} guarantee", "dash": True,
                "values": [infos[tier]["adapter_ready_ms_guarantee"]] * len(dates)} for tier in tiers]
    return {"kind": "lines", "x_label": "Day", "labels": [f"{day:%b} {day.day}" for day in dates],
            "y_label": "Adapter ready (ms)", "y_suffix": " ms", "y_decimals": 1, "series": series}


def _usage_read(principal):
    if not principal.can("usage.read"):
        raise PermissionDenied(f"Your role '{principal.role}' does not include usage.")


@tenant_member_required
def usage(request):
    principal = request.principal
    _usage_read(principal)
    now = timezone.now()
    range_form, start, end = usage_range(request.GET, today=now.date())
    requests = tenant_requests(tenant=principal.tenant).select_related("base_model", "adapter_version__adapter")
    filter_form, page = filtered_requests(requests, request.GET)
    latency = tier_latency(tenant=principal.tenant, now=now)
    infos = {tier: tier_info(tier, tenant=principal.tenant) for tier, _ in Adapter.TIER_CHOICES}
    context = {**latency, "latency_chart": latency_chart(latency["days"], infos), "rows_cap": USAGE_ROWS_CAP,
               "range_form": range_form, "start": start, "end": end, "filter_form": filter_form, "page": page,
               "recent": page.object_list, "query": request.GET,
               **usage_context(tenant=principal.tenant, now=now, start=start, end=end)}
    status = 400 if range_form.errors or filter_form.errors else 200
    return render(request, "billing/usage.html", context, status=status)


@tenant_member_required
def usage_export(request):
    """The ledger over the page's date range, by day, kind, tier and adapter, as CSV."""
    _usage_read(request.principal)
    range_form, start, end = usage_range(request.GET, today=timezone.now().date())
    if range_form.errors:
        raise BadRequest(" ".join(str(m) for messages in range_form.errors.values() for m in messages))
    return usage_csv(tenant=request.principal.tenant, start=start, end=end)


@tenant_member_required
def playground(request):
    tenant = request.principal.tenant
    ready = {}
    for version in tenant_versions(tenant=tenant).filter(status=AdapterVersion.READY):
        ready.setdefault(version.adapter_id, []).append(version)
    infos = tier_infos(tenant)
    adapters = [{"adapter": a, "tier": infos[a.tier], "versions": ready[a.pk]}
                for a in tenant_adapters(tenant=tenant) if a.current_version_id and a.pk in ready]
    return render(request, "inference/playground.html", {
        "base_models": BaseModel.objects.order_by("name"), "base_tier": infos[Adapter.COLD],
        "adapters": adapters,
        "can_infer": request.principal.can("infer"), "max_tokens_cap": plan_limits(tenant).max_tokens})
