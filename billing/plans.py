"""Which price plan applies, and what usage costs under it (Decimal only; never a float).

Formulas (VAJRA paper 4.3.1 and Appendix A.2):

    inference = units(tier) x unit_price  +  ceil(gpu_ms / granularity) x granularity x P_GPU / 3,600,000 x M_tenancy
    training  = G x C_gradient / 1,000,000 x P_GPU                      (A.2 literally, per optimizer step)

G counts one gradient per trainable element per trained token (gpu_runtime.training_spec ``training_gradients``),
so a job's bill follows its tokens and trainable parameters, never how its steps are split into micro-batches.

Rounding: each formula is quantized once, to 10 decimal places with ROUND_HALF_EVEN (the ledger's precision,
``billing.models.MONEY``); half-even rather than half-up so that millions of rounded rows carry no upward bias.
Before that nothing rounds: the products are exact and the one division comes last, in a 60-digit context (a
quotient that does not terminate cannot sit exactly on a half at the 11th place, so its 60-digit rounding never
changes the result). ``units x unit_price`` is exact at 10 places already, so a row's total, the sum of its two
quantized parts, is exact too.
GPU-ms arrive as floats from the runtime (rounded there to 3 places); they are read through ``repr`` (the shortest
decimal that is that float) before the granularity round-up, so 10.0 ms is one 10 ms slice, not two.
"""

import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, localcontext

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models.signals import post_delete, post_save
from django.utils import timezone

from .models import BillingAccount, PricePlan

log = logging.getLogger(__name__)

DEFAULT_PLAN = "standard"
DEFAULT_EFFECTIVE_FROM = datetime(2020, 1, 1, tzinfo=UTC)
PLACES = Decimal("1E-10")
MS_PER_HOUR = 3_600_000
GRADIENTS_PER_MILLION = 1_000_000
ZERO = Decimal("0")
TIERS = ("cold", "warm", "hot")
_DISPLAY_TTL_SECONDS = 30.0


def quantize(value):
    """A money amount at the ledger's 10 decimal places, half-even."""
    return value.quantize(PLACES, rounding=ROUND_HALF_EVEN)


def measured_ms(gpu_ms):
    """The runtime's GPU-ms as an exact Decimal: a missing, negative or non-finite value counts as 0."""
    if isinstance(gpu_ms, bool) or not isinstance(gpu_ms, int | float | Decimal):
        return ZERO
    if isinstance(gpu_ms, float):
        if not math.isfinite(gpu_ms):
            return ZERO
        gpu_ms = Decimal(repr(gpu_ms))
    return max(Decimal(gpu_ms), ZERO)


def billed_ms(gpu_ms, granularity):
    """GPU-ms rounded up to the plan's billing granularity (a whole number of slices of ``granularity`` ms)."""
    slices = (measured_ms(gpu_ms) / granularity).to_integral_value(rounding=ROUND_CEILING)
    return int(slices) * granularity


@dataclass(frozen=True)
class InferenceCost:
    units: int
    billed_gpu_ms: int
    cost_units: Decimal
    cost_compute: Decimal

    @property
    def cost(self):
        return self.cost_units + self.cost_compute


def compute_cost(plan, billed_gpu_ms):
    """billed GPU-ms x P_GPU / 3,600,000 x M_tenancy, quantized once. The products are exact, and the one
    division comes last: dividing first would round 1/3,600,000 and could tip an exact half at the 11th place
    the wrong way (hypothesis found one)."""
    with localcontext() as ctx:
        ctx.prec = 60
        return quantize(Decimal(billed_gpu_ms) * plan.gpu_price_per_hour * plan.tenancy_factor / MS_PER_HOUR)


def units_cost(plan, units):
    with localcontext() as ctx:
        ctx.prec = 60
        return quantize(units * plan.unit_price)


def inference_cost(plan, *, tier, gpu_ms, charge_units=True):
    """A request's cost: its tier's units (unless ``charge_units`` is False) plus its GPU time."""
    units = plan.units_for(tier) if charge_units else 0
    billed = billed_ms(gpu_ms, plan.billing_granularity_ms)
    return InferenceCost(units=units, billed_gpu_ms=billed, cost_units=units_cost(plan, units),
                         cost_compute=compute_cost(plan, billed))


def training_cost(plan, *, gradients):
    """A.2: G x C_gradient / 1,000,000 x P_GPU, quantized once (the paper's formula as written)."""
    with localcontext() as ctx:
        ctx.prec = 60
        return quantize(Decimal(max(int(gradients), 0)) * plan.gradient_price_per_million * plan.gpu_price_per_hour
                        / GRADIENTS_PER_MILLION)


def slo_credit(plan, *, tier):
    """The tier's premium over cold, as a negative amount and negative units: 0 for cold."""
    premium = max(plan.units_for(tier) - plan.units_cold, 0)
    return -premium, -units_cost(plan, premium)


# ---- which plan ----------------------------------------------------------------------------------------------

def period_of(at):
    """The billing month ``at`` belongs to (UTC), as its first day."""
    at = at.astimezone(UTC) if isinstance(at, datetime) else at
    return date(at.year, at.month, 1)


def period_start(period):
    return datetime(period.year, period.month, 1, tzinfo=UTC)


def next_period(period):
    return date(period.year + (period.month == 12), period.month % 12 + 1, 1)


def _tenant_id(tenant):
    return getattr(tenant, "pk", tenant)


def account_for(tenant, *, create=False):
    """The tenant's billing account. Reads never write: without ``create`` a tenant that has none gets an unsaved
    default one (so a refused request leaves the database as it was); ledger writes create it."""
    tenant_id = _tenant_id(tenant)
    if create:
        return BillingAccount.objects.get_or_create(tenant_id=tenant_id)[0]
    return BillingAccount.objects.filter(tenant_id=tenant_id).first() or BillingAccount(tenant_id=tenant_id)


def ensure_default_plan():
    """The 'standard' plan v1 (migration 0002 creates it and 0007 adds the per-token gradient price as a later
    version; a database flushed by a test may have neither, and then gets v1 at the model's defaults)."""
    try:
        with transaction.atomic():
            return PricePlan.objects.get_or_create(name=DEFAULT_PLAN, version=1,
                                                   defaults={"effective_from": DEFAULT_EFFECTIVE_FROM})[0]
    except IntegrityError:  # created meanwhile by another worker
        return PricePlan.objects.get(name=DEFAULT_PLAN, version=1)


def plan_version(name, at):
    """The newest version of plan ``name`` in effect at ``at``, or None."""
    return PricePlan.objects.filter(name=name, effective_from__lte=at).order_by("-effective_from", "-version").first()


def plan_for(tenant, at=None, *, account=None, create=False):
    """The plan version that prices the tenant's usage at ``at`` (default now): its account's plan, newest version
    effective then. A plan name with no version in effect falls back to the standard plan (logged), so usage is
    never left unpriced. Without any plan in the database: the standard v1, created when ``create`` (ledger
    writes), else an unsaved copy (reads write nothing)."""
    at = at or timezone.now()
    account = account or account_for(tenant)
    plan = plan_version(account.plan_name, at)
    if plan is None and account.plan_name != DEFAULT_PLAN:
        log.error("tenant %s: plan %r has no version in effect at %s; pricing with %r", _tenant_id(tenant),
                  account.plan_name, at.isoformat(), DEFAULT_PLAN)
        plan = plan_version(DEFAULT_PLAN, at)
    if plan is None:
        plan = ensure_default_plan() if create else PricePlan(name=DEFAULT_PLAN, effective_from=DEFAULT_EFFECTIVE_FROM)
    return plan


# ---- on every submit: the price shown and the cap checked come from a plan cached for a few seconds ----------

_display_cache = {}
_display_lock = threading.Lock()


def cached_plan(name):
    """The plan version in effect now, cached per process for 30 s (dropped at once when this process saves a
    plan): for what the API shows and the admission check, never for pricing the ledger."""
    now = time.monotonic()
    with _display_lock:
        hit = _display_cache.get(name)
        if hit is not None and now - hit[0] < _DISPLAY_TTL_SECONDS:
            return hit[1]
    plan = plan_version(name, timezone.now()) or plan_version(DEFAULT_PLAN, timezone.now()) or PricePlan()
    with _display_lock:
        _display_cache[name] = (now, plan)
    return plan


def _forget_display_plans(**_):
    with _display_lock:
        _display_cache.clear()


post_save.connect(_forget_display_plans, sender=PricePlan, dispatch_uid="billing.plans.forget_display")
post_delete.connect(_forget_display_plans, sender=PricePlan, dispatch_uid="billing.plans.forget_display_delete")


@dataclass(frozen=True)
class PlanLimits:
    """A tenant's quotas, from its plan version in effect now. ``plan`` names it in refusals."""

    plan: str
    max_adapters: int
    max_concurrent_requests: int
    max_tokens: int
    dataset_max_bytes: int
    dataset_max_records: int
    storage_max_bytes: int


def plan_limits(tenant, *, account=None):
    """The tenant's quotas: its account's plan through the 30 s plan cache, so one small account read (none when
    the caller passes the ``account`` it already read, as the submit path does)."""
    plan = cached_plan((account or account_for(tenant)).plan_name)
    return PlanLimits(plan=plan.name, max_adapters=plan.max_adapters,
                      max_concurrent_requests=plan.max_concurrent_requests, max_tokens=plan.max_tokens,
                      dataset_max_bytes=plan.dataset_max_bytes, dataset_max_records=plan.dataset_max_records,
                      storage_max_bytes=plan.storage_max_bytes)


def price_json(plan, cost):
    """A price as the APIs show it: units, integer micro-dollars (half-even) and the exact amount at the ledger's
    10 places, with the plan that priced it."""
    micro = (cost.cost * 1_000_000).to_integral_value(rounding=ROUND_HALF_EVEN)
    return {"units": cost.units, "micro_usd": int(micro), "usd": format(quantize(cost.cost), "f"),
            "plan": plan.name}


def query_price(tier, *, tenant, account=None):
    """The price of one query of ``tier`` under the tenant's current plan, before it runs: its tier's units (GPU
    time is added when it ends, ``billing.ledger.finished_price``). The one price every page and API shows for a
    query (tier cards, the playground, the responses' ``cost``); the plan comes through the 30 s plan cache, the
    account is read unless the caller passes the one it already read (the submit path)."""
    plan = cached_plan((account or account_for(tenant)).plan_name)
    return price_json(plan, inference_cost(plan, tier=tier, gpu_ms=0))


def training_price(*, tenant, gradients):
    """What ``gradients`` of training cost under the tenant's current plan (A.2, ``training_cost``), in integer
    micro-dollars rounded up (an estimate never under-quotes), with the plan: the one price that training
    estimates and pages show."""
    plan = cached_plan(account_for(tenant).plan_name)
    cost = training_cost(plan, gradients=gradients)
    return int((cost * 1_000_000).to_integral_value(rounding=ROUND_CEILING)), plan


def money_text(value, places=2):
    """A Decimal as a plain string with ``places`` decimals (half-even), for pages: never in E notation."""
    return format(Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN), "f")


def plain(value):
    """A Decimal without trailing zeros and never in E notation: 2.00 -> "2", 0.0001 -> "0.0001"."""
    return format(Decimal(value).normalize(), "f")


def tier_info(tier, *, tenant):
    """A tier card: its price under the tenant's plan (query_price) and its adapter-ready guarantee."""
    price = query_price(tier, tenant=tenant)
    return {"tier": tier, "units_per_query": price["units"], "usd_per_query": float(price["usd"]),
            "micro_usd_per_query": price["micro_usd"], "plan": price["plan"],
            "adapter_ready_ms_guarantee": settings.VAJRA_TIER_READY_MS[tier]}
