"""Control-queue tasks of billing: thin, by id, each calling one service that checks state first."""

from celery import shared_task


@shared_task(name="control.billing_cap_warning", ignore_result=True, soft_time_limit=30, time_limit=45)
def billing_cap_warning(tenant_id, period):
    from .caps import cap_warning_send

    cap_warning_send(tenant_id=tenant_id, period=period)


@shared_task(name="control.billing_suspend_past_due", ignore_result=True, soft_time_limit=50, time_limit=60)
def billing_suspend_past_due():
    from .standing import accounts_suspend_past_due

    return accounts_suspend_past_due()


@shared_task(name="control.invoices_close_period", ignore_result=True, soft_time_limit=60, time_limit=90)
def close_period(period=None):
    """Beat, daily: finalizes last month's invoices (``period``: "YYYY-MM-DD", the first day of another past month),
    VAJRA_INVOICE_CLOSE_BATCH at most per run; a full batch queues the next run at once."""
    from datetime import date

    from django.conf import settings

    from .invoices import invoices_close_period, previous_period

    month = date.fromisoformat(period) if period else previous_period()
    closed, more = invoices_close_period(period=month, limit=settings.VAJRA_INVOICE_CLOSE_BATCH,
                                         seconds=settings.VAJRA_INVOICE_CLOSE_SECONDS)
    if more:
        close_period.apply_async(args=[month.isoformat()], queue="control")
    return closed


@shared_task(name="control.invoice_stripe_sync", ignore_result=True, soft_time_limit=50, time_limit=60)
def invoice_stripe_sync(invoice_id):
    from .stripe_sync import invoice_stripe_sync as sync

    return sync(invoice_id=invoice_id)


@shared_task(name="control.invoices_stripe_sync_pending", ignore_result=True, soft_time_limit=50, time_limit=60)
def invoices_stripe_sync_pending():
    from .stripe_sync import invoices_stripe_sync_pending as sync_pending

    return sync_pending(limit=50, seconds=30)
