"""Celery: JSON only, late acks, hard and soft time limits. tests/test_settings.py asserts these."""

from celery.schedules import crontab

from gpu_runtime.redis_url import celery_url

from .channels import REDIS_URL
from .env import VAR_DIR, env_int
from .runtime import VAJRA_REQUEST_SWEEP_SECONDS

CELERY_BROKER_URL = celery_url(REDIS_URL)
CELERY_RESULT_BACKEND = celery_url(REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 60, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 90, minimum=2)
CELERY_RESULT_EXPIRES = env_int("CELERY_RESULT_EXPIRES", 3600, minimum=60)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "control"
CELERY_TASK_ROUTES = {"control.*": {"queue": "control"}}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "run" / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    # Every second, so a node is down (and its requests retried elsewhere) right after its third missed beat.
    "nodes-mark-down": {"task": "control.nodes_mark_down", "schedule": 1.0},
    # Requests whose task or answer a restarted broker lost (VAJRA_REQUEST_TIMEOUT_SECONDS, settings/runtime.py).
    "inference-expire-stale": {"task": "control.inference_expire_stale",
                               "schedule": float(VAJRA_REQUEST_SWEEP_SECONDS)},
    # Daily at 06:00 UTC (six hours for late usage to reach the ledger): invoices for past months.
    "invoices-close-period": {"task": "control.invoices_close_period", "schedule": crontab(minute=0, hour=6)},
    # Open invoices not yet finalized on Stripe (a Stripe outage, a lost response): retried well inside
    # Stripe's 24 h idempotency window. A no-op in local-only mode.
    "invoices-stripe-sync": {"task": "control.invoices_stripe_sync_pending", "schedule": 600.0},
    # Hourly: accounts past due longer than VAJRA_PAYMENT_GRACE_DAYS are suspended (billing/standing.py).
    "billing-suspend-past-due": {"task": "control.billing_suspend_past_due", "schedule": 3600.0},
}
if CELERY_TASK_TIME_LIMIT <= CELERY_TASK_SOFT_TIME_LIMIT:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("CELERY_TASK_TIME_LIMIT must be greater than CELERY_TASK_SOFT_TIME_LIMIT.")
