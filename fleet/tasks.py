"""Control-queue tasks the runtime nodes and beat send by name."""

from celery import shared_task
from django.db import InterfaceError, OperationalError

from gpu_runtime.contract import (
    TASK_TRAINING_CHECKPOINT,
    TASK_TRAINING_FINISHED,
    TASK_TRAINING_STARTED,
    TASK_TRAINING_STEP,
)

from . import services

# What the nodes report (usage, progress) must survive a database restart: the task is retried with backoff
# (1, 2, 4 ... 30 s, about ten minutes in all) rather than dropped. The services are idempotent, so a retry
# after a commit whose answer was lost changes nothing.
DB_RETRY = {"autoretry_for": (OperationalError, InterfaceError), "retry_backoff": 1, "retry_backoff_max": 30,
            "max_retries": 25}


@shared_task(name="control.node_heartbeat", ignore_result=True, soft_time_limit=10, time_limit=20)
def node_heartbeat(payload):
    services.node_heartbeat(payload=payload)


@shared_task(name="control.nodes_mark_down", ignore_result=True, soft_time_limit=10, time_limit=20)
def nodes_mark_down():
    return services.nodes_mark_down()


@shared_task(name="control.inference_expire_stale", ignore_result=True, soft_time_limit=50, time_limit=60)
def inference_expire_stale():
    """Beat: records the finals whose control task was lost (from the requests' streams), then fails requests
    no node answered within VAJRA_REQUEST_TIMEOUT_SECONDS (bounded batches)."""
    from vajra.errors import REDIS_DOWN

    from .dispatch import finals_from_streams
    from .dispatch import inference_expire_stale as expire

    try:
        recorded = finals_from_streams(limit=500)
    except REDIS_DOWN:  # the streams are unknown while Redis is away: the next sweep looks again
        recorded = 0
    return {"recorded_from_streams": recorded, "expired": expire(limit=500)}


@shared_task(name="control.inference_finished", ignore_result=True, **DB_RETRY, soft_time_limit=10, time_limit=20)
def inference_finished(request_id, final):
    from .dispatch import inference_finish

    inference_finish(request_id=request_id, final=final)


@shared_task(name="control.inference_started", ignore_result=True, **DB_RETRY, soft_time_limit=10, time_limit=20)
def inference_started(request_id, node_name, attempt=1):
    from .dispatch import inference_start

    inference_start(request_id=request_id, node_name=node_name, attempt=attempt)


# Training (gpu_runtime.contract, "Training"): the web sends validate; placement retries itself; nodes report.

@shared_task(name="control.training_validate", ignore_result=True, soft_time_limit=60, time_limit=90)
def training_validate(job_id):
    from .training import training_validate as validate

    validate(job_id=job_id)


@shared_task(name="control.training_place", ignore_result=True, soft_time_limit=10, time_limit=20)
def training_place(job_id):
    from .training import training_place as place

    place(job_id=job_id)


@shared_task(name=TASK_TRAINING_STARTED, ignore_result=True, **DB_RETRY, soft_time_limit=10, time_limit=20)
def training_started(job_id, node_name, info):
    from .training_progress import training_started as started

    started(job_id=job_id, node_name=node_name, info=info)


@shared_task(name=TASK_TRAINING_STEP, ignore_result=True, **DB_RETRY, soft_time_limit=10, time_limit=20)
def training_step(job_id, step, metering):
    from .training_progress import training_step as record

    record(job_id=job_id, step=step, metering=metering)


@shared_task(name=TASK_TRAINING_CHECKPOINT, ignore_result=True, **DB_RETRY, soft_time_limit=10, time_limit=20)
def training_checkpoint(job_id, step, uri, loss=None):
    from .training_progress import training_checkpoint as record

    record(job_id=job_id, step=step, uri=uri, loss=loss)


@shared_task(name=TASK_TRAINING_FINISHED, ignore_result=True, **DB_RETRY, soft_time_limit=60, time_limit=90)
def training_finished(job_id, result):
    from .training_progress import training_finish

    training_finish(job_id=job_id, result=result)
