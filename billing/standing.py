"""Payment standing: active -> past_due (a payment failed) -> suspended after the grace period.

The Stripe webhook (billing/webhooks*.py) reports payments: ``account_past_due`` on a failed one,
``account_paid`` on a paid one. ``accounts_suspend_past_due`` (control task, beat) suspends the accounts past due
longer than VAJRA_PAYMENT_GRACE_DAYS, and their tenants with them (refused everywhere, as a staff suspension);
a payment later reactivates a tenant that billing suspended.
"""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .models import BillingAccount
from .plans import account_for

SUSPEND_BATCH = 100


def account_past_due(*, tenant, at=None):
    """A payment failed: active -> past_due from ``at`` (an account already past due keeps its first date)."""
    at = at or timezone.now()
    with transaction.atomic():
        account = account_for(tenant, create=True)
        BillingAccount.objects.filter(pk=account.pk, standing=BillingAccount.ACTIVE).update(
            standing=BillingAccount.PAST_DUE, past_due_since=at)
    account.refresh_from_db()
    return account


def account_paid(*, tenant):
    """A payment succeeded: back to active; a tenant that billing suspended is reactivated."""
    from tenants.models import Tenant
    from tenants.services import tenant_set_status

    with transaction.atomic():
        account = account_for(tenant, create=True)
        account = BillingAccount.objects.select_for_update().get(pk=account.pk)
        was_suspended = account.standing == BillingAccount.SUSPENDED
        if account.standing != BillingAccount.ACTIVE:
            account.standing, account.past_due_since = BillingAccount.ACTIVE, None
            account.save(update_fields=["standing", "past_due_since"])
        if was_suspended:
            tenant_set_status(tenant_id=account.tenant_id, status=Tenant.ACTIVE)
    return account


def accounts_suspend_past_due(*, now=None, batch=SUSPEND_BATCH):
    """Suspends up to ``batch`` accounts past due longer than the grace period, and their tenants. Each is claimed
    with a conditional UPDATE, so two runs never suspend one twice. Returns the tenant ids suspended."""
    from tenants.models import Tenant
    from tenants.services import tenant_set_status

    now = now or timezone.now()
    deadline = now - timedelta(days=settings.VAJRA_PAYMENT_GRACE_DAYS)
    due = list(BillingAccount.objects.filter(standing=BillingAccount.PAST_DUE, past_due_since__lte=deadline)
               .order_by("past_due_since").values_list("pk", "tenant_id")[:batch])
    suspended = []
    for pk, tenant_id in due:
        with transaction.atomic():
            claimed = BillingAccount.objects.filter(pk=pk, standing=BillingAccount.PAST_DUE).update(
                standing=BillingAccount.SUSPENDED)
            if claimed:
                tenant_set_status(tenant_id=tenant_id, status=Tenant.SUSPENDED)
                suspended.append(tenant_id)
    return suspended
