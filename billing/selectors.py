"""Reads of the ledger: exact money sums, a tenant's month, usage metrics by bucket, tier and adapter.

Money sums are exact on both databases. PostgreSQL's numeric is exact, but SQLite keeps a decimal column as a
REAL and SUM() adds floats (a million rows of $0.0000016667 drift past the 10th place). So every row's amount is
summed as an integer count of 1e-10 dollars (``ROUND(cost * 1e10)``, exact for any row under $900,000) and turned
back into a Decimal here: the same expression on both databases.
"""

from datetime import UTC
from decimal import Decimal

from django.db.models import BigIntegerField, Count, DecimalField, ExpressionWrapper, F, Q, Sum, Value
from django.db.models.functions import Cast, Coalesce, Round, TruncDay, TruncHour, TruncMonth

from .models import UsageEvent
from .plans import PLACES, period_of

SCALE = 10**10  # 1e-10 dollars: the ledger's precision
TRUNC = {"hour": TruncHour, "day": TruncDay, "month": TruncMonth}


def money_sum(field="cost", **extra):
    """An aggregate of a money column in 1e-10 dollars (an integer); read it back with ``money_value``."""
    scaled = ExpressionWrapper(F(field) * Value(Decimal(SCALE)), output_field=DecimalField(max_digits=40,
                                                                                           decimal_places=10))
    return Coalesce(Sum(Cast(Round(scaled), BigIntegerField()), **extra), Value(0), output_field=BigIntegerField())


def money_value(scaled):
    return (Decimal(int(scaled or 0)) / SCALE).quantize(PLACES)


def tenant_ledger(*, tenant):
    return UsageEvent.objects.filter(tenant=tenant)


def period_spend(*, tenant, period):
    """(net spend, requests billed) in the tenant's billing month ``period`` (credits and adjustments included)."""
    totals = tenant_ledger(tenant=tenant).filter(period=period).aggregate(cost=money_sum(), requests=requests_count())
    return money_value(totals["cost"]), totals["requests"]


def current_spend(*, tenant, now):
    return period_spend(tenant=tenant, period=period_of(now))


def requests_count():
    return Count("id", filter=Q(kind=UsageEvent.INFERENCE))


def _metrics():
    return {
        "requests": requests_count(),
        "prompt_tokens": Coalesce(Sum("prompt_tokens"), 0),
        "completion_tokens": Coalesce(Sum("completion_tokens"), 0),
        "gpu_ms": Coalesce(Sum("gpu_ms"), 0.0),
        "billed_gpu_ms": Coalesce(Sum("billed_gpu_ms"), 0),
        "gradients": Coalesce(Sum("gradients"), 0),
        "units": Coalesce(Sum("units"), 0),
        "cost_scaled": money_sum("cost"),
    }


def _bucket(granularity):
    return TRUNC[granularity]("occurred_at", tzinfo=UTC)


def _clean(row):
    out = {name: row[name] for name in _metrics() if name != "cost_scaled"}
    out["gpu_ms"] = round(float(out["gpu_ms"]), 3)
    out["cost"] = format(money_value(row["cost_scaled"]), "f")  # never in E notation, however small
    return out


def usage_metrics(*, tenant, start, end, granularity, tier=None, adapter=None, kind=None):
    """The tenant's ledger between ``start`` (inclusive) and ``end`` (exclusive) by usage time, grouped by
    ``granularity`` bucket (UTC), kind, tier and adapter; with totals. Aggregated in the database."""
    rows = tenant_ledger(tenant=tenant).filter(occurred_at__gte=start, occurred_at__lt=end)
    if tier:
        rows = rows.filter(tier=tier)
    if adapter:
        rows = rows.filter(adapter__name=adapter)
    if kind:
        rows = rows.filter(kind=kind)
    grouped = (rows.annotate(bucket=_bucket(granularity))
               .values("bucket", "kind", "tier", "adapter__name")
               .annotate(**_metrics()).order_by("bucket", "kind", "tier", "adapter__name"))
    data = [{"bucket": row["bucket"].isoformat().replace("+00:00", "Z"), "kind": row["kind"],
             "tier": row["tier"] or None, "adapter": row["adapter__name"], **_clean(row)} for row in grouped]
    totals = _clean(rows.aggregate(**_metrics()))
    return {"data": data, "totals": totals}


def spend_by(*, tenant, start, end, field, exclude_kinds=()):
    """Cost and requests per value of ``field`` ("tier", "adapter__name" or a Trunc bucket) for the charts."""
    rows = tenant_ledger(tenant=tenant).filter(occurred_at__gte=start, occurred_at__lt=end).exclude(
        kind__in=exclude_kinds)
    if field in TRUNC:
        rows = rows.annotate(group=_bucket(field))
    else:
        rows = rows.annotate(group=F(field))
    grouped = rows.values("group").annotate(cost=money_sum(), requests=requests_count()).order_by("group")
    return [{"key": row["group"], "cost": money_value(row["cost"]), "requests": row["requests"]} for row in grouped]

