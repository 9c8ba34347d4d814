"""Monthly invoices from the usage ledger: draft -> open (finalized: numbered, immutable) -> paid | void |
uncollectible.

An invoice takes the tenant's open ledger rows (no invoice has taken them: ``InvoicedUsage``) dated in its month or
before, so usage whose final or adjustment lands in a month already invoiced goes on the next invoice finalized,
with lines of its own for that month, and "sum of finalized invoices + open ledger = sum of the ledger" holds.
Lines: inference per tier and adapter, training per job, SLO credits per tier (negative), each adjustment on its
own. A line keeps its exact ledger sum (``amount_exact``) and shows whole cents (``amount``), allocated by largest
remainder: every line is its exact sum floored to the cent, and the cents still missing to reach the ledger total
rounded half-up go to the lines with the largest remainders. So the lines add up to the invoice total, the total is
the ledger sum to the cent, and no line is off its exact sum by a cent or more.

A finalized invoice is immutable: ``_guard_invoice`` and ``_guard_line`` (connected in ``BillingConfig.ready``)
refuse any save or delete that would change it, whoever calls it; only its status moves, along ``TRANSITIONS``.
"""

import logging
import secrets
import time
from datetime import UTC, date, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Exists, OuterRef, Sum
from django.db.models.signals import pre_delete, pre_save
from django.utils import timezone

from tenants.audit import audit_record
from vajra.errors import Conflict

from .models import Invoice, InvoicedUsage, InvoiceLine, UsageEvent
from .plans import period_of
from .selectors import money_sum, money_value

log = logging.getLogger(__name__)

CENT = Decimal("0.01")
TIER_ORDER = ("cold", "warm", "hot")
NUMBER_PREFIX = "VAJ"
# Where a status may go from here. As on Stripe, an uncollectible invoice can still be paid (late) or voided.
TRANSITIONS = {
    Invoice.DRAFT: (Invoice.OPEN,),
    Invoice.OPEN: (Invoice.PAID, Invoice.VOID, Invoice.UNCOLLECTIBLE),
    Invoice.UNCOLLECTIBLE: (Invoice.PAID, Invoice.VOID),
}
VERBS = {Invoice.OPEN: "finalized", Invoice.PAID: "marked paid", Invoice.VOID: "voided",
         Invoice.UNCOLLECTIBLE: "marked uncollectible"}
# What a finalized invoice may still change: its status (and when), and its Stripe counterpart once created.
MUTABLE_AFTER_OPEN = {"status", "paid_at", "voided_at", "stripe_invoice_id", "hosted_invoice_url"}


class InvoiceFinalized(TypeError):
    """A write that would change a finalized invoice or its lines."""


def previous_period(now=None):
    """The first day of the month before ``now``'s (UTC)."""
    current = period_of(now or timezone.now())
    return date(current.year - (current.month == 1), (current.month - 2) % 12 + 1, 1)


def issuer():
    """Who issues invoices (VAJRA_INVOICE_ISSUER_*), as each invoice keeps it."""
    return {"name": settings.VAJRA_INVOICE_ISSUER_NAME, "address": list(settings.VAJRA_INVOICE_ISSUER_ADDRESS),
            "email": settings.VAJRA_INVOICE_ISSUER_EMAIL, "tax_id": settings.VAJRA_INVOICE_ISSUER_TAX_ID}


def due_on(issued_at, terms_days):
    """The day an invoice issued at ``issued_at`` is due (UTC): ``terms_days`` later."""
    return (issued_at.astimezone(UTC) + timedelta(days=terms_days)).date()


def payment_terms(terms_days):
    if terms_days is None:
        return ""
    return "Due on receipt" if terms_days == 0 else f"Net {terms_days}: due {terms_days} days after the invoice date"


def new_invoice_id():
    return f"inv_{secrets.token_hex(12)}"


def label(invoice):
    return invoice.number or invoice.id


# ---- lines from the ledger -------------------------------------------------------------------------------------

def _tier_key(tier):
    return (TIER_ORDER.index(tier) if tier in TIER_ORDER else len(TIER_ORDER), tier or "")


def _inference_lines(rows):
    grouped = (rows.filter(kind=UsageEvent.INFERENCE).values("tier", "adapter_id", "adapter__name")
               .annotate(requests=Count("id"), billed_gpu_ms=Sum("billed_gpu_ms"), cost=money_sum()))
    for row in sorted(grouped, key=lambda r: (_tier_key(r["tier"]), r["adapter__name"] or "", r["adapter_id"] or 0)):
        adapter = row["adapter__name"] or "base model"
        tier = row["tier"] or "untiered"
        yield InvoiceLine(
            kind=UsageEvent.INFERENCE, tier=row["tier"], adapter_id=row["adapter_id"], quantity=row["requests"],
            unit="requests", amount_exact=money_value(row["cost"]),
            description=f"Inference, {tier} tier, {adapter}: {row['requests']:,} requests, "
                        f"{row['billed_gpu_ms'] or 0:,} GPU-ms")


def _training_lines(rows):
    grouped = (rows.filter(kind=UsageEvent.TRAINING)
               .values("job_id", "job__adapter_id", "job__adapter__name", "adapter_id", "adapter__name")
               .annotate(steps=Count("id"), gradients=Sum("gradients"), cost=money_sum())
               .order_by("job_id", "adapter_id"))
    for row in grouped:
        adapter_id = row["job__adapter_id"] or row["adapter_id"]
        adapter = row["job__adapter__name"] or row["adapter__name"] or "no adapter"
        job = f"job {row['job_id']}" if row["job_id"] else "no job"
        yield InvoiceLine(
            kind=UsageEvent.TRAINING, adapter_id=adapter_id, quantity=row["gradients"] or 0, unit="gradients",
            amount_exact=money_value(row["cost"]),
            description=f"Training, {adapter} ({job}): {row['steps']:,} steps, {row['gradients'] or 0:,} gradients")


def _credit_lines(rows):
    grouped = (rows.filter(kind=UsageEvent.SLO_CREDIT).values("tier")
               .annotate(requests=Count("id"), cost=money_sum()))
    for row in sorted(grouped, key=lambda r: _tier_key(r["tier"])):
        tier = row["tier"] or "untiered"
        yield InvoiceLine(
            kind=UsageEvent.SLO_CREDIT, tier=row["tier"], quantity=row["requests"], unit="requests",
            amount_exact=money_value(row["cost"]),
            description=f"SLO credit, {tier} tier: {row['requests']:,} requests missed the tier's guarantee")


def _adjustment_lines(rows):
    grouped = (rows.filter(kind=UsageEvent.ADJUSTMENT).values("id", "key", "description")
               .annotate(cost=money_sum()).order_by("id"))
    for row in grouped:
        yield InvoiceLine(kind=UsageEvent.ADJUSTMENT, quantity=1, amount_exact=money_value(row["cost"]),
                          description=f"Adjustment: {row['description'] or row['key']}"[:300])


def allocate_cents(exact_amounts, total):
    """Whole-cent amounts for ``exact_amounts`` that add up to ``total`` (largest remainder; ties to the first)."""
    floors = [amount.quantize(CENT, rounding=ROUND_FLOOR) for amount in exact_amounts]
    missing = int((total - sum(floors, Decimal(0))) / CENT)
    if not 0 <= missing <= len(floors):
        raise ValueError(f"cannot allocate {total} over {exact_amounts}")
    order = sorted(range(len(floors)), key=lambda i: (floors[i] - exact_amounts[i], i))
    for i in order[:missing]:
        floors[i] += CENT
    return floors


def open_ledger(*, tenant_id=None, through):
    """Ledger rows no invoice has taken yet, dated in ``through``'s month or before (of one tenant, or all)."""
    rows = UsageEvent.objects.filter(period__lte=through, invoiced__isnull=True)
    return rows.filter(tenant_id=tenant_id) if tenant_id is not None else rows


def _period_lines(rows, period, late):
    lines = [*_inference_lines(rows), *_training_lines(rows), *_credit_lines(rows), *_adjustment_lines(rows)]
    if late:  # usage of an earlier month recorded after that month closed: its own lines, saying which month
        for line in lines:
            line.usage_period = period
            line.description = f"{period:%B %Y}, recorded after that month closed: {line.description}"[:300]
    return lines


def ledger_lines(*, rows, period, tenant_id):
    """(unsaved lines, exact ledger sum, currency) of the ledger ``rows`` on an invoice for ``period``: that month's
    lines, then each earlier month's. Aggregated in the database."""
    periods = sorted(set(rows.order_by().values_list("period", flat=True)), key=lambda p: (p != period, p))
    lines = [line for month in periods
             for line in _period_lines(rows.filter(period=month), month, late=month != period)]
    ledger_sum = money_value(rows.aggregate(cost=money_sum())["cost"])
    if sum((line.amount_exact for line in lines), Decimal(0)) != ledger_sum:
        raise ValueError(f"tenant {tenant_id} {period:%Y-%m}: invoice lines do not add up to the ledger "
                         f"({ledger_sum}); a usage kind has no line")
    currencies = set(rows.order_by().values_list("plan__currency", flat=True).distinct())
    if len(currencies) > 1:
        raise ValueError(f"tenant {tenant_id} {period:%Y-%m}: usage priced in several currencies {currencies}")
    total = ledger_sum.quantize(CENT, rounding=ROUND_HALF_UP)
    for position, (line, amount) in enumerate(zip(lines, allocate_cents([li.amount_exact for li in lines], total),
                                                  strict=True)):
        line.amount, line.position = amount, position
    return lines, ledger_sum, (currencies.pop() if currencies else "usd")


def totals(lines):
    """(subtotal, credits, total) of an invoice's lines: SLO credits apart, adjustments in the subtotal."""
    subtotal = sum((li.amount for li in lines if li.kind != UsageEvent.SLO_CREDIT), Decimal("0.00"))
    credits = sum((li.amount for li in lines if li.kind == UsageEvent.SLO_CREDIT), Decimal("0.00"))
    return subtotal, credits, subtotal + credits


def invoice_take(*, invoice):
    """Marks the tenant's open ledger rows dated in the invoice's month or before as taken by ``invoice``, in one
    INSERT ... SELECT (the ledger rows themselves are never updated); how many. A row another invoice took first
    hits InvoicedUsage's primary key: the finalization rolls back and is retried."""
    open_rows = open_ledger(tenant_id=invoice.tenant_id, through=invoice.period).values_list("id", flat=True)
    sql, params = open_rows.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {InvoicedUsage._meta.db_table} (usage_event_id, invoice_id) "
                       f"SELECT taken.id, %s FROM ({sql}) taken", [invoice.id, *params])
        return cursor.rowcount


# ---- services --------------------------------------------------------------------------------------------------

def invoice_draft(*, tenant_id, period):
    """The tenant's invoice for the month, created as a draft if it has none."""
    return Invoice.objects.get_or_create(tenant_id=tenant_id, period=period, defaults={"id": new_invoice_id()})[0]


def _next_number(period):
    prefix = f"{NUMBER_PREFIX}-{period:%Y%m}-"
    # Numbered invoices are never deleted (the guard below), so the count is the last sequence number.
    return f"{prefix}{Invoice.objects.filter(number__startswith=prefix).count() + 1:04d}"


def invoice_finalize(*, invoice_id):
    """Draft -> open: lines and totals from the ledger, a number, then immutable. Returns (invoice, finalized now);
    an invoice already finalized is returned as it is, so a retried task does nothing twice."""
    for attempt in range(5):
        try:
            invoice, finalized = _finalize(invoice_id)
        except IntegrityError:  # another worker took the same number meanwhile: number again
            if attempt == 4:
                raise
            continue
        if finalized:
            from .stripe_sync import send_stripe_sync

            send_stripe_sync(invoice_id=invoice.id)
        return invoice, finalized


@transaction.atomic
def _finalize(invoice_id):
    invoice = Invoice.objects.select_for_update().get(id=invoice_id)
    if invoice.status != Invoice.DRAFT:
        return invoice, False
    invoice_take(invoice=invoice)
    lines, _, currency = ledger_lines(rows=UsageEvent.objects.filter(invoiced__invoice=invoice),
                                      period=invoice.period, tenant_id=invoice.tenant_id)
    invoice.lines.all().delete()
    for line in lines:
        line.invoice = invoice
    InvoiceLine.objects.bulk_create(lines)
    invoice.subtotal, invoice.credits, invoice.total = totals(lines)
    invoice.currency = currency
    invoice.number = _next_number(invoice.period)
    invoice.status = Invoice.OPEN
    invoice.finalized_at = timezone.now()
    invoice.issuer = issuer()
    invoice.payment_terms_days = settings.VAJRA_INVOICE_PAYMENT_TERMS_DAYS
    invoice.due_on = due_on(invoice.finalized_at, invoice.payment_terms_days)
    invoice.save()
    audit_record(tenant=invoice.tenant_id, action="invoice.finalized", target_type="invoice", target_id=invoice.id,
                 details={"number": invoice.number, "total": str(invoice.total), "currency": invoice.currency})
    return invoice, True


def check_transition(invoice, to):
    """409 unless ``invoice`` may move to ``to`` now, with what it may do instead."""
    allowed = TRANSITIONS.get(invoice.status, ())
    if to in allowed and to != Invoice.OPEN:
        return
    if not allowed:
        why = f"a {invoice.status} invoice is final"
    elif invoice.status == Invoice.DRAFT:
        why = "a draft is only finalized by the period close"
    else:
        *others, last = [VERBS[s] for s in allowed]
        why = f"from {invoice.status} it can only be {', '.join(others) + ' or ' if others else ''}{last}"
    raise Conflict(f"Invoice {label(invoice)} is {invoice.status}; it cannot be {VERBS.get(to, to)}: {why}.",
                   code="invoice_state")


AUDIT_ACTIONS = {Invoice.PAID: "invoice.paid", Invoice.VOID: "invoice.voided",
                 Invoice.UNCOLLECTIBLE: "invoice.marked_uncollectible"}


@transaction.atomic
def invoice_transition(*, invoice_id, to, at=None, already_ok=False, principal=None, stripe_event_id=None):
    """Moves an open (or uncollectible) invoice to paid, void or uncollectible; anything else is a 409. With
    ``already_ok`` (Stripe's webhooks, which may repeat what we did) an invoice already there is left alone.
    ``principal`` is the member who acted, or none with the ``stripe_event_id`` that did. Returns (invoice,
    changed)."""
    invoice = Invoice.objects.select_for_update().get(id=invoice_id)
    if already_ok and invoice.status == to:
        return invoice, False
    check_transition(invoice, to)
    at = at or timezone.now()
    audit_record(tenant=invoice.tenant_id, principal=principal, action=AUDIT_ACTIONS[to], target_type="invoice",
                 target_id=invoice.id, details={"number": invoice.number, "old": invoice.status, "new": to,
                                                **({"stripe_event": stripe_event_id} if stripe_event_id else {})})
    invoice.status = to
    if to == Invoice.PAID:
        invoice.paid_at = at
    elif to == Invoice.VOID:
        invoice.voided_at = at
    invoice.save(update_fields=["status", "paid_at", "voided_at"])
    return invoice, True


def invoices_close_period(*, period=None, limit, seconds, now=None):
    """Finalizes invoices for ``period`` (default: the month before now's) for tenants with open ledger rows dated
    in it or before (usage recorded after an earlier month's invoice included) and no finalized invoice for it: at
    most ``limit`` of them, starting no new one after ``seconds``. Running it again does nothing new. Returns
    (invoice ids finalized, whether more may be waiting)."""
    now = now or timezone.now()
    period = period or previous_period(now)
    if period >= period_of(now):
        raise ValueError(f"{period:%Y-%m} is not over yet; only past months are invoiced.")
    finalized = Invoice.objects.filter(tenant_id=OuterRef("tenant_id"), period=period).exclude(status=Invoice.DRAFT)
    tenant_ids = list(open_ledger(through=period).exclude(Exists(finalized))
                      .values_list("tenant_id", flat=True).distinct().order_by("tenant_id")[:limit])
    started, closed = time.monotonic(), []
    for done, tenant_id in enumerate(tenant_ids, start=1):
        try:
            invoice, changed = invoice_finalize(invoice_id=invoice_draft(tenant_id=tenant_id, period=period).id)
        except Exception:  # one tenant's bad data must not hold up the others' invoices; retried next run
            log.exception("invoice for tenant %s %s: finalization failed", tenant_id, f"{period:%Y-%m}")
            continue
        if changed:
            closed.append(invoice.id)
            log.info("invoice %s finalized for tenant %s: %s %s", invoice.number, tenant_id, invoice.total,
                     invoice.currency)
        if done < len(tenant_ids) and time.monotonic() - started > seconds:
            return closed, bool(closed)
    return closed, len(tenant_ids) == limit and bool(closed)


# ---- immutability --------------------------------------------------------------------------------------------

def _guard_invoice(sender, instance, raw=False, update_fields=None, **kwargs):
    if raw or instance.pk is None:
        return
    stored = Invoice.objects.filter(pk=instance.pk).first()
    if stored is None or stored.status == Invoice.DRAFT:
        return
    fields = [f.attname for f in Invoice._meta.concrete_fields]
    if update_fields is not None:
        fields = [name for name in fields if name in update_fields or name.removesuffix("_id") in update_fields]
    changed = [name for name in fields if name not in MUTABLE_AFTER_OPEN
               and getattr(instance, name) != getattr(stored, name)]
    if changed:
        raise InvoiceFinalized(f"Invoice {label(stored)} is {stored.status}: {', '.join(changed)} cannot change "
                               "once it is finalized.")
    if instance.status != stored.status and instance.status not in TRANSITIONS.get(stored.status, ()):
        raise InvoiceFinalized(f"Invoice {label(stored)} cannot go from {stored.status} to {instance.status}.")


def _guard_invoice_delete(sender, instance, **kwargs):
    status = Invoice.objects.filter(pk=instance.pk).values_list("status", flat=True).first()
    if status not in (None, Invoice.DRAFT):
        raise InvoiceFinalized(f"Invoice {label(instance)} is {status}: a finalized invoice is never deleted.")


def _guard_line(sender, instance, raw=False, **kwargs):
    if raw:
        return
    invoice_ids = {instance.invoice_id}
    if instance.pk is not None:
        invoice_ids |= set(InvoiceLine.objects.filter(pk=instance.pk).values_list("invoice_id", flat=True))
    frozen = Invoice.objects.filter(pk__in=invoice_ids).exclude(status=Invoice.DRAFT).first()
    if frozen is not None:
        raise InvoiceFinalized(f"Invoice {label(frozen)} is {frozen.status}: its lines cannot change.")


def connect_guards():
    pre_save.connect(_guard_invoice, sender=Invoice, dispatch_uid="billing.invoice_guard")
    pre_delete.connect(_guard_invoice_delete, sender=Invoice, dispatch_uid="billing.invoice_delete_guard")
    pre_save.connect(_guard_line, sender=InvoiceLine, dispatch_uid="billing.invoice_line_guard")
    pre_delete.connect(_guard_line, sender=InvoiceLine, dispatch_uid="billing.invoice_line_delete_guard")
