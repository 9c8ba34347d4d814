"""Control-queue tasks of adapters: fetching an adapter imported by URL."""

from celery import shared_task
from django.conf import settings

from .url_import import TASK_ADAPTER_IMPORT


@shared_task(name=TASK_ADAPTER_IMPORT, ignore_result=True, soft_time_limit=settings.VAJRA_ADAPTER_URL_TIMEOUT_S + 120,
             time_limit=settings.VAJRA_ADAPTER_URL_TIMEOUT_S + 180)
def adapter_import(import_id):
    from .url_import import adapter_import_run

    adapter_import_run(import_id=import_id)
