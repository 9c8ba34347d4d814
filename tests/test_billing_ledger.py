"""The usage ledger: the standard plan, prices worked out by hand for
each tier, append-only rows, duplicates ignored by key, training steps and adjustments, plan versions, negative
prices refused, metering lag; and hypothesis properties of the Decimal rounding of the A.2 formulas."""

import importlib
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction

import pytest
from django.apps import apps as django_apps
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.utils import timezone
from hypothesis import example, given, settings
from hypothesis import strategies as st

from billing import plans
from billing.ledger import record_adjustment, record_inference
from billing.metering_lag import metering_lag
from billing.models import BillingAccount, PricePlan, UsageEvent
from serving.dispatch import final_cost, request_cost
from serving.models import InferenceRequest
from tests.billing_helpers import adapter_version, base_model, final_event, finish, ledger, submitted
from tests.factories import make_member, put_on_plan, record_node_final

STANDARD = {"unit_price": Decimal("0.0001"), "gpu_price_per_hour": Decimal("2.00"), "tenancy_factor": Decimal("0.3"),
            "gradient_price_per_million": Decimal("0.00000005"), "billing_granularity_ms": 10}


# ---- the plan ------------------------------------------------------------------------------------------------

def test_migration_creates_the_standard_plan_with_the_papers_numbers(db):
    migration = importlib.import_module("billing.migrations.0002_default_plan")
    migration.create_default_plan(django_apps, None)
    migration.create_default_plan(django_apps, None)  # idempotent
    plan = PricePlan.objects.get(name="standard", version=1)
    assert plan.effective_from == datetime(2020, 1, 1, tzinfo=UTC)
    assert {name: getattr(plan, name) for name in STANDARD} == STANDARD
    assert (plan.units_cold, plan.units_warm, plan.units_hot, plan.currency) == (1, 5, 20, "usd")
    assert plan.monthly_spend_cap is None


def test_plan_for_takes_the_accounts_plan_newest_version_in_effect(acme, standard):
    later = datetime(2030, 1, 1, tzinfo=UTC)
    v2 = PricePlan.objects.create(name="standard", version=2, effective_from=later, unit_price=Decimal("0.0002"))
    assert plans.plan_for(acme, later - timedelta(seconds=1)) == standard
    assert plans.plan_for(acme, later) == v2
    gold = PricePlan.objects.create(name="gold", version=1, effective_from=datetime(2021, 1, 1, tzinfo=UTC))
    BillingAccount.objects.create(tenant=acme, plan_name="gold")
    assert plans.plan_for(acme, datetime(2025, 1, 1, tzinfo=UTC)) == gold
    # a plan with no version in effect yet: priced with the standard plan, never left unpriced
    assert plans.plan_for(acme, datetime(2020, 6, 1, tzinfo=UTC)) == standard


def test_reads_write_nothing_and_a_flushed_database_still_prices(acme, unchanged_db):
    PricePlan.objects.all().delete()
    with unchanged_db():
        plan = plans.plan_for(acme)
        assert plan.pk is None and plan.unit_price == Decimal("0.0001")
        assert plans.account_for(acme).pk is None
        assert plans.query_price("warm", tenant=acme) == {"units": 5, "micro_usd": 500, "usd": "0.0005000000",
                                                          "plan": "standard"}
    assert plans.plan_for(acme, create=True).pk is not None


def test_negative_prices_are_refused_by_the_model_the_database_and_the_admin(db, client, unchanged_db):
    at = datetime(2020, 1, 1, tzinfo=UTC)
    plan = PricePlan(name="cheap", version=1, effective_from=at, unit_price=Decimal("-0.0001"))
    with pytest.raises(ValidationError) as refused:
        plan.full_clean()
    assert "unit_price" in refused.value.message_dict
    with pytest.raises(IntegrityError), transaction.atomic():
        PricePlan.objects.create(name="cheap", version=1, effective_from=at, gpu_price_per_hour=Decimal("-2"))
    from tenants.models import User

    root = User.objects.create_superuser("root@vajra.test", "correct horse battery staple")
    client.force_login(root)
    form = {"name": "cheap", "version": 1, "effective_from_0": "2020-01-01", "effective_from_1": "00:00:00",
            "currency": "usd", "unit_price": "-0.0001", "units_cold": 1, "units_warm": 5, "units_hot": 20,
            "gpu_price_per_hour": "2.00", "tenancy_factor": "0.3", "gradient_price_per_million": "0.05",
            "billing_granularity_ms": 10, "monthly_spend_cap": "", "max_adapters": 50,
            "max_concurrent_requests": 16, "max_tokens": 2048, "storage_max_bytes": 10 * 2**30}
    with unchanged_db():
        response = client.post("/admin/billing/priceplan/add/", form)
        assert response.status_code == 200 and "greater than or equal to 0" in response.content.decode()
    assert client.post("/admin/billing/priceplan/add/", {**form, "unit_price": "0.0001"}).status_code == 302
    assert PricePlan.objects.filter(name="cheap").count() == 1


def test_a_plan_that_priced_usage_is_read_only_in_the_admin(acme, standard, client):
    from tenants.models import User

    finish(acme)
    client.force_login(User.objects.create_superuser("root@vajra.test", "correct horse battery staple"))
    page = client.get(f"/admin/billing/priceplan/{standard.pk}/change/").content.decode()
    assert 'name="unit_price"' not in page  # shown, not editable
    assert client.get("/admin/billing/usageevent/").status_code == 200


# ---- inference rows, by hand ----------------------------------------------------------------------------------

@pytest.mark.parametrize("tier, units, cost_units", [("cold", 1, "0.0001"), ("warm", 5, "0.0005"),
                                                      ("hot", 20, "0.0020")])
def test_each_tiers_price_by_hand(acme, standard, tier, units, cost_units):
    version = adapter_version(acme, tier=tier)
    row = finish(acme, version=version, gpu_ms=23.4)
    [event] = ledger(acme)
    # 23.4 ms -> 3 slices of 10 ms = 30 ms; 30 x $2.00 / 3,600,000 x 0.3 = $0.000005 exactly
    assert (event.key, event.kind, event.tier, event.units) == (f"inference:{row.id}", "inference", tier, units)
    assert (event.gpu_ms, event.billed_gpu_ms) == (23.4, 30)
    assert event.cost_units == Decimal(cost_units)
    assert event.cost_compute == Decimal("0.000005")
    assert event.cost == Decimal(cost_units) + Decimal("0.000005")
    assert (event.prompt_tokens, event.completion_tokens) == (5, 7)
    assert event.adapter_id == version.adapter_id and event.adapter_version_id == version.pk
    assert event.request_id == row.id and event.plan == standard
    assert event.period == timezone.now().date().replace(day=1)


def test_one_slice_rounds_half_even_to_ten_places(acme, standard):
    finish(acme, gpu_ms=10.0)  # exactly one slice: not two
    [event] = ledger(acme)
    # 10 x 2.00 / 3,600,000 x 0.3 = 0.0000016666... -> 0.0000016667
    assert event.billed_gpu_ms == 10 and event.cost_compute == Decimal("0.0000016667")
    assert event.cost == Decimal("0.0001016667")


def test_occurred_at_is_the_end_on_the_node_never_later_than_now(acme, standard):
    created = timezone.now() - timedelta(seconds=10)
    row = submitted(acme, created_at=created)
    record_node_final(row.id, final_event(total_ms=1500.0))
    later = submitted(acme)
    record_node_final(later.id, final_event(total_ms=10**7))  # a node clock gone wrong
    first, second = ledger(acme)
    assert first.occurred_at == created + timedelta(milliseconds=1500)
    assert second.occurred_at <= second.created_at


@pytest.mark.parametrize("reason, gpu_ms, completion, expected", [
    ("error", 0.0, 0, None),  # failed before any work: nothing
    ("error", 15.0, 0, (0, 20)),  # failed after work: its GPU time, no units
    ("cancelled", 0.0, 0, None),  # cancelled before it ran: nothing
    ("cancelled", 31.0, 3, (5, 40)),  # cancelled mid-way: units + GPU time
    ("length", 0.0, 64, (5, 0)),  # a succeeded request always pays its units
])
def test_what_an_unfinished_request_bills(acme, standard, reason, gpu_ms, completion, expected):
    version = adapter_version(acme, tier="warm")
    error = {"code": "runtime_error", "message": "boom"} if reason == "error" else None
    finish(acme, version=version, reason=reason, gpu_ms=gpu_ms, completion=completion, error=error)
    rows = ledger(acme)
    if expected is None:
        assert rows == []
    else:
        assert [(r.units, r.billed_gpu_ms) for r in rows] == [expected]


def test_the_ledger_is_append_only(acme, standard):
    finish(acme)
    [event] = ledger(acme)
    event.cost = Decimal("0")
    with pytest.raises(TypeError, match="append-only"):
        event.save()
    with pytest.raises(TypeError, match="append-only"):
        event.delete()
    with pytest.raises(TypeError, match="append-only"):
        UsageEvent.objects.filter(pk=event.pk).update(cost=0)
    with pytest.raises(TypeError, match="append-only"):
        UsageEvent.objects.filter(pk=event.pk).delete()
    assert UsageEvent.objects.get(pk=event.pk).cost == Decimal("0.0001050000")


def test_a_duplicate_final_event_or_a_retried_write_bills_once(acme, standard):
    row = finish(acme)
    record_node_final(row.id, final_event(gpu_ms=999.0))  # a redelivered final event
    [event] = ledger(acme)
    row.refresh_from_db()
    assert record_inference(row) == event  # a retried write returns the row that holds the key
    with transaction.atomic():  # and leaves the caller's transaction usable
        assert record_inference(row) == event
        assert InferenceRequest.objects.filter(pk=row.pk).exists()
    assert ledger(acme) == [event] and event.billed_gpu_ms == 30


def test_the_key_is_unique_in_the_database(acme, standard):
    finish(acme)
    [event] = ledger(acme)
    fields = {f.attname: getattr(event, f.attname) for f in UsageEvent._meta.concrete_fields if f.attname != "id"}
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageEvent.objects.create(**fields)


def test_the_request_and_its_ledger_row_commit_together(acme, standard, monkeypatch):
    row = submitted(acme)

    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(UsageEvent.objects, "create", broken)
    with pytest.raises(RuntimeError):
        record_node_final(row.id, final_event())
    row.refresh_from_db()
    assert row.status == InferenceRequest.RUNNING and ledger() == []  # the redelivered event will do both


def test_a_price_change_is_a_new_version_and_bills_from_its_date(acme, standard):
    PricePlan.objects.create(name="standard", version=2, effective_from=timezone.now() - timedelta(minutes=5),
                             unit_price=Decimal("0.0003"))
    # the saved plan cleared the cache
    assert plans.query_price("warm", tenant=acme)["micro_usd"] == 1500
    finish(acme, gpu_ms=0.0, completion=1)
    [event] = ledger(acme)
    assert event.plan.version == 2 and event.cost_units == Decimal("0.0003")


def test_query_price_uses_the_tenants_plan(acme, contoso, standard):
    PricePlan.objects.create(name="gold", version=1, effective_from=datetime(2021, 1, 1, tzinfo=UTC), units_hot=10)
    BillingAccount.objects.create(tenant=acme, plan_name="gold")
    assert plans.query_price("hot", tenant=contoso) == {"units": 20, "micro_usd": 2000, "usd": "0.0020000000",
                                                        "plan": "standard"}
    assert plans.query_price("hot", tenant=acme) == {"units": 10, "micro_usd": 1000, "usd": "0.0010000000",
                                                     "plan": "gold"}


# ---- training steps and adjustments ---------------------------------------------------------------------------

def test_training_steps_are_billed_once_per_job_and_step(acme, standard, settings):
    from training.models import Dataset, TrainingJob
    from training.progress import training_step

    version = adapter_version(acme)
    dataset = Dataset.objects.create(id="ds_1", tenant=acme, name="t.jsonl", format="completion", records=10,
                                      size_bytes=10, sha256="0" * 64, storage_key="k")
    job = TrainingJob.objects.create(id="ftjob_1", tenant=acme, base_model=base_model(), adapter=version.adapter,
                                     dataset=dataset, status=TrainingJob.RUNNING, started_at=timezone.now())
    # SmolLM2-135M, LoRA r=8 on q, v: 460,800 trainable x 100 tokens
    metering = {"gradients": 46_080_000, "micro_batches": 2, "tokens": 100, "compute_ms": 1500.5, "loss": 1.5}
    assert training_step(job_id=job.id, step=1, metering=metering) is True
    assert training_step(job_id=job.id, step=1, metering=metering) is False  # resumed: re-reported
    assert training_step(job_id=job.id, step=2, metering={**metering, "gradients": 23_040_000, "tokens": 50}) is True
    rows = ledger(acme)
    assert [(r.key, r.kind, r.gradients, r.step) for r in rows] == [
        ("training:ftjob_1:1", "training", 46_080_000, 1), ("training:ftjob_1:2", "training", 23_040_000, 2)]
    # A.2: 46,080,000 x $0.00000005 / 1,000,000 x $2.00 = $0.000004608
    assert [r.cost for r in rows] == [Decimal("0.000004608"), Decimal("0.000002304")]
    assert rows[0].gpu_ms == 1500.5 and rows[0].billed_gpu_ms == 0 and rows[0].adapter_id == version.adapter_id


def test_adjustments_are_new_rows_and_a_keyed_rerun_counts_once(acme, standard, capsys):
    refund = record_adjustment(tenant=acme, amount="-1.25", description="goodwill after the outage")
    assert refund.kind == "adjustment" and refund.cost == Decimal("-1.25") and refund.key.startswith("adjustment:")
    call_command("billing_adjust", "acme", "2.50", "setup fee", "--key", "setup-2026")
    call_command("billing_adjust", "acme", "2.50", "setup fee", "--key", "setup-2026")
    assert [r.cost for r in ledger(acme)] == [Decimal("-1.25"), Decimal("2.50")]
    assert "adjustment:setup-2026" in capsys.readouterr().out
    with pytest.raises(ValueError):
        record_adjustment(tenant=acme, amount="0", description="nothing")


# ---- metering lag ---------------------------------------------------------------------------------------------

def test_metering_lag_percentiles_over_the_last_hour(acme, standard, client):
    now = timezone.now()
    for lag_s in (1, 2, 3, 4, 30):
        row = submitted(acme, created_at=now - timedelta(seconds=lag_s))
        record_node_final(row.id, final_event(total_ms=0.0))
    lag = metering_lag()
    assert lag["events"] == 5 and lag["window_seconds"] == 3600
    assert 2.9 <= lag["p50_seconds"] <= 3.5 and 29.9 <= lag["p95_seconds"] <= 30.5
    assert lag["max_seconds"] == lag["p95_seconds"]

    from tenants.models import User

    alice = make_member("alice@acme.test", acme, "owner")
    client.force_login(alice)
    assert client.get("/api/v1/billing/metering").status_code == 403  # staff only
    staff = User.objects.create_user("ops@vajra.test", "correct horse battery staple", is_staff=True)
    client.force_login(staff)
    body = client.get("/api/v1/billing/metering").json()
    assert body["object"] == "billing.metering_lag" and body["events"] == 5


# ---- rounding properties (hypothesis) ------------------------------------------------------------------------

money = st.decimals(min_value=0, max_value=1000, places=4, allow_nan=False, allow_infinity=False)
gpu_ms = st.floats(min_value=0, max_value=10**7, allow_nan=False, allow_infinity=False).map(lambda v: round(v, 3))


def a_plan(**prices):
    return PricePlan(name="p", version=1, effective_from=datetime(2020, 1, 1, tzinfo=UTC), **prices)


plans_st = st.builds(lambda unit, gpu, tenancy, grad, g: a_plan(unit_price=unit, gpu_price_per_hour=gpu,
                                                                 tenancy_factor=tenancy,
                                                                 gradient_price_per_million=grad,
                                                                 billing_granularity_ms=g),
                     money, money, st.decimals(min_value=0, max_value=5, places=2), money,
                     st.integers(min_value=1, max_value=1000))


def _round_fraction(fraction):
    """The exact rational rounded half-even to 10 places: what 'computed exactly, quantized once' means."""
    scaled = fraction * 10**10
    floor = scaled.numerator // scaled.denominator
    rest = scaled - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2):
        floor += 1
    return Decimal(floor).scaleb(-10)


@settings(max_examples=300, deadline=None)
@given(ms=gpu_ms, granularity=st.integers(min_value=1, max_value=1000))
def test_gpu_time_is_rounded_up_to_whole_slices(ms, granularity):
    billed = plans.billed_ms(ms, granularity)
    assert billed % granularity == 0
    assert Decimal(repr(ms)) <= billed < Decimal(repr(ms)) + granularity


@settings(max_examples=300, deadline=None)
@given(plan=plans_st, ms=gpu_ms, tier=st.sampled_from(plans.TIERS), charge=st.booleans())
@example(plan=a_plan(gpu_price_per_hour=Decimal("943.5397"), tenancy_factor=Decimal("2.43"),
                     billing_granularity_ms=100), ms=5769401.0, tier="cold", charge=False)  # an exact half: ...2625
def test_inference_cost_is_never_negative_exact_and_at_ten_places(plan, ms, tier, charge):
    cost = plans.inference_cost(plan, tier=tier, gpu_ms=ms, charge_units=charge)
    assert cost.cost >= 0 and cost.cost_units >= 0 and cost.cost_compute >= 0
    for amount in (cost.cost, cost.cost_units, cost.cost_compute):
        assert amount.as_tuple().exponent >= -10
    exact = (Fraction(cost.billed_gpu_ms) * Fraction(plan.gpu_price_per_hour) / 3_600_000
             * Fraction(plan.tenancy_factor))
    assert cost.cost_compute == _round_fraction(exact)
    assert cost.cost_units == (plan.units_for(tier) if charge else 0) * plan.unit_price


@settings(max_examples=300, deadline=None)
@given(plan=plans_st, gradients=st.integers(min_value=0, max_value=10**13))
def test_training_cost_is_the_a2_formula_rounded_once(plan, gradients):
    cost = plans.training_cost(plan, gradients=gradients)
    exact = Fraction(gradients) * Fraction(plan.gradient_price_per_million) / 1_000_000 * Fraction(
        plan.gpu_price_per_hour)
    assert cost == _round_fraction(exact) and cost >= 0 and cost.as_tuple().exponent >= -10


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=50))
def test_per_step_training_costs_add_up_to_the_cost_of_the_sum_at_the_papers_prices(steps):
    plan = a_plan(**{**STANDARD, "gradient_price_per_million": Decimal("0.05")})  # $1e-7 a gradient: exact
    assert sum(plans.training_cost(plan, gradients=g) for g in steps) == plans.training_cost(plan,
                                                                                            gradients=sum(steps))


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=50))
def test_per_step_training_costs_stay_within_half_a_ledger_place_a_step_of_the_sum_at_the_default_price(steps):
    """$1e-13 a gradient (one trainable element on one token): each row rounds to 10 places, so a job's rows may
    differ from the cost of its sum by at most half a 1e-10 dollar per step."""
    plan = a_plan(**STANDARD)
    rows = sum(plans.training_cost(plan, gradients=g) for g in steps)
    assert abs(rows - plans.training_cost(plan, gradients=sum(steps))) <= Decimal("0.5E-10") * (len(steps) + 1)


@settings(max_examples=200, deadline=None)
@given(requests=st.lists(gpu_ms, min_size=1, max_size=50), k=st.integers(min_value=0, max_value=10**4),
       granularity=st.integers(min_value=1, max_value=100))
def test_per_request_gpu_costs_add_up_where_the_price_per_ms_is_exact(requests, k, granularity):
    # P_GPU = k x $0.36 and M = 1 make a millisecond cost k x $1e-7: every product is exact at 10 places
    plan = a_plan(gpu_price_per_hour=Decimal(k) * Decimal("0.36"), tenancy_factor=Decimal(1),
                  billing_granularity_ms=granularity)
    billed = [plans.billed_ms(ms, granularity) for ms in requests]
    assert sum(plans.compute_cost(plan, b) for b in billed) == plans.compute_cost(plan, sum(billed))


@settings(max_examples=200, deadline=None)
@given(requests=st.lists(gpu_ms, min_size=1, max_size=50))
def test_per_request_rounding_drifts_at_most_half_a_unit_of_the_tenth_place_per_row(requests):
    plan = a_plan(**STANDARD)  # $1.666...e-7 per ms: each row rounds
    billed = [plans.billed_ms(ms, 10) for ms in requests]
    drift = sum(plans.compute_cost(plan, b) for b in billed) - plans.compute_cost(plan, sum(billed))
    assert abs(drift) <= Decimal("0.5E-10") * (len(requests) + 1)


def test_slo_credit_is_the_premium_over_cold():
    plan = a_plan(**STANDARD)
    assert plans.slo_credit(plan, tier="hot") == (-19, Decimal("-0.0019"))
    assert plans.slo_credit(plan, tier="warm") == (-4, Decimal("-0.0004"))
    assert plans.slo_credit(plan, tier="cold") == (0, Decimal("0"))


@pytest.mark.parametrize(("reason", "gpu_ms", "completion"), [
    ("stop", 23.4, 7), ("length", 0.0, 64), ("cancelled", 31.0, 3), ("cancelled", 0.0, 0), ("error", 15.0, 0)])
def test_the_finished_price_shown_is_the_ledger_row(acme, standard, reason, gpu_ms, completion):
    """On a plan other than the standard one, what a finished request shows is its ledger row, to 1e-10 dollar."""
    put_on_plan(acme, "premium", unit_price=Decimal("0.00037"), gpu_price_per_hour=Decimal("3.1"),
                tenancy_factor=Decimal("0.7"), billing_granularity_ms=7)
    row = submitted(acme, version=adapter_version(acme, tier="hot"))
    error = {"code": "runtime_error", "message": "boom"} if reason == "error" else None
    final = final_event(reason=reason, gpu_ms=gpu_ms, completion=completion, error=error)
    shown = final_cost(row, final)
    row = record_node_final(row.id, final)
    rows = [r for r in ledger(acme) if r.kind == UsageEvent.INFERENCE]
    billed = rows[0].cost if rows else Decimal(0)
    assert shown["plan"] == "premium" and Decimal(shown["usd"]) == billed
    assert shown["micro_usd"] == int((billed * 10**6).to_integral_value(rounding=ROUND_HALF_EVEN))
    assert request_cost(row) == shown  # the request's detail shows the same once it ended
