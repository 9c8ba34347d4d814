"""Django admin for platform staff: price plans (a version in use is read-only: a price change is a new
version), billing accounts (plan, spend cap), and the ledger (read-only; corrections are adjustment rows,
``manage.py billing_adjust``)."""

from django.contrib import admin

from vajra.admin import ReadOnlyAdmin

from .models import BillingAccount, PricePlan, UsageEvent

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
