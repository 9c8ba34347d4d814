"""Spend controls: a monthly spend cap per tenant, checked at admission; a warning at 80 %.

The cap is the account's ``spend_cap`` when set, else its plan's ``monthly_spend_cap`` (none by default). Spend
is the ledger's net sum for the current billing month (UTC), credits and adjustments included. Admission refuses
with 402 once spend reached the cap (inference requests) or once the job's estimate would take it past the cap
(training jobs). Work already admitted runs to its end and is billed, so a month can close a little over its cap.

The 80 % warning is shown on the Usage and Plan pages, and mailed once per month to the tenant's owners, admins
and billing viewers: the ledger write that crosses 80 % sends ``control.billing_cap_warning`` after commit, and
that task claims the month on the account (``cap_warning_period``) before mailing, so it mails once.
"""

import logging
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone
from rest_framework.exceptions import APIException

from vajra.errors import InvalidRequest

from .models import BillingAccount
from .plans import account_for, cached_plan, money_text, next_period, period_of, period_start, plan_for, training_cost
from .selectors import period_spend

log = logging.getLogger(__name__)

WARN_RATIO = Decimal("0.8")
TASK_CAP_WARNING = "control.billing_cap_warning"
PLAN_PAGE = "/billing/plan/"
MAX_CAP = 10**15  # BillingAccount.spend_cap holds 16 digits before the cents


class SpendCapReached(APIException):
    status_code = 402
    default_code = "spend_cap_reached"
    default_detail = "This month's spend reached the tenant's spend cap."


@dataclass(frozen=True)
class SpendStatus:
    period: date
    spend: Decimal
    requests: int
    cap: Decimal | None

    @property
    def resets_on(self):
        return next_period(self.period)

    @property
    def ratio(self):
        if self.cap is None:
            return None
        return Decimal(1) if self.cap <= 0 else self.spend / self.cap

    @property
    def warn(self):
        return self.cap is not None and self.spend >= self.cap * WARN_RATIO

    @property
    def reached(self):
        return self.cap is not None and self.spend >= self.cap

    @property
    def percent(self):
        return None if self.ratio is None else int(self.ratio * 100)


def cap_of(account, plan):
    return account.spend_cap if account.spend_cap is not None else plan.monthly_spend_cap


def spend_status(tenant, *, now=None):
    """This month's spend, requests and cap for the pages (reads only)."""
    now = now or timezone.now()
    account = account_for(tenant)
    plan = plan_for(tenant, now, account=account)
    period = period_of(now)
    spend, requests = period_spend(tenant=account.tenant_id, period=period)
    return SpendStatus(period=period, spend=spend, requests=requests, cap=cap_of(account, plan))


def _day(value):
    return f"{value.day} {value:%B %Y} (UTC)"


def check_spend(tenant, *, adding=Decimal(0), what=None, now=None, account=None):
    """Admission: raises SpendCapReached (402) once this month's spend reached the cap, or when ``adding`` (an
    estimate) would take it past the cap. Reads only; without a cap, one small lookup (none when the caller passes
    the ``account`` it read) and no sum."""
    now = now or timezone.now()
    account = account or account_for(tenant)
    cap = cap_of(account, cached_plan(account.plan_name))
    if cap is None:
        return
    period = period_of(now)
    spend, _ = period_spend(tenant=account.tenant_id, period=period)
    fix = f"raise the cap on the Billing › Plan page ({PLAN_PAGE}) or wait for {_day(next_period(period))}"
    if spend >= cap:
        raise SpendCapReached(f"This month's spend ${money_text(spend)} reached the cap ${money_text(cap)}; {fix}.")
    if adding > 0 and spend + adding > cap:
        raise SpendCapReached(f"{what or 'This'}'s estimated cost ${money_text(adding, 6)} would take this month's "
                              f"spend ${money_text(spend)} past the cap ${money_text(cap)}; {fix}.")


def check_training_spend(tenant, *, gradients, now=None):
    """Admission of a training job: its A.2 estimate must fit under the cap."""
    now = now or timezone.now()
    estimate = training_cost(plan_for(tenant, now), gradients=gradients)
    check_spend(tenant, adding=estimate, what="This training job", now=now)


def note_spend(*, account, plan, period):
    """After a new ledger row (inside its transaction): once the month's spend crosses 80 % of the cap and the
    month was not warned yet, send the warning task after commit."""
    cap = cap_of(account, plan)
    if cap is None or account.cap_warning_period == period:
        return
    spend, _ = period_spend(tenant=account.tenant_id, period=period)
    if spend < cap * WARN_RATIO:
        return
    tenant_id = account.tenant_id

    def send():
        from gpu_runtime.contract import CONTROL_QUEUE
        from vajra.celery import app

        app.send_task(TASK_CAP_WARNING, args=[tenant_id, period.isoformat()], queue=CONTROL_QUEUE)

    transaction.on_commit(send)


def _recipients(tenant_id):
    from tenants.models import Membership
    from tenants.roles import ADMIN, BILLING_VIEWER, OWNER

    return sorted(set(Membership.objects.filter(tenant_id=tenant_id, role__in=[OWNER, ADMIN, BILLING_VIEWER],
                                                user__is_active=True).values_list("user__email", flat=True)))


def cap_warning_send(*, tenant_id, period):
    """Mails the 80 % warning for ``period`` once: claims the month on the account (a conditional UPDATE), then
    mails; a failed mail gives the claim back so a later try can send it. Returns whether it mailed."""
    period = date.fromisoformat(period) if isinstance(period, str) else period
    account = BillingAccount.objects.select_related("tenant").filter(tenant_id=tenant_id).first()
    if account is None:
        return False
    plan = plan_for(account.tenant, period_start(period), account=account)
    cap = cap_of(account, plan)
    spend, _ = period_spend(tenant=tenant_id, period=period)
    if cap is None or spend < cap * WARN_RATIO:
        return False
    previous = account.cap_warning_period
    claimed = BillingAccount.objects.filter(pk=account.pk).exclude(cap_warning_period=period).update(
        cap_warning_period=period)
    if not claimed:
        return False  # warned already (another worker, or a redelivered task)
    tenant = account.tenant
    share = int(spend / cap * 100) if cap > 0 else 100
    try:
        send_mail(
            subject=f"{tenant.name} has used {share}% of its monthly spend cap on VAJRA",
            message=(f"{tenant.name} ({tenant.slug}) has spent ${money_text(spend)} of its ${money_text(cap)} cap "
                     f"for {period:%B %Y}.\n\nAt the cap, new inference requests and training jobs are refused "
                     f"(HTTP 402) until {_day(next_period(period))}. Owners and admins can raise the cap on the "
                     f"Billing › Plan page of the dashboard ({PLAN_PAGE})."),
            from_email=None, recipient_list=_recipients(tenant_id), fail_silently=False)
    except Exception:
        BillingAccount.objects.filter(pk=account.pk, cap_warning_period=period).update(cap_warning_period=previous)
        log.exception("spend cap warning for tenant %s not mailed; it will be tried again", tenant_id)
        raise
    return True


def spend_cap_set(*, principal, cap):
    """Owners and admins set the tenant's own cap (None: the plan's); a new cap may warn again this month."""
    principal.require("billing.manage")
    if cap is not None and not 0 <= cap < MAX_CAP:
        raise InvalidRequest(f"The spend cap must be between $0 and ${MAX_CAP:,}.", param="spend_cap",
                             code="invalid")
    with transaction.atomic():
        account = account_for(principal.tenant, create=True)
        BillingAccount.objects.filter(pk=account.pk).update(spend_cap=cap, cap_warning_period=None)
    account.spend_cap, account.cap_warning_period = cap, None
    return account


def overview_spend(principal, rows):
    """The Overview's spend card: this month's spend, for roles that read usage."""
    return {"spend": spend_status(principal.tenant) if principal.can("usage.read") else None}
