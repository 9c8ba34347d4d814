"""Django admin for platform staff: price plans (a version in use is read-only: a price change is a new
version), billing accounts (plan, spend cap), the ledger (read-only; corrections are adjustment rows,
``manage.py billing_adjust``) and invoices (read-only, with the operator actions of billing/invoice_actions.py)."""

import stripe
from django.contrib import admin, messages
from rest_framework.exceptions import APIException

from vajra.admin import ReadOnlyAdmin

from .invoice_actions import ACTIONS, invoice_operate
from .models import BillingAccount, Invoice, InvoiceLine, PricePlan, UsageEvent

PRICE_FIELDS = ("currency", "unit_price", "units_cold", "units_warm", "units_hot", "gpu_price_per_hour",
                "tenancy_factor", "gradient_price_per_million", "billing_granularity_ms", "monthly_spend_cap",
                "max_adapters", "max_concurrent_requests", "max_tokens", "storage_max_bytes")


@admin.register(PricePlan)
class PricePlanAdmin(admin.ModelAdmin):
    list_display = ("name", "version", "effective_from", "currency", "unit_price", "gpu_price_per_hour",
                    "tenancy_factor", "gradient_price_per_million", "billing_granularity_ms")
    list_filter = ("name",)
    fields = ("name", "version", "effective_from", *PRICE_FIELDS)

    def _in_use(self, obj):
        return obj is not None and UsageEvent.objects.filter(plan=obj).exists()

    def get_readonly_fields(self, request, obj=None):
        if self._in_use(obj):  # ledger rows were priced with it: never change what they point at
            return self.fields
        return ()

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and not self._in_use(obj)


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    list_display = ("tenant", "plan_name", "spend_cap", "standing", "past_due_since", "cap_warning_period")
    list_filter = ("standing", "plan_name")
    search_fields = ("tenant__slug", "tenant__name", "stripe_customer_id")
    list_select_related = ("tenant",)
    # standing follows payments (billing/standing.py); staff change the plan and the cap
    readonly_fields = ("tenant", "standing", "past_due_since", "cap_warning_period", "stripe_customer_id",
                       "created_at")

    def has_add_permission(self, request):
        return False  # created with the tenant's first ledger row or cap


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    list_display = ("key", "tenant", "kind", "tier", "units", "billed_gpu_ms", "gradients", "cost", "occurred_at",
                    "created_at")
    list_filter = ("kind", "tier", "period")
    search_fields = ("key", "tenant__slug")
    list_select_related = ("tenant",)
    date_hierarchy = "occurred_at"


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    fields = ("position", "kind", "description", "quantity", "unit", "amount_exact", "amount")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


def _operator_action(word):
    to, button, done = ACTIONS[word]

    def act(modeladmin, request, queryset):
        for invoice in queryset.exclude(status=Invoice.DRAFT).order_by("period", "id"):
            try:
                invoice_operate(invoice=invoice, to=to, user=request.user)
            except APIException as exc:
                modeladmin.message_user(request, str(exc.detail), messages.ERROR)
            except stripe.StripeError as exc:
                modeladmin.message_user(request, f"Invoice {invoice.number}: Stripe refused: "
                                                 f"{exc.user_message or exc}. Nothing was changed.", messages.ERROR)
            else:
                modeladmin.message_user(request, f"Invoice {invoice.number} {done}.", messages.SUCCESS)

    act.__name__ = word.replace("-", "_")
    return admin.action(description=f"{button} the selected invoices")(act)


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ("number", "tenant", "period", "status", "currency", "total", "finalized_at", "paid_at",
                    "voided_at")
    list_filter = ("status", "period")
    search_fields = ("id", "number", "tenant__slug", "stripe_invoice_id")
    list_select_related = ("tenant",)
    inlines = [InvoiceLineInline]
    actions = [_operator_action(word) for word in ACTIONS]
