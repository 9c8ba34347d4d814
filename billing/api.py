"""Billing's API:

    GET /v1/usage/{tenant_id}/metrics       the seed's usage API (VAJRA A.1); tenant_id is the tenant's slug
        ?from=&to=                          ISO 8601 dates or datetimes (UTC when no offset); a date-only ``to``
                                            includes that day. Default: this billing month so far.
        &granularity=hour|day|month         time buckets (UTC), default day
        &tier=&adapter=&kind=               optional filters
    GET /api/v1/billing/metering            metering lag over the last hour (staff only)

Usage comes from the ledger (what was billed), aggregated in the database by bucket, kind, tier and adapter:
requests, prompt and completion tokens, GPU-ms measured and billed, gradients, units and cost (a Decimal string,
10 places; SLO credits and adjustments are their own kinds, negative for credits). Another tenant's id is a 404.
"""

from datetime import UTC, datetime, time, timedelta

from django.http import Http404
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.principal import Principal
from vajra.errors import InvalidRequest
from vajra.schema import constant, enum, shape

from .metering_lag import metering_lag
from .models import UsageEvent
from .plans import TIERS, account_for, cached_plan, period_of, period_start
from .selectors import TRUNC, usage_metrics

# The most buckets one query may ask for (an hourly month, a daily three years).
MAX_RANGE = {"hour": timedelta(days=31), "day": timedelta(days=1100), "month": timedelta(days=3660)}
KINDS = [kind for kind, _ in UsageEvent.KIND_CHOICES]


def _usage_fields():
    """The figures of one bucket and of the totals (billing.selectors._clean)."""
    integer = serializers.IntegerField
    return {"requests": integer(), "prompt_tokens": integer(), "completion_tokens": integer(),
            "gpu_ms": serializers.FloatField(), "billed_gpu_ms": integer(), "gradients": integer(), "units": integer(),
            "cost": serializers.CharField(help_text="A decimal string at the ledger's 10 places.")}


UsageMetricsOut = shape("UsageMetrics", {
    "object": constant("usage.metrics"), "tenant": serializers.CharField(), "from": serializers.DateTimeField(),
    "to": serializers.DateTimeField(), "granularity": enum(*TRUNC), "currency": serializers.CharField(),
    "data": shape("UsageBucket", {
        "bucket": serializers.DateTimeField(), "kind": enum(*KINDS), "tier": enum(*TIERS, allow_null=True),
        "adapter": serializers.CharField(allow_null=True), **_usage_fields()}, many=True),
    "totals": shape("UsageTotals", _usage_fields())})
MeteringLagOut = shape("MeteringLag", {
    "object": constant("billing.metering_lag"), "window_seconds": serializers.IntegerField(),
    "events": serializers.IntegerField(), "capped": serializers.BooleanField(),
    **{name: serializers.FloatField(allow_null=True) for name in ("p50_seconds", "p95_seconds", "max_seconds")}})
# The bounds a from/to may name: no usage predates 2000, and past 9998 date arithmetic nears datetime's end.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(9998, 12, 31, tzinfo=UTC)
DATE_OR_DATETIME = {"type": "string", "anyOf": [{"format": "date"}, {"format": "date-time"}]}


def _instant(request, name):
    """(the parsed bound as an aware UTC datetime, whether it was a date) or (None, False) when absent."""
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None, False
    try:
        day = parse_date(raw)
        if day is not None:
            if not EARLIEST.date() <= day <= LATEST.date():
                raise _out_of_range(name, raw)
            return datetime.combine(day, time.min, tzinfo=UTC), True
        moment = parse_datetime(raw.replace(" ", "+"))  # a '+' offset arrives as a space when not URL-encoded
    except ValueError:
        moment = None
    if moment is None:
        raise InvalidRequest(f"{name} must be an ISO 8601 date (2026-11-01) or datetime (2026-11-01T12:00:00Z), "
                             f"got {raw!r}.", param=name, code="invalid_date")
    moment = moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)
    if not EARLIEST <= moment <= LATEST:  # out there, "the whole day named" or a UTC offset would overflow
        raise _out_of_range(name, raw)
    return moment.astimezone(UTC), False


def _out_of_range(name, raw):
    return InvalidRequest(f"{name} must lie between {EARLIEST.date()} and {LATEST.date()}, got {raw!r}.", param=name,
                          code="date_out_of_range")


def _choice(request, name, choices, default=None):
    value = request.query_params.get(name) or default
    if value is not None and value not in choices:
        raise InvalidRequest(f"{name} must be one of {', '.join(choices)}; got {value!r}.", param=name,
                             code=f"invalid_{name}")
    return value


def usage_window(request, now):
    """(from, to exclusive, granularity) from the query, or a 400 naming the parameter."""
    granularity = _choice(request, "granularity", list(TRUNC), "day")
    start, _ = _instant(request, "from")
    end, end_is_date = _instant(request, "to")
    if end is None:
        end = now
    elif end_is_date:
        end += timedelta(days=1)  # the whole day named
    start = start or period_start(period_of(min(end, now)))
    if start > end or (end_is_date and start >= end):
        raise InvalidRequest("from must not be after to.", param="from", code="invalid_range")
    if end - start > MAX_RANGE[granularity]:
        raise InvalidRequest(f"At {granularity} granularity one query covers at most "
                             f"{MAX_RANGE[granularity].days} days; narrow from/to or use a coarser granularity.",
                             param="granularity", code="range_too_large")
    return start, end, granularity


def _can_read_usage(principal):
    return principal.can("usage.read") or principal.can("billing.read")


def _iso(moment):
    return moment.isoformat().replace("+00:00", "Z")


class UsageMetricsView(APIView):
    required_action = None  # usage.read or billing.read: checked in get (either one lets a key or member read)

    @extend_schema(operation_id="v1_usage_metrics", responses={200: UsageMetricsOut}, parameters=[
        OpenApiParameter("from", DATE_OR_DATETIME), OpenApiParameter("to", DATE_OR_DATETIME),
        OpenApiParameter("granularity", str, enum=list(TRUNC)), OpenApiParameter("tier", str, enum=list(TIERS)),
        OpenApiParameter("adapter", str), OpenApiParameter("kind", str, enum=KINDS)])
    def get(self, request, tenant_id):
        principal = request.auth
        if tenant_id != principal.tenant.slug:
            raise Http404(f"No tenant '{tenant_id}' for these credentials; use your own tenant's id "
                          f"('{principal.tenant.slug}').")
        if not _can_read_usage(principal):
            principal.require("usage.read")
        start, end, granularity = usage_window(request, timezone.now())
        tier = _choice(request, "tier", TIERS)
        kind = _choice(request, "kind", KINDS)
        adapter = request.query_params.get("adapter") or None
        metrics = usage_metrics(tenant=principal.tenant, start=start, end=end, granularity=granularity, tier=tier,
                                adapter=adapter, kind=kind)
        currency = cached_plan(account_for(principal.tenant).plan_name).currency
        return Response({"object": "usage.metrics", "tenant": principal.tenant.slug, "from": _iso(start),
                         "to": _iso(end), "granularity": granularity, "currency": currency, **metrics})


class IsStaffSession(BasePermission):
    """Platform staff signed in to the dashboard; never an API key."""

    def has_permission(self, request, view):
        if isinstance(request.auth, Principal) and request.auth.is_key:
            raise PermissionDenied("Metering is for platform staff signed in to the dashboard, not API keys.",
                                   code="session_required")
        if not request.user.is_authenticated:
            return False
        if not request.user.is_staff:
            raise PermissionDenied("Metering is for platform staff.", code="staff_only")
        return True


class MeteringView(APIView):
    permission_classes = [IsStaffSession]

    @extend_schema(operation_id="billing_metering", responses={200: MeteringLagOut})
    def get(self, request):
        return Response({"object": "billing.metering_lag", **metering_lag()})

