"""Invoices: the period close, lines per tier, adapter, training job and SLO credit, totals equal
to the ledger sum to the cent, numbering, immutability once open, the state machine (409 otherwise), the page and
its PDF, tenant isolation and roles. Ledger rows are written directly; Stripe is off here (tests/test_stripe.py)."""

import random
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.conf import settings
from django.db import transaction
from django.db.models import ProtectedError
from django.urls import reverse
from hypothesis import given
from hypothesis import strategies as st

from billing.invoices import (
    InvoiceFinalized,
    allocate_cents,
    invoice_draft,
    invoice_finalize,
    invoice_transition,
)
from billing.models import Invoice, InvoiceLine, UsageEvent
from billing.tasks import close_period
from tests.billing_helpers import PERIOD, base_model, close, invoice_of, usage
from tests.factories import make_adapter, make_job
from training.models import TrainingJob

pytestmark = pytest.mark.usefixtures("local_only")

CENT = Decimal("0.01")


def ledger_sum(tenant, period=PERIOD):
    return sum((row.cost for row in UsageEvent.objects.filter(tenant=tenant, period=period)), Decimal(0))


def assert_adds_up(invoice):
    lines = list(invoice.lines.all())
    exact = ledger_sum(invoice.tenant, invoice.period)
    assert sum(line.amount for line in lines) == invoice.total
    assert invoice.total == exact.quantize(CENT, rounding=ROUND_HALF_UP)
    assert sum(line.amount_exact for line in lines) == exact
    assert invoice.subtotal + invoice.credits == invoice.total
    for line in lines:
        assert abs(line.amount - line.amount_exact) < CENT, line


# ---- lines and totals ------------------------------------------------------------------------------------------

def test_lines_per_tier_and_adapter_training_job_and_credits(acme, plan):
    bot, faq = make_adapter(acme, base_model(), "support-bot"), make_adapter(acme, base_model(), "faq")
    for _ in range(2):
        usage(acme, "0.0020500000", tier="hot", adapter=bot, billed_gpu_ms=30)
    usage(acme, "0.0020100000", tier="hot", adapter=faq, billed_gpu_ms=10)
    usage(acme, "0.0001000000", tier="cold", adapter=bot, billed_gpu_ms=20)
    usage(acme, "0.0005000000", tier="warm", billed_gpu_ms=10)  # the base model alone
    job = make_job(acme, bot, job_id="ftjob_one", status=TrainingJob.SUCCEEDED)
    for step in range(3):
        usage(acme, "0.1000000000", kind=UsageEvent.TRAINING, job=job, adapter=bot, step=step, gradients=1_000_000)
    usage(acme, "-0.0190000000", kind=UsageEvent.SLO_CREDIT, tier="hot", adapter=bot)
    usage(acme, "-1.2500000000", kind=UsageEvent.ADJUSTMENT, description="goodwill for the October outage")

    closed, more = close()

    invoice = invoice_of(acme)
    assert closed == [invoice.id] and not more
    lines = list(invoice.lines.order_by("position"))
    assert [(li.kind, li.tier, li.adapter_id, li.quantity, li.unit, li.amount_exact) for li in lines] == [
        ("inference", "cold", bot.id, 1, "requests", Decimal("0.0001")),
        ("inference", "warm", None, 1, "requests", Decimal("0.0005")),
        ("inference", "hot", faq.id, 1, "requests", Decimal("0.00201")),
        ("inference", "hot", bot.id, 2, "requests", Decimal("0.0041")),
        ("training", "", bot.id, 3_000_000, "gradients", Decimal("0.3")),
        ("slo_credit", "hot", None, 1, "requests", Decimal("-0.019")),
        ("adjustment", "", None, 1, "", Decimal("-1.25")),
    ]
    assert lines[3].description == "Inference, hot tier, support-bot: 2 requests, 60 GPU-ms"
    assert lines[1].description.startswith("Inference, warm tier, base model")
    assert lines[4].description == "Training, support-bot (job ftjob_one): 3 steps, 3,000,000 gradients"
    assert "goodwill" in lines[6].description
    assert lines[5].amount == invoice.credits == Decimal("-0.02")
    assert invoice.status == Invoice.OPEN and invoice.currency == "usd" and invoice.finalized_at
    assert_adds_up(invoice)
    assert invoice.total == Decimal("-0.96")  # 0.30671 - 0.019 - 1.25 = -0.96229


@pytest.mark.parametrize("costs,expected_lines,expected_total", [
    # three thirds: each floors to 0.33, the total is 1.00, so the largest remainder (the first) gets the cent
    ([("cold", "0.3333333333"), ("warm", "0.3333333333"), ("hot", "0.3333333334")], ["0.33", "0.33", "0.34"], "1.00"),
    # half a cent each way: 0.005 + 0.005 = 0.01, though each line alone would round to 0.01 (half-up) -> 0.02
    ([("cold", "0.0050000000"), ("warm", "0.0050000000")], ["0.01", "0.00"], "0.01"),
    # a credit's negative remainder: 10.004 - 0.0049999999 = 9.9990000001 -> 10.00
    ([("cold", "10.0040000000"), ("slo", "-0.0049999999")], ["10.00", "0.00"], "10.00"),
])
def test_awkward_fractions_add_up_to_the_ledger_rounded_to_the_cent(acme, plan, costs, expected_lines,
                                                                      expected_total):
    for tier, cost in costs:
        if tier == "slo":
            usage(acme, cost, kind=UsageEvent.SLO_CREDIT, tier="hot")
        else:
            usage(acme, cost, tier=tier)
    close()
    invoice = invoice_of(acme)
    assert [str(line.amount) for line in invoice.lines.order_by("position")] == expected_lines
    assert invoice.total == Decimal(expected_total)
    assert_adds_up(invoice)


def test_many_random_rows_add_up_to_the_cent(acme, plan):
    rng = random.Random(7)
    adapters = [make_adapter(acme, base_model(), f"adapter-{i}") for i in range(4)]
    for _ in range(300):
        kind = rng.choice([UsageEvent.INFERENCE] * 6 + [UsageEvent.SLO_CREDIT])
        cost = Decimal(rng.randrange(1, 10**8)) / Decimal(10**10)
        usage(acme, -cost if kind == UsageEvent.SLO_CREDIT else cost, kind=kind, tier=rng.choice(["cold", "warm",
              "hot"]), adapter=rng.choice(adapters + [None]))
    close()
    assert_adds_up(invoice_of(acme))


@given(st.lists(st.decimals(min_value=-1000, max_value=1000, places=10, allow_nan=False), max_size=30))
def test_largest_remainder_allocation(amounts):
    total = sum(amounts, Decimal(0)).quantize(CENT, rounding=ROUND_HALF_UP)
    cents = allocate_cents(amounts, total)
    assert sum(cents, Decimal(0)) == total
    assert all(abs(c - a) < CENT for c, a in zip(cents, amounts, strict=True))


def test_the_tenants_open_rows_of_that_month_and_before_are_invoiced(acme, contoso, plan):
    usage(acme, "1.0000000000", tier="cold")
    usage(acme, "5.0000000000", tier="cold", period=date(2026, 9, 1))  # never invoiced: goes on October's
    usage(acme, "7.0000000000", tier="cold", period=date(2026, 11, 1))  # a later month: not yet
    usage(contoso, "3.0000000000", tier="cold")
    close()
    october = invoice_of(acme)
    assert october.total == Decimal("6.00")
    assert [(line.usage_period, line.amount) for line in october.lines.order_by("position")] == [
        (None, Decimal("1.00")), (date(2026, 9, 1), Decimal("5.00"))]
    assert invoice_of(contoso).total == Decimal("3.00")
    assert not Invoice.objects.filter(period__in=[date(2026, 9, 1), date(2026, 11, 1)]).exists()


# ---- the period close ------------------------------------------------------------------------------------------

def test_period_close_is_bounded_and_idempotent(acme, contoso, plan):
    from tenants.models import Tenant

    third = Tenant.objects.create(name="Initech", slug="initech")
    for tenant in (acme, contoso, third):
        usage(tenant, "2.5000000000", tier="warm")

    first, more = close(limit=2)
    assert len(first) == 2 and more
    second, more = close(limit=2)
    assert len(second) == 1 and not more
    assert close(limit=2) == ([], False)  # nothing new
    assert Invoice.objects.filter(period=PERIOD, status=Invoice.OPEN).count() == 3
    assert InvoiceLine.objects.count() == 3


def test_period_close_stops_starting_new_invoices_after_its_time(acme, contoso, plan):
    usage(acme, "1", tier="cold")
    usage(contoso, "1", tier="cold")
    closed, more = close(seconds=0)
    assert len(closed) == 1 and more  # at least one per run, then out of time
    assert len(close(seconds=0)[0]) == 1


def test_a_draft_left_by_a_crash_is_finalized_by_the_next_run(acme, plan):
    usage(acme, "1.2345000000", tier="hot")
    draft = invoice_draft(tenant_id=acme.id, period=PERIOD)
    assert draft.status == Invoice.DRAFT and not draft.number
    assert close()[0] == [draft.id]
    assert invoice_finalize(invoice_id=draft.id)[1] is False  # a retried finalize does nothing
    assert invoice_of(acme).total == Decimal("1.23")


def test_only_past_months_close(acme, plan):
    from billing.invoices import invoices_close_period
    from tests.billing_helpers import NOW

    with pytest.raises(ValueError, match="not over yet"):
        invoices_close_period(period=date(2026, 11, 1), limit=10, seconds=10, now=NOW)


def test_the_task_closes_last_month_and_queues_more_when_its_batch_was_full(acme, contoso, plan, settings,
                                                                             monkeypatch):
    from tests.billing_helpers import NOW

    monkeypatch.setattr("django.utils.timezone.now", lambda: NOW)
    queued = []
    monkeypatch.setattr(close_period, "apply_async", lambda args, queue: queued.append((args, queue)))
    usage(acme, "1", tier="cold")
    usage(contoso, "1", tier="cold")
    settings.VAJRA_INVOICE_CLOSE_BATCH = 1

    assert len(close_period()) == 1
    assert queued == [(["2026-10-01"], "control")]
    assert len(close_period("2026-10-01")) == 1
    assert close_period("2026-10-01") == [] and len(queued) == 2  # an empty run queues nothing


def test_beat_closes_invoices_daily_on_the_control_queue():
    from celery.schedules import crontab

    from vajra.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["invoices-close-period"]
    assert entry["task"] == "control.invoices_close_period" and isinstance(entry["schedule"], crontab)
    assert settings.CELERY_BEAT_SCHEDULE["invoices-stripe-sync"]["task"] == "control.invoices_stripe_sync_pending"
    app.loader.import_default_modules()
    for name in ("control.invoices_close_period", "control.invoice_stripe_sync",
                 "control.invoices_stripe_sync_pending"):
        assert name in app.tasks
        assert app.amqp.router.route({}, name)["queue"].name == "control"


# ---- numbering and immutability --------------------------------------------------------------------------------

def test_numbers_are_per_month_sequences(acme, contoso, plan):
    usage(acme, "1", tier="cold")
    usage(contoso, "1", tier="cold")
    usage(acme, "1", tier="cold", period=date(2026, 9, 1))
    close(date(2026, 9, 1))
    close()
    assert invoice_of(acme, date(2026, 9, 1)).number == "VAJ-202609-0001"
    assert sorted(Invoice.objects.filter(period=PERIOD).values_list("number", flat=True)) == [
        "VAJ-202610-0001", "VAJ-202610-0002"]


def test_an_open_invoice_and_its_lines_are_immutable(acme, plan):
    usage(acme, "4.2000000000", tier="hot")
    close()
    invoice = invoice_of(acme)
    for field, value in (("total", Decimal("1.00")), ("number", "VAJ-000000-0001"), ("period", date(2026, 9, 1))):
        changed = invoice_of(acme)
        setattr(changed, field, value)
        with pytest.raises(InvoiceFinalized, match="cannot change once it is finalized"):
            changed.save()
    line = invoice.lines.get()
    line.amount = Decimal("0.01")
    sneaky = InvoiceLine(invoice=invoice, kind="adjustment", description="sneaky", amount_exact=1, amount=1)
    for write in (line.save, line.delete, sneaky.save, invoice.delete):
        # a refused delete breaks its transaction; the invoice's taken ledger rows protect it too
        with pytest.raises((InvoiceFinalized, ProtectedError)), transaction.atomic():
            write()
    stale = invoice_of(acme)
    stale.status = Invoice.DRAFT
    with pytest.raises(InvoiceFinalized, match="cannot go from open to draft"):
        stale.save()
    refreshed = invoice_of(acme)
    assert (refreshed.total, refreshed.number, refreshed.status) == (Decimal("4.20"), "VAJ-202610-0001", "open")
    assert invoice.lines.get().amount == Decimal("4.20")


# ---- the state machine -----------------------------------------------------------------------------------------

@pytest.fixture
def open_invoice(acme, plan):
    usage(acme, "12.3456000000", tier="warm")
    close()
    return invoice_of(acme)


@pytest.mark.parametrize("path,allowed", [
    ([Invoice.PAID], True),
    ([Invoice.VOID], True),
    ([Invoice.UNCOLLECTIBLE], True),
    ([Invoice.UNCOLLECTIBLE, Invoice.PAID], True),  # as on Stripe: paid late
    ([Invoice.UNCOLLECTIBLE, Invoice.VOID], True),
    ([Invoice.PAID, Invoice.VOID], False),
    ([Invoice.PAID, Invoice.UNCOLLECTIBLE], False),
    ([Invoice.VOID, Invoice.PAID], False),
    ([Invoice.VOID, Invoice.VOID], False),
    ([Invoice.UNCOLLECTIBLE, Invoice.UNCOLLECTIBLE], False),
    ([Invoice.OPEN], False),
])
def test_transitions(open_invoice, path, allowed):
    from rest_framework.exceptions import APIException

    *before, last = path
    for status in before:
        invoice_transition(invoice_id=open_invoice.id, to=status)
    if allowed:
        invoice, changed = invoice_transition(invoice_id=open_invoice.id, to=last)
        assert changed and invoice.status == last
        assert (invoice.paid_at is not None) == (last == Invoice.PAID)
    else:
        with pytest.raises(APIException) as refused:
            invoice_transition(invoice_id=open_invoice.id, to=last)
        assert refused.value.status_code == 409 and "VAJ-202610-0001" in str(refused.value.detail)


def test_a_draft_cannot_be_paid(acme, plan):
    from rest_framework.exceptions import APIException

    draft = invoice_draft(tenant_id=acme.id, period=PERIOD)
    with pytest.raises(APIException, match="only finalized by the period close"):
        invoice_transition(invoice_id=draft.id, to=Invoice.PAID)


def test_an_action_the_state_does_not_allow_is_409_and_changes_nothing(open_invoice, olga_client, unchanged_db):
    invoice_transition(invoice_id=open_invoice.id, to=Invoice.VOID)
    with unchanged_db():
        response = olga_client.post(reverse("invoice-action", args=[open_invoice.id, "mark-uncollectible"]))
    assert response.status_code == 409
    assert b"is void; it cannot be marked uncollectible: a void invoice is final" in response.content


def test_staff_void_and_mark_paid_in_local_only_mode(open_invoice, olga_client, acme, plan):
    page = olga_client.get(reverse("invoice", args=[open_invoice.id])).content.decode()
    assert "/void" in page and "mark-paid" in page
    response = olga_client.post(reverse("invoice-action", args=[open_invoice.id, "mark-paid"]))
    assert response.status_code == 302
    assert invoice_of(acme).status == Invoice.PAID and invoice_of(acme).paid_at
    usage(acme, "1", tier="cold", period=date(2026, 9, 1))
    close(date(2026, 9, 1))
    september = invoice_of(acme, date(2026, 9, 1))
    response = olga_client.post(reverse("invoice-action", args=[september.id, "void"]))
    assert response.status_code == 302 and invoice_of(acme, date(2026, 9, 1)).status == Invoice.VOID


@pytest.mark.parametrize("role", ["owner", "admin", "developer", "billing-viewer"])
def test_no_tenant_role_voids_writes_off_or_marks_paid(open_invoice, acme, role, unchanged_db):
    """Owners included: a tenant's members view, download and pay its invoices; changing one is an operator's."""
    from tests.factories import make_member, session_client

    client = session_client(make_member(f"{role}@acme.test", acme, role))
    if role != "developer":
        page = client.get(reverse("invoice", args=[open_invoice.id])).content.decode()
        assert "/void" not in page and "mark-" not in page and "Download PDF" in page
    with unchanged_db():
        for action in ("void", "mark-uncollectible", "mark-paid"):
            response = client.post(reverse("invoice-action", args=[open_invoice.id, action]))
            assert response.status_code == 403, (role, action)
    assert invoice_of(acme).status == Invoice.OPEN


@pytest.mark.parametrize("word,status", [("void", Invoice.VOID), ("mark_uncollectible", Invoice.UNCOLLECTIBLE),
                                         ("mark_paid", Invoice.PAID)])
def test_staff_act_from_the_admin_site(open_invoice, acme, client, word, status):
    from django.contrib.auth import get_user_model

    from tenants.models import AuditEntry

    admin_user = get_user_model().objects.create_superuser(email="root@vajra.test", password="x" * 12)
    client.force_login(admin_user)
    changelist = reverse("admin:billing_invoice_changelist")
    assert open_invoice.number in client.get(changelist).content.decode()
    response = client.post(changelist, {"action": word, "_selected_action": [open_invoice.id]})
    assert response.status_code == 302
    assert invoice_of(acme).status == status
    assert AuditEntry.objects.filter(target_id=open_invoice.id, actor_user=admin_user).exists()
    # a second try is refused by the state machine (409 message), nothing changes
    client.post(changelist, {"action": word, "_selected_action": [open_invoice.id]})
    assert invoice_of(acme).status == status


# ---- pages, PDF, access ----------------------------------------------------------------------------------------

def test_the_invoice_page_and_its_pdf(open_invoice, alice_client):
    page = alice_client.get(reverse("invoice", args=[open_invoice.id]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Invoice VAJ-202610-0001" in html and "Inference, warm tier, base model: 1 requests" in html
    assert "USD 12.35" in html and "12.3456" in html  # the total, and the exact ledger sum it rounds
    assert "Local-only mode" in html
    from django.template.loader import render_to_string

    from billing.document import document_context

    document = render_to_string("billing/invoice_document.html", document_context(open_invoice))  # the PDF's HTML
    for text in (html, document):
        assert "{#" not in text and "#}" not in text and "{%" not in text and "comment" not in text
    pdf = alice_client.get(reverse("invoice-pdf", args=[open_invoice.id]))
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    assert pdf["Content-Disposition"] == 'attachment; filename="VAJ-202610-0001.pdf"'


def test_the_billing_page_lists_invoices_with_links_and_the_local_only_notice(open_invoice, alice_client):
    html = alice_client.get(reverse("billing")).content.decode()
    assert "VAJ-202610-0001" in html and "October 2026" in html and "USD 12.35" in html
    assert reverse("invoice", args=[open_invoice.id]) in html and reverse("invoice-pdf", args=[open_invoice.id]) in html
    assert "data-local-only" in html and "data-pay-link" not in html
    assert "Manage payment methods" not in html


def test_another_tenants_invoice_is_404(open_invoice, charlie_client, unchanged_db):
    with unchanged_db():
        for url in (reverse("invoice", args=[open_invoice.id]), reverse("invoice-pdf", args=[open_invoice.id])):
            assert charlie_client.get(url).status_code == 404
        assert charlie_client.post(reverse("invoice-action", args=[open_invoice.id, "void"])).status_code == 404
    assert "VAJ-202610-0001" not in charlie_client.get(reverse("billing")).content.decode()


def test_drafts_are_not_shown(acme, plan, alice_client):
    draft = invoice_draft(tenant_id=acme.id, period=PERIOD)
    assert alice_client.get(reverse("invoice", args=[draft.id])).status_code == 404


def test_a_billing_viewer_sees_invoices(open_invoice, dana_client, unchanged_db):
    assert dana_client.get(reverse("invoice", args=[open_invoice.id])).status_code == 200
    assert dana_client.get(reverse("invoice-pdf", args=[open_invoice.id])).content.startswith(b"%PDF")
    page = dana_client.get(reverse("invoice", args=[open_invoice.id])).content.decode()
    assert "/void" not in page and "mark-" not in page
    assert "VAJ-202610-0001" in dana_client.get(reverse("billing")).content.decode()
    with unchanged_db():
        for action in ("void", "mark-uncollectible", "mark-paid"):
            assert dana_client.post(reverse("invoice-action", args=[open_invoice.id, action])).status_code == 403


def test_a_developer_sees_no_invoices(open_invoice, bob_client):
    assert bob_client.get(reverse("invoice", args=[open_invoice.id])).status_code == 403
    html = bob_client.get(reverse("billing")).content.decode()
    assert "VAJ-202610-0001" not in html and "your role sees usage only" in html


def test_actions_need_post_and_a_known_action(open_invoice, alice_client):
    assert alice_client.get(reverse("invoice-action", args=[open_invoice.id, "void"])).status_code == 405
    assert alice_client.post(reverse("invoice-action", args=[open_invoice.id, "delete"])).status_code == 404


def test_actions_need_the_csrf_token(open_invoice, alice):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post(reverse("invoice-action", args=[open_invoice.id, "void"])).status_code == 403
    assert invoice_of(open_invoice.tenant).status == Invoice.OPEN
