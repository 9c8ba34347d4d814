"""Price plans, the append-only usage ledger, invoices and Stripe bookkeeping.

Money is ``Decimal`` everywhere (never float). Ledger costs keep 10 decimal places (a 10 ms inference slice
costs $0.0000016667 at the paper's prices); invoice amounts are cents. A ledger row is never updated or
deleted: corrections are new rows (kind ``adjustment``), and every row carries the natural key that makes a
billable event count once (request id; job id + step; credit id), refused twice by a unique constraint.
"""

from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

MONEY = {"max_digits": 24, "decimal_places": 10}
CENTS = {"max_digits": 18, "decimal_places": 2}
ZERO = Decimal("0")


def default_max_adapters():
    return settings.VAJRA_MAX_ADAPTERS_PER_TENANT


def default_max_concurrent_requests():
    return settings.VAJRA_MAX_CONCURRENT_REQUESTS


def default_max_tokens():
    return settings.VAJRA_MAX_TOKENS_CAP


def default_dataset_max_bytes():
    return settings.VAJRA_DATASET_MAX_BYTES


def default_dataset_max_records():
    return settings.VAJRA_DATASET_MAX_RECORDS


def default_storage_max_bytes():
    return settings.VAJRA_STORAGE_MAX_BYTES


class PricePlan(models.Model):
    """One version of a plan's prices, effective from a date. Defaults are the papers' numbers: tiers 1 / 5 /
    20 units per query, P_GPU = $2.00/h, M_tenancy = 0.3, BILLING_GRANULARITY_MS = 10; C_gradient =
    $0.00000005 per million gradients, a gradient being one trainable element on one trained token
    (gpu_runtime.training_spec), so a million tokens on SmolLM2-135M with LoRA r=8 on q, v (460,800 trainable)
    cost $0.046. A version is never edited once a ledger row points at it: a price change is
    a new version with a later ``effective_from``."""

    name = models.SlugField(max_length=40, default="standard")
    version = models.PositiveIntegerField(default=1)
    effective_from = models.DateTimeField()
    currency = models.CharField(max_length=3, default="usd")
    unit_price = models.DecimalField(**MONEY, default=Decimal("0.0001"), validators=[MinValueValidator(ZERO)])
    units_cold = models.PositiveIntegerField(default=1)
    units_warm = models.PositiveIntegerField(default=5)
    units_hot = models.PositiveIntegerField(default=20)
    gpu_price_per_hour = models.DecimalField(**MONEY, default=Decimal("2.00"), validators=[MinValueValidator(ZERO)])
    tenancy_factor = models.DecimalField(**MONEY, default=Decimal("0.3"), validators=[MinValueValidator(ZERO)])
    gradient_price_per_million = models.DecimalField(**MONEY, default=Decimal("0.00000005"),
                                                     validators=[MinValueValidator(ZERO)])
    billing_granularity_ms = models.PositiveIntegerField(default=10, validators=[MinValueValidator(1)])
    monthly_spend_cap = models.DecimalField(**CENTS, null=True, blank=True, validators=[MinValueValidator(ZERO)])
    # Quotas (billing.plans.plan_limits reads them). The VAJRA_* settings are only the defaults of a new plan:
    # a plan already in the database keeps its own numbers.
    max_adapters = models.PositiveIntegerField(default=default_max_adapters, validators=[MinValueValidator(1)])
    max_concurrent_requests = models.PositiveIntegerField(default=default_max_concurrent_requests,
                                                          validators=[MinValueValidator(1)])
    max_tokens = models.PositiveIntegerField(default=default_max_tokens, validators=[MinValueValidator(1)])
    dataset_max_bytes = models.PositiveBigIntegerField(default=default_dataset_max_bytes,
                                                       validators=[MinValueValidator(1)])
    dataset_max_records = models.PositiveIntegerField(default=default_dataset_max_records,
                                                      validators=[MinValueValidator(1)])
    # Bytes of adapter weights and datasets a tenant may keep in storage (adapters.storage_quota counts them).
    storage_max_bytes = models.PositiveBigIntegerField(default=default_storage_max_bytes,
                                                       validators=[MinValueValidator(1)])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="price_plan_version_unique"),
            models.CheckConstraint(
                condition=models.Q(unit_price__gte=0, gpu_price_per_hour__gte=0, tenancy_factor__gte=0,
                                   gradient_price_per_million__gte=0),
                name="price_plan_prices_not_negative"),
        ]

    def __str__(self):
        return f"{self.name} v{self.version}"

    def clean(self):
        for field in ("unit_price", "gpu_price_per_hour", "tenancy_factor", "gradient_price_per_million"):
            value = getattr(self, field)
            if value is not None and value < 0:
                raise ValidationError({field: "Prices cannot be negative."})

    def units_for(self, tier):
        return {"cold": self.units_cold, "warm": self.units_warm, "hot": self.units_hot}[tier]


class BillingAccount(models.Model):
    """A tenant's billing side: its plan, Stripe customer, spend cap and payment standing."""

    ACTIVE, PAST_DUE, SUSPENDED = "active", "past_due", "suspended"

    tenant = models.OneToOneField("tenants.Tenant", on_delete=models.PROTECT, related_name="billing")
    plan_name = models.SlugField(max_length=40, default="standard")
    spend_cap = models.DecimalField(**CENTS, null=True, blank=True, validators=[MinValueValidator(ZERO)])
    stripe_customer_id = models.CharField(max_length=100, blank=True)
    standing = models.CharField(max_length=10, default=ACTIVE, choices=[(ACTIVE, "Active"), (PAST_DUE, "Past due"),
                                                                         (SUSPENDED, "Suspended")])
    past_due_since = models.DateTimeField(null=True, blank=True)
    cap_warning_period = models.DateField(null=True, blank=True)  # the month the 80 % warning was sent for
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"billing for {self.tenant_id}"


class LedgerQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise TypeError("The usage ledger is append-only: record a correction as a new 'adjustment' row.")

    def delete(self):
        raise TypeError("The usage ledger is append-only: rows are never deleted.")


class UsageEvent(models.Model):
    """One billable fact. ``key`` is its natural idempotency key: ``inference:<request id>``,
    ``training:<job id>:<step>``, ``credit:<request id>``, ``adjustment:<id>``."""

    INFERENCE, TRAINING, SLO_CREDIT, ADJUSTMENT = "inference", "training", "slo_credit", "adjustment"
    KIND_CHOICES = [(INFERENCE, "Inference"), (TRAINING, "Training"), (SLO_CREDIT, "SLO credit"),
                    (ADJUSTMENT, "Adjustment")]

    key = models.CharField(max_length=120, unique=True)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="usage_events")
    kind = models.CharField(max_length=12, choices=KIND_CHOICES)
    plan = models.ForeignKey(PricePlan, on_delete=models.PROTECT, related_name="+")
    occurred_at = models.DateTimeField(db_index=True)  # when it happened on the node (metering lag = created - this)
    period = models.DateField(db_index=True)  # first day of the billing month it belongs to
    tier = models.CharField(max_length=8, blank=True)
    adapter = models.ForeignKey("adapters.Adapter", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    adapter_version = models.ForeignKey("adapters.AdapterVersion", on_delete=models.PROTECT, null=True, blank=True,
                                        related_name="+")
    request = models.ForeignKey("serving.InferenceRequest", on_delete=models.PROTECT, null=True, blank=True,
                                related_name="+")
    job = models.ForeignKey("training.TrainingJob", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    step = models.PositiveIntegerField(null=True, blank=True)
    units = models.IntegerField(default=0)
    gpu_ms = models.FloatField(default=0)  # as measured
    billed_gpu_ms = models.BigIntegerField(default=0)  # rounded up to the plan's granularity
    gradients = models.BigIntegerField(default=0)
    prompt_tokens = models.IntegerField(default=0)
    completion_tokens = models.IntegerField(default=0)
    cost_units = models.DecimalField(**MONEY, default=ZERO)  # tier units x unit price (negative for a credit)
    cost_compute = models.DecimalField(**MONEY, default=ZERO)  # GPU-ms or gradients part
    cost = models.DecimalField(**MONEY)  # the total of this row
    description = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = LedgerQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["tenant", "period", "kind"]), models.Index(fields=["tenant", "occurred_at"])]

    def __str__(self):
        return self.key

    def save(self, *args, **kwargs):
        if self.pk is not None or kwargs.get("force_update"):
            raise TypeError("The usage ledger is append-only: record a correction as a new 'adjustment' row.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("The usage ledger is append-only: rows are never deleted.")


class Invoice(models.Model):
    """A tenant's monthly invoice: draft -> open (finalized: numbered, immutable) -> paid | void |
    uncollectible. Lines and totals are computed from the ledger when it is finalized."""

    DRAFT, OPEN, PAID, VOID, UNCOLLECTIBLE = "draft", "open", "paid", "void", "uncollectible"
    STATUS_CHOICES = [(s, s.capitalize()) for s in (DRAFT, OPEN, PAID, VOID, UNCOLLECTIBLE)]

    id = models.CharField(max_length=40, primary_key=True)  # inv_<hex>: the Stripe idempotency keys derive from it
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="invoices")
    period = models.DateField()  # first day of the month invoiced
    number = models.CharField(max_length=40, unique=True, null=True, blank=True)  # set when finalized
    status = models.CharField(max_length=14, choices=STATUS_CHOICES, default=DRAFT)
    currency = models.CharField(max_length=3, default="usd")
    subtotal = models.DecimalField(**CENTS, default=ZERO)
    credits = models.DecimalField(**CENTS, default=ZERO)
    total = models.DecimalField(**CENTS, default=ZERO)
    # The document: who issued it and when it is due, fixed when it is finalized (VAJRA_INVOICE_* settings then).
    issuer = models.JSONField(default=dict, blank=True)  # name, address (lines), email, tax_id
    payment_terms_days = models.PositiveIntegerField(null=True, blank=True)
    due_on = models.DateField(null=True, blank=True)
    stripe_invoice_id = models.CharField(max_length=100, blank=True)
    hosted_invoice_url = models.URLField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finalized_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-period"]
        constraints = [models.UniqueConstraint(fields=["tenant", "period"], name="invoice_per_tenant_month")]

    def __str__(self):
        return self.number or self.id


class InvoiceLine(models.Model):
    """A line per tier, per adapter and for training (and SLO credits), summed from the ledger rows the invoice
    took; usage of an earlier month recorded after that month's invoice gets lines of its own (``usage_period``)."""

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    # The month this line's usage is from when earlier than the invoice's own (null: the invoice's own month).
    usage_period = models.DateField(null=True, blank=True)
    kind = models.CharField(max_length=12, choices=UsageEvent.KIND_CHOICES)
    description = models.CharField(max_length=300)
    tier = models.CharField(max_length=8, blank=True)
    adapter = models.ForeignKey("adapters.Adapter", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    quantity = models.DecimalField(max_digits=24, decimal_places=3, default=ZERO)
    unit = models.CharField(max_length=20, blank=True)  # requests, GPU-ms, gradients
    amount_exact = models.DecimalField(**MONEY)  # the ledger sum
    amount = models.DecimalField(**CENTS)  # what the invoice shows (lines add up to the invoice total)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["invoice", "position"]

    def __str__(self):
        return f"{self.invoice_id}: {self.description}"


class InvoicedUsage(models.Model):
    """Which invoice took a ledger row: one per row, so a row is invoiced once whatever is retried (its primary
    key is the row's). Written when the invoice is finalized; the ledger itself stays append-only. A ledger row
    with none is open: it goes on the tenant's next invoice to be finalized, whichever month it is dated in."""

    usage_event = models.OneToOneField(UsageEvent, on_delete=models.PROTECT, primary_key=True, related_name="invoiced")
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="usage")

    def __str__(self):
        return f"{self.usage_event_id} on {self.invoice_id}"


class StripeEvent(models.Model):
    """Webhook events already handled: a replay or duplicate (same event id) is ignored."""

    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100)
    received_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.event_id
