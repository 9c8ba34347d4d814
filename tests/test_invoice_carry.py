"""Nothing is lost after a close: usage whose final is recorded after its month was invoiced, and adjustments dated
into an invoiced month, go on the tenant's next invoice as lines for that month; every ledger row is taken by one
invoice at most, marked in InvoicedUsage (the ledger rows themselves are never updated)."""

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from billing.invoices import invoice_take, invoices_close_period
from billing.ledger import record_adjustment
from billing.models import Invoice, InvoicedUsage, InvoiceLine, UsageEvent
from billing.selectors import money_sum, money_value
from tests.billing_helpers import PERIOD, close, final_event, invoice_of, submitted, usage
from tests.factories import record_node_final

pytestmark = pytest.mark.usefixtures("local_only")

NOVEMBER = date(2026, 11, 1)
IN_DECEMBER = datetime(2026, 12, 2, 7, 0, tzinfo=UTC)


def exact(rows):
    return money_value(rows.aggregate(cost=money_sum())["cost"])


def assert_nothing_lost():
    """sum of finalized invoices + open ledger = sum of the ledger, and each invoice is the rows it took."""
    finalized = Invoice.objects.exclude(status=Invoice.DRAFT)
    invoiced = sum((line.amount_exact for line in InvoiceLine.objects.filter(invoice__in=finalized)), Decimal(0))
    open_rows = exact(UsageEvent.objects.filter(invoiced__isnull=True))
    assert invoiced + open_rows == exact(UsageEvent.objects.all())
    for invoice in finalized:
        lines = sum((line.amount_exact for line in invoice.lines.all()), Decimal(0))
        assert lines == exact(UsageEvent.objects.filter(invoiced__invoice=invoice))


def test_a_late_final_and_a_backdated_adjustment_go_on_the_next_invoice(acme, plan):
    usage(acme, "2.0000000000", tier="cold")
    close()
    october = invoice_of(acme)
    assert october.total == Decimal("2.00")
    assert_nothing_lost()

    # after October closed: a request of October's whose final arrives only now, and an adjustment dated into it
    row = submitted(acme, created_at=datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC))
    record_node_final(row.id, final_event(gpu_ms=23.4, total_ms=120.0))
    late = UsageEvent.objects.get(key=f"inference:{row.id}")
    adjustment = record_adjustment(tenant=acme, amount="-0.75", description="credit for the October outage",
                                   at=datetime(2026, 10, 20, tzinfo=UTC))
    assert late.period == adjustment.period == PERIOD
    usage(acme, "3.0000000000", tier="warm", period=NOVEMBER)
    assert set(UsageEvent.objects.filter(invoiced__isnull=True)) == {late, adjustment,
                                                                     UsageEvent.objects.get(period=NOVEMBER)}
    assert_nothing_lost()
    assert close() == ([], False)  # October stays as it was finalized: the late rows wait for November's
    assert invoice_of(acme).total == Decimal("2.00") and october.lines.count() == 1

    (november_id,), _ = invoices_close_period(period=NOVEMBER, limit=10, seconds=60, now=IN_DECEMBER)
    november = Invoice.objects.get(pk=november_id)
    lines = list(november.lines.order_by("position"))
    assert [(line.usage_period, line.kind) for line in lines] == [
        (None, "inference"), (PERIOD, "inference"), (PERIOD, "adjustment")]
    assert lines[1].description.startswith("October 2026, recorded after that month closed: Inference, cold tier")
    assert lines[1].amount_exact == late.cost and lines[2].amount_exact == Decimal("-0.75")
    assert november.total == (Decimal("3") + late.cost - Decimal("0.75")).quantize(Decimal("0.01"))
    assert not UsageEvent.objects.filter(invoiced__isnull=True).exists()
    assert_nothing_lost()
    # once taken, never again: closing both months again finds nothing
    assert close() == ([], False)
    assert invoices_close_period(period=NOVEMBER, limit=10, seconds=60, now=IN_DECEMBER) == ([], False)


def test_late_usage_of_a_tenant_with_no_usage_in_the_next_month_still_gets_invoiced(acme, contoso, plan):
    usage(acme, "1.0000000000", tier="cold")
    close()
    record_adjustment(tenant=acme, amount="4.10", description="setup fee", at=datetime(2026, 10, 2, tzinfo=UTC))
    (november_id,), _ = invoices_close_period(period=NOVEMBER, limit=10, seconds=60, now=IN_DECEMBER)
    november = Invoice.objects.get(pk=november_id)
    assert (november.tenant, november.total) == (acme, Decimal("4.10"))
    assert_nothing_lost()


def test_a_row_is_taken_by_one_invoice_once(acme, plan):
    usage(acme, "1.0000000000", tier="cold")
    close()
    october = invoice_of(acme)
    assert invoice_take(invoice=october) == 0  # nothing open is left to take
    row = UsageEvent.objects.get()
    with pytest.raises(IntegrityError), transaction.atomic():  # a second invoice cannot take it too
        InvoicedUsage.objects.create(usage_event=row, invoice=Invoice.objects.create(
            id="inv_other", tenant=acme, period=NOVEMBER))
    assert InvoicedUsage.objects.get(usage_event=row).invoice == october


@pytest.mark.django_db(transaction=True)
def test_invoices_finalized_before_rows_were_marked_keep_their_rows():
    """The migration that adds InvoicedUsage marks each finalized invoice's rows (its month's, recorded before it
    was finalized), so the first close after it does not invoice them again; a row recorded later stays open."""
    import time

    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor
    from django.utils import timezone

    before, after = [("billing", "0005_plan_storage_quota")], [("billing", "0006_invoiced_usage_and_document")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    tenant = old.get_model("tenants", "Tenant").objects.create(name="Acme", slug="acme")
    plan = old.get_model("billing", "PricePlan").objects.get_or_create(
        name="standard", version=1, defaults={"effective_from": datetime(2020, 1, 1, tzinfo=UTC)})[0]
    ledger = old.get_model("billing", "UsageEvent").objects
    fields = {"tenant": tenant, "plan": plan, "period": PERIOD, "occurred_at": datetime(2026, 10, 5, tzinfo=UTC)}
    taken = ledger.create(key="inference:old", kind="inference", cost=Decimal("1"), **fields)
    time.sleep(0.01)
    old.get_model("billing", "Invoice").objects.create(id="inv_old", tenant=tenant, period=PERIOD, status="open",
                                                       number="VAJ-202610-0001", total=Decimal("1.00"),
                                                       finalized_at=timezone.now())
    time.sleep(0.01)
    late = ledger.create(key="adjustment:late", kind="adjustment", cost=Decimal("2"), **fields)
    MigrationExecutor(connection).migrate(after)
    assert list(InvoicedUsage.objects.values_list("usage_event_id", "invoice_id")) == [(taken.pk, "inv_old")]
    assert list(UsageEvent.objects.filter(invoiced__isnull=True).values_list("pk", flat=True)) == [late.pk]
