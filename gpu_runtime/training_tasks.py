"""The ``runtime.train`` task: one fine-tuning job on this node's engine (gpu_runtime.trainer).

The task thread prepares the run (dataset, tokens, starting weights, the last checkpoint when the job was
redelivered), hands it to the engine, then turns the engine's reports into control messages (metering per
step, checkpoints, the result) and progress entries on the job's Redis Stream. With ``acks_late`` a job whose
node dies is redelivered and resumes from its last checkpoint; a job whose final adapter is already written
only reports its result again (the control plane ignores a second one).
"""

import logging

from .celery_app import app, config, send_control
from .contract import (
    TASK_TRAIN,
    TASK_TRAINING_CHECKPOINT,
    TASK_TRAINING_FINISHED,
    TASK_TRAINING_STARTED,
    TASK_TRAINING_STEP,
    AdapterRef,
    ContractError,
)
from .node import node
from .training_spec import TrainingFailed

log = logging.getLogger("vajra.runtime.train")


def _send(name, *args):
    send_control(name, list(args))


def _failed(code, message):
    return {"status": "failed", "error": {"code": code, "message": message}, "adapter": None, "steps": 0,
            "final_loss": None}


def run_job(spec, *, engine, store, base, send=_send, streams=None):
    """Runs a job to its end on ``engine``; returns the result it reported (also used by tests)."""
    from . import trainer
    from .training_checkpoints import finished_result

    streams = streams or node.streams
    result = finished_result(spec)
    if result is None and streams.cancelled([spec.job_id]):  # cancelled while it waited in the queue
        result = {"status": "cancelled", "error": None, "adapter": None, "steps": 0, "final_loss": None}
    if result is None:
        try:
            init = None
            if spec.init:
                init = store.prepare(AdapterRef(**spec.init)).result(timeout=300)
            run = trainer.prepare(spec, base=base, pool=store.pool, facts=store.base_facts,
                                  max_rank=config.max_lora_rank, init_adapter=init)
        except TrainingFailed as exc:
            result = _failed(exc.code, exc.message)
        except Exception as exc:  # a broken starting adapter, storage down, ...: the job fails with why
            log.exception("training job %s could not start", spec.job_id)
            result = _failed(getattr(exc, "code", "training_setup_failed"), str(exc))
        else:
            send(TASK_TRAINING_STARTED, spec.job_id, config.node_name, {
                "total_steps": run.total_steps, "trainable_params": run.lora.numel(), "resumed_after_step": run.step,
                "records": len(run.examples), "validation_records": len(run.validation)})
            engine.submit_training(run)
            result = trainer.drive(
                run,
                on_step=lambda step, metering: send(TASK_TRAINING_STEP, spec.job_id, step,
                                                    {**metering, "node": config.node_name}),
                on_checkpoint=lambda step, uri, loss: send(TASK_TRAINING_CHECKPOINT, spec.job_id, step, uri, loss),
                on_progress=lambda progress: streams.event(spec.job_id, "progress", progress),
            )
    streams.final(spec.job_id, result)
    send(TASK_TRAINING_FINISHED, spec.job_id, result)
    return result


@app.task(name=TASK_TRAIN, acks_late=True, soft_time_limit=config.train_time_limit_s,
          time_limit=config.train_time_limit_s + 60)
def train(payload):
    from .training_spec import TrainingSpec

    try:
        spec = TrainingSpec.from_json(payload)
    except ContractError as exc:
        job_id = payload.get("job_id") if isinstance(payload, dict) else None
        result = _failed("invalid_job", str(exc))
        if isinstance(job_id, str) and job_id:
            _send(TASK_TRAINING_FINISHED, job_id, result)
        return result
    engine = node.require_engine()
    return run_job(spec, engine=engine, store=node.store, base=node.base)
