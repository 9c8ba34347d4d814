"""Metering lag: how long the runtime's usage takes to reach the ledger (``created_at - occurred_at`` of each
row), over the last hour: p50, p95 and max. The ops alerting reads it from GET /api/v1/billing/metering.

Inference rows only: their ``occurred_at`` is when the request ended on its node (created + the node's total
time; see billing/ledger.py), so the lag is the control queue's delay plus the broker hop to the node. Training
steps carry no node clock, so their lag would always read 0.
"""

import math
from datetime import timedelta

from django.utils import timezone

from .models import UsageEvent

WINDOW = timedelta(hours=1)
MAX_ROWS = 50_000  # the newest rows of the window: a bounded read whatever the traffic


def percentile(sorted_values, p):
    """Nearest-rank percentile: the smallest value with at least p% of the values at or below it."""
    if not sorted_values:
        return None
    return sorted_values[max(math.ceil(p / 100 * len(sorted_values)), 1) - 1]


def metering_lag(*, now=None, window=WINDOW):
    now = now or timezone.now()
    rows = (UsageEvent.objects.filter(kind=UsageEvent.INFERENCE, created_at__gte=now - window)
            .order_by("-created_at").values_list("created_at", "occurred_at")[:MAX_ROWS])
    lags = sorted(max((created - occurred).total_seconds(), 0.0) for created, occurred in rows)

    def seconds(value):
        return None if value is None else round(value, 3)

    return {"window_seconds": int(window.total_seconds()), "events": len(lags), "capped": len(lags) >= MAX_ROWS,
            "p50_seconds": seconds(percentile(lags, 50)), "p95_seconds": seconds(percentile(lags, 95)),
            "max_seconds": seconds(lags[-1] if lags else None)}
