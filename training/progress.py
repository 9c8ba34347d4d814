"""What a runtime node reports about a training job (gpu_runtime.contract, "Training"), recorded exactly once.

Messages arrive on the ``control`` queue and may come twice (a redelivered job resumes from its last checkpoint
and reports the steps after it again) or out of order (several control workers). So: a step is one
TrainingStep row keyed by (job, step) and a duplicate is ignored, which is what keeps a step from being billed
twice; a checkpoint likewise; a finished job is never rewritten.
"""

import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.ledger import record_training_step
from fleet.models import Node

from .jobs import event, finish, signal_cancel
from .models import TrainingCheckpoint, TrainingJob, TrainingStep

log = logging.getLogger(__name__)


def _locked(job_id):
    return TrainingJob.objects.select_for_update().filter(pk=job_id).first()


def _number(value, kind=int, minimum=0):
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ValueError(f"{value!r} is not a number >= {minimum}")
    return kind(value)


def training_started(*, job_id, node_name, info):
    """queued -> running on ``node_name``, with the node's step count and trainable parameters."""
    info = info if isinstance(info, dict) else {}
    with transaction.atomic():
        job = _locked(job_id)
        if job is None or job.status == TrainingJob.VALIDATING:  # not sent to any node: not ours to start
            log.warning("training_started for job %s, which no node was given", job_id)
            return job
        if job.status == TrainingJob.CANCELLED or job.cancel_requested_at:  # tell the node (again) to stop
            transaction.on_commit(lambda: signal_cancel(job_id, sent_to_node=True))
        if job.status in TrainingJob.TERMINAL:
            return job
        fields = ["status", "started_at", "node"]
        job.status = TrainingJob.RUNNING
        job.started_at = job.started_at or timezone.now()
        job.node = Node.objects.filter(name=node_name).first() or job.node
        for name in ("total_steps", "trainable_params"):
            try:
                setattr(job, name, _number(info.get(name)))
                fields.append(name)
            except ValueError:
                pass
        job.save(update_fields=fields)
        resumed = info.get("resumed_after_step")
        if isinstance(resumed, int) and resumed > 0:
            event(job, f"Resumed on node {node_name} after step {resumed} (its last checkpoint).")
        else:
            event(job, f"Started on node {node_name}: {job.total_steps} steps, {job.trainable_params} trainable "
                       "parameters.")
    return job


def training_step(*, job_id, step, metering):
    """Meters one optimizer step once; returns False for a duplicate or a step that must not count."""
    try:
        row = {"step": _number(step, minimum=1), "gradients": _number(metering["gradients"]),
               "micro_batches": _number(metering["micro_batches"]), "tokens": _number(metering["tokens"]),
               "compute_ms": _number(metering["compute_ms"], float), "loss": _number(metering["loss"], float, -1e30),
               "node": str(metering.get("node") or "")[:63]}
        for name in ("learning_rate", "eval_loss"):  # optional: a node reports eval_loss at an epoch's end
            if metering.get(name) is not None:
                row[name] = _number(metering[name], float, 0 if name == "learning_rate" else -1e30)
    except (KeyError, TypeError, ValueError) as exc:
        log.error("training_step for job %s dropped, it breaks the contract: %s", job_id, exc)
        return False
    with transaction.atomic():
        job = _locked(job_id)
        if job is None or job.status == TrainingJob.VALIDATING:
            return False
        if job.status == TrainingJob.CANCELLED and job.started_at is None:
            return False  # cancelled before it started: a node that ran it anyway is the platform's cost
        try:
            with transaction.atomic():  # a savepoint: the duplicate's IntegrityError leaves the job's lock usable
                step_row = TrainingStep.objects.create(job=job, **row)
        except IntegrityError:
            return False  # already metered (a resumed job re-reports the steps after its checkpoint)
        record_training_step(job, step_row)  # its ledger row, keyed by (job, step) like the row above
        job.trained_steps = job.steps.count()
        job.last_loss = job.steps.order_by("-step").values_list("loss", flat=True).first()
        job.last_eval_loss = (job.steps.filter(eval_loss__isnull=False).order_by("-step")
                              .values_list("eval_loss", flat=True).first())
        fields = ["trained_steps", "last_loss", "last_eval_loss"]
        if job.status == TrainingJob.QUEUED:  # the step overtook the started message
            job.status, job.started_at = TrainingJob.RUNNING, timezone.now()
            fields += ["status", "started_at"]
        job.save(update_fields=fields)
        total = f"/{job.total_steps}" if job.total_steps else ""
        measured = f", eval loss {row['eval_loss']:.4f}" if row.get("eval_loss") is not None else ""
        event(job, f"Step {row['step']}{total}: training loss {row['loss']:.4f}{measured}.", step=row["step"],
              loss=row["loss"], eval_loss=row.get("eval_loss"))
    return True


def training_checkpoint(*, job_id, step, uri, loss=None):
    """Records a checkpoint once (the runtime resumes from the newest one it finds under the job's folder)."""
    try:
        step = _number(step)
        loss = None if loss is None else _number(loss, float, -1e30)
        if not isinstance(uri, str) or not uri or len(uri) > 500:
            raise ValueError(f"bad uri {uri!r}")
    except ValueError as exc:
        log.error("training_checkpoint for job %s dropped, it breaks the contract: %s", job_id, exc)
        return None
    job = TrainingJob.objects.filter(pk=job_id).first()
    if job is None:
        return None
    checkpoint, created = TrainingCheckpoint.objects.get_or_create(job=job, step=step,
                                                                   defaults={"uri": uri, "loss": loss})
    if created:
        event(job, f"Checkpoint saved at step {step}.", step=step, loss=loss)
    return checkpoint


def training_finish(*, job_id, result):
    """The runtime's result: succeeded (a new version becomes current, hot_swap.py), failed or cancelled. A job
    that already finished is never rewritten, so a second finished message changes nothing."""
    from . import hot_swap

    job = TrainingJob.objects.select_related("adapter", "base_model").filter(pk=job_id).first()
    if job is None or job.status in TrainingJob.TERMINAL:
        return job
    result = result if isinstance(result, dict) else {}
    status = result.get("status")
    if status == TrainingJob.SUCCEEDED:
        try:
            output = hot_swap.checked_output(job, result.get("adapter"))
        except hot_swap.OutputRejected as exc:
            return _close(job_id, TrainingJob.FAILED, code=exc.code, message=f"The trained adapter was refused: "
                                                                            f"{exc.message}")
        return hot_swap.version_from_training(job_id=job_id, output=output, final_loss=result.get("final_loss"))
    if status == TrainingJob.CANCELLED:
        return _close(job_id, TrainingJob.CANCELLED, message=f"Cancelled after step {result.get('steps') or 0}.")
    error = result.get("error") if isinstance(result.get("error"), dict) else {}
    return _close(job_id, TrainingJob.FAILED, code=str(error.get("code") or "training_failed"),
                  message=str(error.get("message") or f"The node reported status {status!r}."))


def _close(job_id, status, *, code="", message=""):
    with transaction.atomic():
        job = _locked(job_id)
        if job is None or job.status in TrainingJob.TERMINAL:
            return job
        return finish(job, status, code=code, message=message)
