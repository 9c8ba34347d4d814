"""Control-queue tasks of inference requests that the runtime nodes and beat send by name."""

from celery import shared_task
from django.db import InterfaceError, OperationalError

# What the nodes report (usage, progress) must survive a database restart: the task is retried with backoff
# (1, 2, 4 ... 30 s, about ten minutes in all) rather than dropped. The services are idempotent, so a retry
# after a commit whose answer was lost changes nothing.
DB_RETRY = {"autoretry_for": (OperationalError, InterfaceError), "retry_backoff": 1, "retry_backoff_max": 30,
            "max_retries": 25}


@shared_task(name="control.inference_expire_stale", ignore_result=True, soft_time_limit=50, time_limit=60)
def inference_expire_stale():
    """Beat: records the finals whose control task was lost (from the requests' streams), then fails requests
    no node answered within VAJRA_REQUEST_TIMEOUT_SECONDS (bounded batches)."""
    from vajra.errors import REDIS_DOWN

    from . import finals

    try:
        recorded = finals.finals_from_streams(limit=500)
    except REDIS_DOWN:  # the streams are unknown while Redis is away: the next sweep looks again
        recorded = 0
    return {"recorded_from_streams": recorded, "expired": finals.inference_expire_stale(limit=500)}


@shared_task(name="control.inference_finished", ignore_result=True, **DB_RETRY, soft_time_limit=10, time_limit=20)
def inference_finished(request_id, final):
    """A node's report of a request's end (``final``: the contract's Final as JSON)."""
    from . import finals

    final = finals.final_from_wire(request_id, final)
    if final is not None:
        finals.record_final(request_id, final, source=finals.CONTROL_TASK)


@shared_task(name="control.inference_started", ignore_result=True, **DB_RETRY, soft_time_limit=10, time_limit=20)
def inference_started(request_id, node_name, attempt=1):
    from .dispatch import inference_start

    inference_start(request_id=request_id, node_name=node_name, attempt=attempt)
