"""Ledger, request and invoice rows for the billing tests, written directly: ledger rows of an exact cost, requests as
the submit path leaves them and the final events that finish them, closing a month, and Stripe's webhook
signature. The billing fixtures (people with billing roles, the Stripe fake) are in tests/fixtures/billing.py."""

import hashlib
import hmac
import itertools
import time
from datetime import UTC, date, datetime
from decimal import Decimal

from adapters.models import Adapter, BaseModel
from billing.models import Invoice, UsageEvent
from billing.plans import ensure_default_plan
from serving.models import InferenceRequest
from tests.factories import make_adapter, record_node_final

PERIOD = date(2026, 10, 1)  # a closed month: "now" in these tests is in November 2026
NOW = datetime(2026, 11, 3, 7, 0, tzinfo=UTC)
WEBHOOK_SECRET = "whsec_vajra_test"
_keys = itertools.count(1)
_request_ids = itertools.count(1)


def usage(tenant, cost, *, kind=UsageEvent.INFERENCE, period=PERIOD, key=None, **fields):
    """One ledger row with the given exact ``cost``, written directly (no pricing)."""
    occurred = datetime(period.year, period.month, 15, 12, 0, tzinfo=UTC)
    return UsageEvent.objects.create(key=key or f"{kind}:test-{next(_keys)}", tenant=tenant, kind=kind,
                                     plan=ensure_default_plan(), occurred_at=occurred, period=period,
                                     cost=Decimal(cost), **fields)


def close(period=PERIOD, *, limit=100, seconds=60):
    from billing.invoices import invoices_close_period

    return invoices_close_period(period=period, limit=limit, seconds=seconds, now=NOW)


def invoice_of(tenant, period=PERIOD):
    return Invoice.objects.get(tenant=tenant, period=period)


def stripe_signature(payload, secret=WEBHOOK_SECRET, timestamp=None):
    """Stripe's webhook signature header: t=<unix time>,v1=HMAC-SHA256(secret, "<t>.<payload>")."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"



def base_model():
    return BaseModel.objects.get_or_create(name="smollm2-135m-instruct")[0]


def adapter_version(tenant, name="support-bot", tier=Adapter.COLD):
    """A ready version (a row only) of a new adapter of ``tenant`` on SmolLM2's catalog row."""
    return make_adapter(tenant, base_model(), name, tier, versions=1).current_version


def submitted(tenant, *, version=None, tier=None, created_at=None):
    """A request row as inference_submit leaves it (running on a node)."""
    row = InferenceRequest.objects.create(
        id=f"req_{next(_request_ids):032x}", tenant=tenant, base_model=base_model(), adapter_version=version,
        tier=tier or (version.adapter.tier if version else Adapter.COLD), max_tokens=64,
        status=InferenceRequest.RUNNING)
    if created_at is not None:
        InferenceRequest.objects.filter(pk=row.pk).update(created_at=created_at)
    return row


def final_event(*, reason="stop", gpu_ms=23.4, prompt=5, completion=7, ready_ms=1.0, total_ms=120.0, error=None):
    return {"finish_reason": reason, "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                               "cached_tokens": 0},
            "timings": {"queued_ms": 0.5, "adapter_ready_ms": ready_ms, "first_token_ms": 20.0, "total_ms": total_ms},
            "gpu_ms": gpu_ms, "error": error}


def finish(tenant, *, version=None, tier=None, **final):
    row = submitted(tenant, version=version, tier=tier)
    return record_node_final(row.id, final_event(**final))


def ledger(tenant=None):
    rows = UsageEvent.objects.order_by("id")
    return list(rows.filter(tenant=tenant) if tenant is not None else rows)
