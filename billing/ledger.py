"""Writes to the append-only usage ledger: one row per billable fact, keyed by its natural id.

    inference:<request id>         a request's units and GPU time (from the runtime's final event)
    credit:<request id>            the SLO credit of a request that broke its tier's guarantee
    training:<job id>:<step>       one optimizer step's gradients
    adjustment:<id>                a correction by staff (``manage.py billing_adjust``)

Each row is inserted in a savepoint: a duplicate (a redelivered message, a second control worker) hits the
unique key and the existing row is returned instead, so a fact is billed once whatever is retried. The callers
hold their own row locks (the request, the training job) in the same transaction, so the ledger row and the
state change it bills commit together or not at all.

What a finished request is billed (decided here, shown on the usage page and, by ``finished_price``, in its answer):
- succeeded: its tier's units + its GPU time;
- cancelled: units + GPU time when the node did any work for it (GPU-ms or tokens); a request cancelled before
  it ran bills nothing;
- failed: the GPU time actually spent, no units (the answer never came); 0 GPU-ms bills nothing.
A request that broke its tier's guarantee and was charged its units gets the tier's premium over cold back as a
credit row (0 for cold).
"""

import logging
import uuid
from datetime import timedelta
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from . import caps
from .models import UsageEvent
from .plans import (
    ZERO,
    InferenceCost,
    account_for,
    inference_cost,
    measured_ms,
    period_of,
    plan_for,
    price_json,
    quantize,
    slo_credit,
    training_cost,
)

log = logging.getLogger(__name__)


def _append(**fields):
    """(row, created): inserts the row, or returns the one already holding its key."""
    try:
        with transaction.atomic():
            return UsageEvent.objects.create(**fields), True
    except IntegrityError:
        existing = UsageEvent.objects.filter(key=fields["key"]).first()
        if existing is None:
            raise  # not the key: a real problem
        return existing, False


def occurred_at_of(created_at, total_ms):
    """When a request ended on its node: created + the node's total time (the final event has no clock of its
    own), never later than now. The broker hop to the node is not in total_ms, so the lag is an upper bound."""
    now = timezone.now()
    if total_ms is None or created_at is None:
        return now
    return min(created_at + timedelta(milliseconds=max(total_ms, 0)), now)


# The terminal statuses of a request, which decide what it is billed (serving.models.InferenceRequest records the same
# values; billing sits below serving and names them itself).
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"


def finish_status(finish_reason):
    """The request status a final event's finish_reason ends it in."""
    return {"stop": SUCCEEDED, "length": SUCCEEDED, "cancelled": CANCELLED}.get(finish_reason, FAILED)


def charges(*, status, gpu_ms, completion_tokens):
    """(charge units?, bill at all?) for a finished request, by the policy in the module docstring."""
    worked = measured_ms(gpu_ms) > 0 or completion_tokens > 0
    if status == SUCCEEDED:
        return True, True
    if status == CANCELLED:
        return worked, worked
    return False, measured_ms(gpu_ms) > 0


def finished_price(*, tenant, tier, created_at, final):
    """What a finished request is billed, from the runtime's final event: the same plan version, policy
    (``charges``) and formula as its ledger row, so the two agree to the 1e-10 dollar. ``final``
    is the contract's final event (finish_reason, usage, timings, gpu_ms)."""
    timings, usage = final.get("timings") or {}, final.get("usage") or {}
    charge_units, bill = charges(status=finish_status(final.get("finish_reason")), gpu_ms=final.get("gpu_ms"),
                                 completion_tokens=usage.get("completion_tokens") or 0)
    plan = plan_for(tenant, occurred_at_of(created_at, timings.get("total_ms")))
    if not bill:
        return price_json(plan, InferenceCost(units=0, billed_gpu_ms=0, cost_units=ZERO, cost_compute=ZERO))
    return price_json(plan, inference_cost(plan, tier=tier, gpu_ms=final.get("gpu_ms"), charge_units=charge_units))


def record_inference(row):
    """The ledger rows of a request that has just reached a terminal state, from its row as the runtime's final
    event filled it (called by serving.finals.record_final inside its transaction). The inference row, or None:
    bills nothing."""
    charge_units, bill = charges(status=row.status, gpu_ms=row.gpu_ms, completion_tokens=row.completion_tokens)
    if not bill:
        return None
    occurred_at = occurred_at_of(row.created_at, row.total_ms)
    account = account_for(row.tenant_id, create=True)
    plan = plan_for(row.tenant_id, occurred_at, account=account, create=True)
    cost = inference_cost(plan, tier=row.tier, gpu_ms=row.gpu_ms, charge_units=charge_units)
    adapter_id = None
    if row.adapter_version_id is not None:
        adapter_id = row.adapter_version.adapter_id
    common = {"tenant_id": row.tenant_id, "plan": plan, "occurred_at": occurred_at, "period": period_of(occurred_at),
              "tier": row.tier, "adapter_id": adapter_id, "adapter_version_id": row.adapter_version_id,
              "request_id": row.pk}
    event, created = _append(
        key=f"inference:{row.pk}", kind=UsageEvent.INFERENCE, units=cost.units,
        gpu_ms=float(measured_ms(row.gpu_ms)), billed_gpu_ms=cost.billed_gpu_ms, prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens, cost_units=cost.cost_units, cost_compute=cost.cost_compute,
        cost=cost.cost, description=f"{row.tier} query, {row.status}"[:300], **common)
    if created and row.guarantee_broken and charge_units:
        units, amount = slo_credit(plan, tier=row.tier)
        if amount < 0:
            _append(key=f"credit:{row.pk}", kind=UsageEvent.SLO_CREDIT, units=units, cost_units=amount, cost=amount,
                    description=f"SLO credit: {row.tier} adapter ready in {row.adapter_ready_ms or 0:.0f} ms, over "
                                f"its guarantee"[:300], **common)
    if created:
        caps.note_spend(account=account, plan=plan, period=common["period"])
    return event


def record_training_step(job, step_row):
    """The ledger row of one metered optimizer step (called by training_step inside its transaction, right after
    the TrainingStep row keyed by the same (job, step))."""
    occurred_at = step_row.created_at or timezone.now()  # the step message carries no node clock
    account = account_for(job.tenant_id, create=True)
    plan = plan_for(job.tenant_id, occurred_at, account=account, create=True)
    cost = training_cost(plan, gradients=step_row.gradients)
    event, created = _append(
        key=f"training:{job.pk}:{step_row.step}", tenant_id=job.tenant_id, kind=UsageEvent.TRAINING, plan=plan,
        occurred_at=occurred_at, period=period_of(occurred_at), adapter_id=job.adapter_id, job_id=job.pk,
        step=step_row.step, gpu_ms=float(step_row.compute_ms), gradients=step_row.gradients,
        cost_compute=cost, cost=cost, description=f"training {job.pk} step {step_row.step}")
    if created:
        caps.note_spend(account=account, plan=plan, period=period_of(occurred_at))
    return event


@transaction.atomic
def record_adjustment(*, tenant, amount, description, key=None, at=None):
    """A correction by staff: ``amount`` dollars (negative refunds), in the month of ``at`` (default now).
    ``key`` makes a retried adjustment count once; without one each call is a new row."""
    amount = quantize(Decimal(amount))
    if amount == ZERO:
        raise ValueError("An adjustment of 0 changes nothing.")
    if not description.strip():
        raise ValueError("Say why: an adjustment needs a description.")
    at = at or timezone.now()
    account = account_for(tenant, create=True)
    plan = plan_for(tenant, at, account=account, create=True)
    event, created = _append(key=f"adjustment:{key or uuid.uuid4().hex}", tenant_id=account.tenant_id,
                             kind=UsageEvent.ADJUSTMENT, plan=plan, occurred_at=at, period=period_of(at), cost=amount,
                             description=description.strip()[:300])
    if created and amount > 0:
        caps.note_spend(account=account, plan=plan, period=event.period)
    return event
