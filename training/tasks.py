"""Control-queue tasks of training jobs (gpu_runtime.contract, "Training"): the web sends validate; placement
retries itself; nodes report."""

from celery import shared_task

from gpu_runtime.contract import (
    TASK_TRAINING_CHECKPOINT,
    TASK_TRAINING_FINISHED,
    TASK_TRAINING_STARTED,
    TASK_TRAINING_STEP,
)
from serving.tasks import DB_RETRY


@shared_task(name="control.training_validate", ignore_result=True, soft_time_limit=60, time_limit=90)
def training_validate(job_id):
    from .jobs import training_validate as validate

    validate(job_id=job_id)


@shared_task(name="control.training_place", ignore_result=True, soft_time_limit=10, time_limit=20)
def training_place(job_id):
    from .jobs import training_place as place

    place(job_id=job_id)


@shared_task(name=TASK_TRAINING_STARTED, ignore_result=True, **DB_RETRY, soft_time_limit=10, time_limit=20)
def training_started(job_id, node_name, info):
    from .progress import training_started as started

    started(job_id=job_id, node_name=node_name, info=info)


@shared_task(name=TASK_TRAINING_STEP, ignore_result=True, **DB_RETRY, soft_time_limit=10, time_limit=20)
def training_step(job_id, step, metering):
    from .progress import training_step as record

    record(job_id=job_id, step=step, metering=metering)


@shared_task(name=TASK_TRAINING_CHECKPOINT, ignore_result=True, **DB_RETRY, soft_time_limit=10, time_limit=20)
def training_checkpoint(job_id, step, uri, loss=None):
    from .progress import training_checkpoint as record

    record(job_id=job_id, step=step, uri=uri, loss=loss)


@shared_task(name=TASK_TRAINING_FINISHED, ignore_result=True, **DB_RETRY, soft_time_limit=60, time_limit=90)
def training_finished(job_id, result):
    from .progress import training_finish

    training_finish(job_id=job_id, result=result)
