"""Spend controls: the monthly cap refuses inference requests and training jobs at admission with
402 (nothing written, no task sent), the 80 % warning on the pages and by email once a month, the cap form, and
the failed-payment policy (grace period, then suspend)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone

from adapters.models import BaseModel
from billing import caps
from billing.caps import TASK_CAP_WARNING, cap_warning_send, check_spend, spend_status
from billing.ledger import record_adjustment
from billing.models import BillingAccount, PricePlan, UsageEvent
from billing.plans import next_period, period_of
from billing.standing import account_paid, account_past_due, accounts_suspend_past_due
from serving.models import InferenceRequest
from tenants.models import Tenant
from tenants.roles import BILLING_VIEWER
from tests.billing_helpers import adapter_version, finish
from tests.factories import (
    TRAINING_HP,
    create_key,
    key_client,
    make_adapter,
    make_base,
    make_dataset,
    make_member,
    make_node,
    session_client,
)
from tests.helpers import assert_error, bearer_client, capture_sent, post_json, refused
from training.models import TrainingJob

pytestmark = pytest.mark.usefixtures("standard")
CHAT = "/v1/chat/completions"
BASE = "tiny-llama"
INFER = "/v1/models/smollm2-135m-instruct/infer"


@pytest.fixture
def catalog(acme):
    base = BaseModel.objects.create(name="smollm2-135m-instruct", context_length=2048)
    make_node("n1", base=base.name, slots=4)
    return make_adapter(acme, base, "support-bot", versions=1)


@pytest.fixture
def alice_api(alice, acme):
    return bearer_client(create_key(alice, acme)[1])


@pytest.fixture
def dataset(acme, adapter_storage):
    make_base()
    return make_dataset(acme)


@pytest.fixture
def sent(monkeypatch):
    return capture_sent(monkeypatch)


@pytest.fixture
def post_train(alice, acme, django_capture_on_commit_callbacks):
    client = key_client(create_key(alice, acme)[1])

    def post(*, dataset, hp=None):
        body = {"adapter_id": "support-bot", "dataset": dataset, "hyperparameters": {**TRAINING_HP, **(hp or {})}}
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(f"/v1/models/{BASE}/train", body, format="json")

    return post


def capped(tenant, cap, spent):
    BillingAccount.objects.create(tenant=tenant, spend_cap=Decimal(cap))
    if Decimal(spent):
        record_adjustment(tenant=tenant, amount=spent, description="usage so far", key=f"spent-{tenant.slug}")


def first_of_next_month():
    day = next_period(period_of(timezone.now()))
    return f"{day.day} {day:%B %Y}"


# ---- inference ------------------------------------------------------------------------------------------------

def test_inference_is_refused_with_402_once_the_cap_is_reached(alice_api, catalog, acme, unchanged_db, monkeypatch):
    capped(acme, "0.50", "0.50")
    messages = capture_sent(monkeypatch)
    with unchanged_db():
        for path, body in ((INFER, {"prompt": "Hello"}),
                           (CHAT, {"model": "support-bot", "messages": [{"role": "user", "content": "Hi"}]})):
            error = assert_error(post_json(alice_api, path, body), 402, code="spend_cap_reached")
            assert error["message"] == (
                "This month's spend $0.50 reached the cap $0.50; raise the cap on the Billing › Plan page "
                f"(/billing/plan/) or wait for {first_of_next_month()} (UTC).")
    assert messages == [] and not InferenceRequest.objects.exists()


def test_under_the_cap_requests_are_admitted(alice_api, catalog, acme, runtime):
    capped(acme, "1.00", "0.99")  # (99 %: the warning task is sent too)
    runtime.sent.clear()
    response = post_json(alice_api, INFER, {"prompt": "Hello"})
    assert response.status_code == 200, response.content
    assert InferenceRequest.objects.count() == 1 and len(runtime.sent) == 1


def test_the_plans_cap_applies_when_the_account_has_none(acme):
    PricePlan.objects.create(name="capped", version=1, effective_from=timezone.now() - timedelta(days=1),
                             monthly_spend_cap=Decimal("1.00"))
    BillingAccount.objects.create(tenant=acme, plan_name="capped")
    record_adjustment(tenant=acme, amount="0.99", description="usage")
    check_spend(acme)
    record_adjustment(tenant=acme, amount="0.01", description="usage")
    with pytest.raises(caps.SpendCapReached):
        check_spend(acme)
    BillingAccount.objects.filter(tenant=acme).update(spend_cap=Decimal("5"))  # the tenant's own cap wins
    check_spend(acme)


def test_credits_count_against_the_spend(acme):
    capped(acme, "1.00", "1.00")
    with pytest.raises(caps.SpendCapReached):
        check_spend(acme)
    record_adjustment(tenant=acme, amount="-0.25", description="refund")
    check_spend(acme)
    assert spend_status(acme).spend == Decimal("0.75")


def test_last_months_spend_does_not_count(acme):
    capped(acme, "1.00", "0")
    record_adjustment(tenant=acme, amount="5.00", description="last month",
                      at=timezone.now().replace(day=1) - timedelta(days=2))
    check_spend(acme)


# ---- training -------------------------------------------------------------------------------------------------

def test_training_is_refused_with_402_once_the_cap_is_reached(post_train, dataset, acme, unchanged_db, sent):
    capped(acme, "1.00", "1.00")
    error = refused(unchanged_db, sent, lambda: post_train(dataset=dataset.id), 402, code="spend_cap_reached")
    assert "reached the cap $1.00" in error["message"]
    assert not TrainingJob.objects.exists()


def test_training_is_refused_when_its_estimate_would_pass_the_cap(post_train, acme, adapter_storage, unchanged_db,
                                                                  sent):
    # 10 records of 896,000 tokens in all (the upload's count): 1792 trainable x 2,688,000 tokens over 3 epochs =
    # 4,816,896,000 gradients x $0.00000005 / 1e6 x $2.00 = $0.0004816896, quoted $0.000482
    make_base()
    dataset = make_dataset(acme, tokens=896_000)
    capped(acme, "0.01", "0.0099")
    error = refused(unchanged_db, sent, lambda: post_train(dataset=dataset.id, hp={"rank": 4}), 402,
                    code="spend_cap_reached")
    assert error["message"].startswith("This training job's estimated cost $0.000482 would take this month's "
                                       "spend $0.01 past the cap $0.01;")
    BillingAccount.objects.filter(tenant=acme).update(spend_cap=Decimal("0.02"))
    assert post_train(dataset=dataset.id, hp={"rank": 4}).status_code == 201


# ---- the 80 % warning -----------------------------------------------------------------------------------------

def test_crossing_80_percent_sends_the_warning_task_once_per_month(acme, monkeypatch,
                                                                   django_capture_on_commit_callbacks):
    capped(acme, "0.01", "0")
    messages = capture_sent(monkeypatch)
    warm = adapter_version(acme, tier="warm")
    with django_capture_on_commit_callbacks(execute=True):
        finish(acme, version=warm, gpu_ms=0.0, completion=1)  # $0.0005: 5 %
    assert messages == []
    with django_capture_on_commit_callbacks(execute=True):
        record_adjustment(tenant=acme, amount="0.0075", description="usage")  # 80 %
    period = period_of(timezone.now()).isoformat()
    assert messages == [(TASK_CAP_WARNING, [acme.pk, period], {"queue": "control"})]


def test_the_warning_is_mailed_once_to_owners_admins_and_billing_viewers(acme, alice, bob):
    make_member("vera@acme.test", acme, BILLING_VIEWER)
    capped(acme, "10.00", "8.00")
    period = period_of(timezone.now())
    assert cap_warning_send(tenant_id=acme.pk, period=period.isoformat()) is True
    assert cap_warning_send(tenant_id=acme.pk, period=period.isoformat()) is False  # a redelivered task
    [message] = mail.outbox
    assert sorted(message.to) == ["alice@acme.test", "vera@acme.test"]  # not bob, a developer
    assert message.subject == "Acme has used 80% of its monthly spend cap on VAJRA"
    assert "$8.00 of its $10.00 cap" in message.body and first_of_next_month() in message.body
    assert BillingAccount.objects.get(tenant=acme).cap_warning_period == period


def test_a_failed_mail_gives_the_month_back(acme, alice, monkeypatch):
    capped(acme, "10.00", "9.00")
    period = period_of(timezone.now()).isoformat()

    def down(*args, **kwargs):
        raise OSError("smtp down")

    monkeypatch.setattr(caps, "send_mail", down)
    with pytest.raises(OSError):
        cap_warning_send(tenant_id=acme.pk, period=period)
    assert BillingAccount.objects.get(tenant=acme).cap_warning_period is None
    monkeypatch.undo()
    assert cap_warning_send(tenant_id=acme.pk, period=period) is True and len(mail.outbox) == 1


def test_no_warning_under_80_percent(acme, alice):
    capped(acme, "10.00", "7.99")
    assert cap_warning_send(tenant_id=acme.pk, period=period_of(timezone.now())) is False and mail.outbox == []


def test_the_pages_show_the_warning_and_the_reached_cap(acme, alice, client):
    client.force_login(alice)
    capped(acme, "10.00", "1.00")
    assert "data-spend-warning" not in client.get("/usage/").content.decode()
    record_adjustment(tenant=acme, amount="7.50", description="usage")
    for page in ("/usage/", "/billing/plan/"):
        html = client.get(page).content.decode()
        assert "data-spend-warning" in html and "85% of this month" in html, page
    record_adjustment(tenant=acme, amount="2.00", description="usage")
    assert "reached the $10.00 cap" in client.get("/usage/").content.decode()


# ---- the cap form ---------------------------------------------------------------------------------------------

def test_owners_set_the_cap_and_developers_cannot(acme, alice, bob):
    owner = session_client(alice)
    response = owner.post("/billing/plan/spend-cap", {"spend_cap": "$250"})
    assert response.status_code == 302
    account = BillingAccount.objects.get(tenant=acme)
    assert account.spend_cap == Decimal("250.00")
    assert "$250.00" in owner.get("/billing/plan/").content.decode()
    owner.post("/billing/plan/spend-cap", {"spend_cap": ""})
    assert BillingAccount.objects.get(tenant=acme).spend_cap is None

    for bad in ("-5", "lots", "1e30"):
        owner.post("/billing/plan/spend-cap", {"spend_cap": bad})
        assert BillingAccount.objects.get(tenant=acme).spend_cap is None, bad

    developer = session_client(bob)
    assert 'name="spend_cap"' not in developer.get("/billing/plan/").content.decode()
    developer.post("/billing/plan/spend-cap", {"spend_cap": "1"})
    assert BillingAccount.objects.get(tenant=acme).spend_cap is None


def test_plan_page_shows_tier_prices_and_guarantees(acme, bob):
    html = session_client(bob).get("/billing/plan/").content.decode()
    for text in ("standard v1", "$0.000100", "$0.000500", "$0.002000", "≤ 10 ms", "≤ 100 ms", "≤ 2,000 ms",
                 "$0.001900 (the premium over cold)", "$0.0000016667 per step", "$0.0000001 per million gradients"):
        assert text in html, text
    assert UsageEvent.objects.count() == 0 and not BillingAccount.objects.exists()  # a page view writes nothing


# ---- failed payments ------------------------------------------------------------------------------------------

def test_past_due_past_the_grace_period_suspends_the_tenant_and_a_payment_reactivates_it(acme, contoso, settings):
    settings.VAJRA_PAYMENT_GRACE_DAYS = 7
    now = timezone.now()
    account_past_due(tenant=acme, at=now - timedelta(days=8))
    account_past_due(tenant=contoso, at=now - timedelta(days=6))  # still in grace
    account_past_due(tenant=acme, at=now)  # a second failure keeps the first date
    assert accounts_suspend_past_due(now=now) == [acme.pk]
    assert accounts_suspend_past_due(now=now) == []  # claimed once
    acme.refresh_from_db()
    contoso.refresh_from_db()
    assert acme.status == Tenant.SUSPENDED and contoso.status == Tenant.ACTIVE
    assert BillingAccount.objects.get(tenant=acme).standing == BillingAccount.SUSPENDED
    assert BillingAccount.objects.get(tenant=contoso).standing == BillingAccount.PAST_DUE

    account_paid(tenant=acme)
    account_paid(tenant=contoso)
    acme.refresh_from_db()
    assert acme.status == Tenant.ACTIVE
    assert set(BillingAccount.objects.values_list("standing", flat=True)) == {BillingAccount.ACTIVE}


def test_a_staff_suspension_is_not_lifted_by_a_payment(acme):
    from tenants.services import tenant_set_status

    tenant_set_status(tenant_id=acme.pk, status=Tenant.SUSPENDED)
    account_paid(tenant=acme)
    acme.refresh_from_db()
    assert acme.status == Tenant.SUSPENDED


def test_the_suspension_check_is_on_the_beat_schedule(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["billing-suspend-past-due"]
    assert entry["task"] == "control.billing_suspend_past_due" and entry["schedule"] == 3600.0
    assert settings.VAJRA_PAYMENT_GRACE_DAYS == 7
