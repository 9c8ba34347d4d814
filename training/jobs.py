"""Fine-tuning jobs on the control plane: the cost estimate, creating a job, checking its file and
placing it on a node, and cancelling it. What the runtime reports back is in progress.py; the new
version and its swap onto the nodes (Algorithm 3) in hot_swap.py.

Statuses (OpenAI's): validating_files -> queued -> running -> succeeded | failed | cancelled. A job is queued
once its file checks out; ``node`` stays empty until placement finds an up node serving its base model. When
none can take it, ``control.training_place`` tries again every VAJRA_TRAIN_PLACE_RETRY_SECONDS (a countdown
task, so no beat entry is needed) and the job fails with ``no_capacity`` after VAJRA_TRAIN_QUEUE_TIMEOUT_SECONDS.

Estimate (VAJRA paper A.2): gradients = trainable LoRA elements x the tokens the job trains (every token of its
records as the trainer encodes them, counted with the base model's tokenizer and chat template:
training.tokens; gpu_runtime.training_spec defines the gradient), and cost = gradients x C_gradient /
1e6 x P_GPU, in integer micro-dollars rounded up. The same counts and formula bill each step the node reports.
"""

import hashlib
import re
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from adapters.models import Adapter, BaseModel
from adapters.services import adapter_ref, adapter_storage, base_facts
from adapters.storage_quota import require_storage, storage_lock
from billing.caps import check_training_spend
from billing.plans import plan_limits, training_cost, training_price
from fleet import runtime_client
from fleet.placement import NoCapacity, place, record_scale_up
from gpu_runtime.adapter_validation import DTYPE_BYTES, MAX_LORA_RANK
from gpu_runtime.contract import CONTROL_QUEUE, ContractError, adapter_id_of, cancel_key
from gpu_runtime.training_spec import Hyperparameters, TrainingSpec, trainable_elements, training_gradients
from tenants.audit import audit_record
from vajra.errors import Conflict, InvalidRequest

from .access import access_dataset, access_training_job
from .dataset_fetch import is_dataset_url, read_url_dataset, store_url_dataset
from .datasets import validate_dataset
from .models import TrainingEvent, TrainingJob
from .tokens import training_tokens

TASK_VALIDATE = "control.training_validate"
TASK_PLACE = "control.training_place"
CANCEL_TTL_SECONDS = 7 * 24 * 3600  # a running job checks its cancel key every step; keep it for a long job
WAITING = "Waiting for a node"
REQUIRED_HYPERPARAMETERS = ("learning_rate", "epochs")
_PARAM = re.compile(r"hyperparameters\.(\w+)")


def new_job_id():
    return f"ftjob_{uuid.uuid4().hex[:24]}"


def gradient_cost_micro_usd(gradients, *, tenant):
    """G x C_gradient / 1e6 x P_GPU under the tenant's plan (billing.plans.training_price), micro-dollars rounded
    up."""
    return training_price(tenant=tenant, gradients=gradients)[0]


def micro_usd_text(micro_usd):
    return str((Decimal(micro_usd) / 10**6).quantize(Decimal("0.000001")))


def million_tokens_micro_usd(trainable, *, tenant):
    """What a million trained tokens cost at ``trainable`` trainable elements: the per-token price of a job."""
    return gradient_cost_micro_usd(training_gradients(trainable, 10**6), tenant=tenant)


def reference_million_tokens(tenant):
    """(base model name, rank, targets, micro-dollars a million training tokens cost) for a new adapter with the
    default shape on the default base model, for pages that show the per-token price before any estimate; None
    while no node has reported that base model."""
    base_model = BaseModel.objects.filter(name=settings.VAJRA_DEFAULT_BASE_MODEL).first()
    if base_model is None:
        return None
    try:
        facts = base_facts(base_model)
    except (KeyError, TypeError, ZeroDivisionError):  # a row without its architecture yet: no price to show
        return None
    hp = Hyperparameters()
    elements = trainable_elements(facts.modules, facts.num_layers, hp.rank, hp.target_modules)
    return base_model.name, hp.rank, hp.target_modules, million_tokens_micro_usd(elements, tenant=tenant)


@dataclass(frozen=True)
class Estimate:
    records: int
    total_steps: int
    trainable_params: int
    dataset_tokens: int  # one epoch
    tokens_exact: bool  # False: the web has no tokenizer for the base model, so an upper bound
    trained_tokens: int
    gradients: int
    cost_micro_usd: int  # rounded up: an estimate never under-quotes
    cost_exact: Decimal  # what the ledger would bill for these gradients, at its 10 places
    million_tokens_micro_usd: int

    def to_json(self):
        return {"records": self.records, "total_steps": self.total_steps, "trainable_params": self.trainable_params,
                "dataset_tokens": self.dataset_tokens, "tokens_exact": self.tokens_exact,
                "trained_tokens": self.trained_tokens, "gradients": self.gradients,
                "cost_micro_usd": self.cost_micro_usd, "cost_usd": micro_usd_text(self.cost_micro_usd),
                "cost_exact_usd": format(self.cost_exact, "f"),
                "per_million_tokens": {"cost_micro_usd": self.million_tokens_micro_usd,
                                       "cost_usd": micro_usd_text(self.million_tokens_micro_usd)}}


def training_estimate(*, tenant, base_model, hp, records, tokens, tokens_exact=True):
    """What a job of ``records`` records holding ``tokens`` tokens (one epoch) with these hyperparameters computes
    and costs, before it starts."""
    facts = base_facts(base_model)
    elements = trainable_elements(facts.modules, facts.num_layers, hp.rank, hp.target_modules)
    trained = hp.trained_tokens(records, tokens)
    gradients = training_gradients(elements, trained)
    micro_usd, plan = training_price(tenant=tenant, gradients=gradients)
    return Estimate(records=records, total_steps=hp.total_steps(records), trainable_params=elements,
                    dataset_tokens=tokens, tokens_exact=tokens_exact, trained_tokens=trained, gradients=gradients,
                    cost_micro_usd=micro_usd, cost_exact=training_cost(plan, gradients=gradients),
                    million_tokens_micro_usd=million_tokens_micro_usd(elements, tenant=tenant))


# ---- checking a train request (nothing is written until every check passed) ----------------------------------

def _hyperparameters(payload, *, base_model, version):
    """The job's hyperparameters; training an adapter that has a version keeps that version's shape."""
    for name in REQUIRED_HYPERPARAMETERS:
        if name not in payload:
            raise InvalidRequest(f"hyperparameters.{name} is required.", param=f"hyperparameters.{name}",
                                 code="missing_hyperparameter")
    try:
        hp = Hyperparameters.from_json(payload, max_rank=MAX_LORA_RANK, known_modules=base_facts(base_model).modules)
    except ContractError as exc:
        match = _PARAM.search(str(exc))
        raise InvalidRequest(str(exc), param=f"hyperparameters.{match[1]}" if match else "hyperparameters",
                             code="invalid_hyperparameter") from None
    if version is None:
        return hp
    shape = {"rank": version.rank, "alpha": version.alpha, "target_modules": sorted(version.target_modules)}
    for name, value in shape.items():
        given = payload.get(name, value)
        if (sorted(given) if name == "target_modules" else given) != value:
            raise InvalidRequest(
                f"Adapter '{version.adapter.name}' v{version.number} has {name} {value}; training continues from it "
                f"with the same shape. Leave hyperparameters.{name} out, or name a new adapter.",
                param=f"hyperparameters.{name}", code="adapter_shape_fixed")
    return replace(hp, rank=version.rank, alpha=version.alpha, target_modules=tuple(sorted(version.target_modules)))


def _existing_adapter(tenant, name, base_model, *, lock):
    qs = Adapter.objects.filter(tenant=tenant, name=name, deleted_at__isnull=True).select_related(
        "current_version", "base_model")
    adapter = (qs.select_for_update(of=("self",)) if lock else qs).first()
    if adapter is not None and adapter.base_model_id != base_model.pk:
        raise InvalidRequest(f"Adapter '{name}' is for base model '{adapter.base_model.name}', not "
                             f"'{base_model.name}'; train it there or choose another name.", param="adapter_id",
                             code="base_mismatch")
    return adapter


def _dataset_and_records(principal, dataset_ref, url_dataset, *, lock=False):
    """(the dataset row or None for a URL not stored yet, its record count); another tenant's id is a 404. ``lock``:
    the dataset's row stays locked to the transaction's end, so a concurrent delete sees the job or is seen."""
    if url_dataset is not None:
        return None, url_dataset[2].record_count
    dataset = access_dataset(tenant=principal.tenant, dataset_id=dataset_ref, lock=lock)
    return dataset, dataset.records


def _estimate(tenant, base_model, hp, dataset, records, url_dataset):
    if url_dataset is not None:
        tokens, exact = training_tokens(base_model, data=url_dataset[1], fallback=url_dataset[2].tokens)
    else:
        tokens, exact = training_tokens(base_model, dataset=dataset, fallback=dataset.tokens)
    return training_estimate(tenant=tenant, base_model=base_model, hp=hp, records=records, tokens=tokens,
                             tokens_exact=exact)


def _url_dataset(principal, dataset_ref, base_model):
    if not is_dataset_url(dataset_ref):
        return None
    return read_url_dataset(tenant=principal.tenant, url=dataset_ref, base_model=base_model)


def _validation_dataset(principal, validation_ref, *, records, size_bytes=None, lock=False):
    """The tenant's stored dataset measured after each epoch, or None; another tenant's id is a 404. Its passes are
    forward only and bill no gradients, so it is bounded by the training data (``records``, ``size_bytes``: the
    training dataset's): at most as many records and bytes, a third of an epoch's compute at the most."""
    if validation_ref is None:
        return None
    validation = access_dataset(tenant=principal.tenant, dataset_id=validation_ref, lock=lock)
    if validation.records > records or (size_bytes is not None and validation.size_bytes > size_bytes):
        raise InvalidRequest(f"The validation dataset ({validation.records} records, {validation.size_bytes} bytes) "
                             f"is larger than the training dataset ({records} records"
                             f"{f', {size_bytes} bytes' if size_bytes is not None else ''}); validate on a sample of "
                             "at most its size.", param="validation_dataset", code="validation_too_large")
    return validation


def training_quote(*, principal, base_model, adapter_name, dataset_ref, hyperparameters, validation_ref=None):
    """The estimate for a train request, with the same checks as starting it; writes nothing."""
    principal.require("training.read")
    adapter = _existing_adapter(principal.tenant, adapter_name, base_model, lock=False)
    version = adapter.current_version if adapter else None
    hp = _hyperparameters(hyperparameters, base_model=base_model, version=version)
    url_dataset = _url_dataset(principal, dataset_ref, base_model)
    dataset, records = _dataset_and_records(principal, dataset_ref, url_dataset)
    _validation_dataset(principal, validation_ref, records=records, size_bytes=dataset.size_bytes if dataset else None)
    estimate = _estimate(principal.tenant, base_model, hp, dataset, records, url_dataset)
    _require_storage(principal.tenant, estimate, url_dataset)
    return estimate


def _require_storage(tenant, estimate, url_dataset):
    """413 storage_quota_exceeded when the URL dataset's snapshot, or it and the trained adapter, cannot fit: the
    trainer saves the adapter's parameters in F32 (a header on top), and the version is checked again when it is
    recorded (hot_swap.version_from_training)."""
    snapshot = len(url_dataset[1]) if url_dataset is not None else 0
    if snapshot:
        require_storage(tenant=tenant, adding=snapshot, param="dataset")
    require_storage(tenant=tenant, adding=snapshot + estimate.trainable_params * DTYPE_BYTES["F32"],
                    param="hyperparameters")


def training_create(*, principal, base_model, adapter_name, dataset_ref, hyperparameters, validation_ref=None,
                    job_id=None, new_adapter=False):
    """Checks the request, then writes the job (and the adapter, when it is new) and sends the file check after
    commit. Refusals write nothing: 400 bad input, 404 another tenant's dataset, 409 a job already active on the
    adapter, the adapter quota reached, or (``new_adapter``) an adapter of that name already there.
    ``validation_ref``: a stored dataset whose loss is measured after each epoch."""
    principal.require("training.write")
    url_dataset = _url_dataset(principal, dataset_ref, base_model)
    stored = []
    request = {"adapter_name": adapter_name, "dataset_ref": dataset_ref, "hyperparameters": hyperparameters,
               "validation_ref": validation_ref, "job_id": job_id or new_job_id(), "new_adapter": new_adapter}
    try:
        try:
            with transaction.atomic():
                job = _create(principal, base_model, request, url_dataset, stored)
        except IntegrityError:  # a concurrent request won the race past the checks: the database's constraints
            raise Conflict(f"A training job for adapter '{adapter_name}' has just started; wait for it to finish "
                           "or cancel it.", code="training_in_progress", param="adapter_id") from None
    except BaseException:
        for dataset in stored:  # the database said no: leave no orphaned file behind
            adapter_storage().delete(dataset.storage_key)
        raise
    return job


def _create(principal, base_model, request, url_dataset, stored):
    tenant = principal.tenant
    adapter_name, dataset_ref = request["adapter_name"], request["dataset_ref"]
    storage_lock(tenant)  # the storage check below runs under it; taken before the adapter's, as uploads do
    adapter = _existing_adapter(tenant, adapter_name, base_model, lock=True)
    if adapter is not None and request["new_adapter"]:
        raise Conflict(f"An adapter named '{adapter_name}' already exists.", code="adapter_exists", param="suffix")
    version = adapter.current_version if adapter else None
    if version is not None:
        version.adapter = adapter
    if adapter is not None:
        active = TrainingJob.objects.filter(adapter=adapter, status__in=TrainingJob.ACTIVE).first()
        if active is not None:
            raise Conflict(f"Job {active.id} is already {active.status} on adapter '{adapter.name}'; one job per "
                           "adapter at a time. Wait for it or cancel it.", code="training_in_progress",
                           param="adapter_id")
    hp = _hyperparameters(request["hyperparameters"], base_model=base_model, version=version)
    dataset, records = _dataset_and_records(principal, dataset_ref, url_dataset, lock=True)
    validation = _validation_dataset(principal, request["validation_ref"], records=records,
                                     size_bytes=dataset.size_bytes if dataset else None, lock=True)
    estimate = _estimate(tenant, base_model, hp, dataset, records, url_dataset)
    check_training_spend(tenant, gradients=estimate.gradients)  # 402 when the estimate would pass the spend cap
    _require_storage(tenant, estimate, url_dataset)
    if adapter is None:
        limits = plan_limits(tenant)
        if Adapter.objects.filter(tenant=tenant, deleted_at__isnull=True).count() >= limits.max_adapters:
            raise Conflict(f"The plan '{limits.plan}' allows {limits.max_adapters} adapters and this tenant has "
                           "them all; train an existing one, delete one or upgrade the plan.",
                           code="adapter_quota", param="adapter_id")
        adapter = Adapter.objects.create(tenant=tenant, base_model=base_model, name=adapter_name)
    if dataset is None:
        url, data, parsed = url_dataset
        dataset = store_url_dataset(principal=principal, url=url, data=data, parsed=parsed)
        stored.append(dataset)
    job = TrainingJob.objects.create(
        id=request["job_id"], tenant=tenant, base_model=base_model, adapter=adapter, base_version=version,
        dataset=dataset, validation_dataset=validation, hyperparameters=hp.to_json(), status=TrainingJob.VALIDATING,
        total_steps=estimate.total_steps, trainable_params=estimate.trainable_params,
        estimated_gradients=estimate.gradients, estimated_cost_micro_usd=estimate.cost_micro_usd,
        api_key=principal.api_key, created_by=principal.user)
    audit_record(tenant=tenant, principal=principal, action="training.started", target_type="training_job",
                 target_id=job.id, details={"adapter": adapter.name, "dataset": str(dataset.pk),
                                            "validation_dataset": validation.pk if validation else None,
                                            "estimated_gradients": estimate.gradients,
                                            "estimated_cost_micro_usd": estimate.cost_micro_usd})
    start = f"continuing from v{version.number}" if version else "a new adapter"
    measured = f", validated on {validation.records} records after each epoch" if validation else ""
    event(job, f"Created: {adapter.name} ({start}) on {dataset.records} records{measured}, {estimate.total_steps} "
               f"steps, about {estimate.gradients} gradients (${micro_usd_text(estimate.cost_micro_usd)}).")
    transaction.on_commit(lambda: _send(TASK_VALIDATE, [job.id], queue=CONTROL_QUEUE))
    return job


def event(job, message, *, level=TrainingEvent.INFO, step=None, loss=None, eval_loss=None):
    return TrainingEvent.objects.create(job=job, level=level, message=message[:2000], step=step, loss=loss,
                                        eval_loss=eval_loss)


def _send(name, args, **options):
    from vajra.celery import app

    app.send_task(name, args=args, **options)


# ---- file check and placement (control tasks) ---------------------------------------------------------------

def storage_uri(key):
    """Where a runtime node reads or writes ``key`` of the adapters storage: a file:// path or an s3:// URI."""
    storage = adapter_storage()
    try:
        return "file://" + storage.path(key)
    except NotImplementedError:  # remote storage
        return f"s3://{storage.bucket_name}/{key}"


def output_key(job):
    return f"training/{job.id}"


def checkpoint_key(job, step):
    """Where the runtime writes the checkpoint after ``step`` (gpu_runtime.trainer.checkpoint_uri)."""
    return f"{output_key(job)}/checkpoints/step-{step:07d}"


def _dataset_problem(dataset, base_model):
    """Why the stored file cannot be trained on (it is checked again: storage may have lost or changed it)."""
    try:
        with adapter_storage().open(dataset.storage_key, "rb") as f:
            data = f.read(plan_limits(dataset.tenant_id).dataset_max_bytes + 1)
    except OSError:
        return f"the file of dataset {dataset.id} is missing from storage; upload it again."
    if dataset.sha256 and hashlib.sha256(data).hexdigest() != dataset.sha256:
        return f"the file of dataset {dataset.id} changed since it was uploaded; upload it again."
    parsed = validate_dataset(data, base_model=base_model, tenant=dataset.tenant_id)
    if parsed.errors:
        return f"dataset {dataset.id} has {parsed.error_count} bad line(s): {parsed.summary()}"
    return None


def training_validate(*, job_id):
    """validating_files -> queued once the file checks out (else failed: invalid_file); then places the job."""
    job = (TrainingJob.objects.select_related("dataset", "validation_dataset", "base_model").filter(pk=job_id)
           .first())
    if job is None or job.status != TrainingJob.VALIDATING:
        return job  # already checked, or cancelled meanwhile: a redelivered task does nothing
    problem = _dataset_problem(job.dataset, job.base_model)
    if problem is None and job.validation_dataset_id:
        problem = _dataset_problem(job.validation_dataset, job.base_model)
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().filter(pk=job_id, status=TrainingJob.VALIDATING).first()
        if job is None:
            return None
        if problem:
            return finish(job, TrainingJob.FAILED, code="invalid_file", message=f"The training file failed its "
                                                                                f"check: {problem}")
        job.status = TrainingJob.QUEUED
        job.save(update_fields=["status"])
        event(job, f"Files validated: {job.dataset.records} records. Queued for a node serving {job.base_model.name}.")
    return training_place(job_id=job_id)


def training_spec(job):
    init = None
    if job.base_version_id:
        version = job.base_version
        version.adapter = job.adapter
        init = adapter_ref(version).to_json()
    return TrainingSpec(
        job_id=job.id, base_model=job.base_model.name, adapter_id=adapter_id_of(job.adapter_id),
        dataset_uri=storage_uri(job.dataset.storage_key), output_uri=storage_uri(output_key(job)),
        validation_uri=storage_uri(job.validation_dataset.storage_key) if job.validation_dataset_id else None,
        hyperparameters=job.hyperparameters, init=init, checkpoint_every=settings.VAJRA_TRAIN_CHECKPOINT_EVERY,
        max_seq_len=min(job.base_model.context_length, TrainingSpec.max_seq_len))


def training_place(*, job_id):
    """Sends a queued job to the best up node serving its base (Algorithm 2's placement, base only); with none,
    tries again later, and fails the job with no_capacity once it has waited too long."""
    scale_up = None
    with transaction.atomic():
        job = (TrainingJob.objects.select_for_update(of=("self",))
               .select_related("tenant", "base_model", "adapter", "dataset", "validation_dataset", "base_version")
               .filter(pk=job_id).first())
        if job is None or job.status != TrainingJob.QUEUED or job.node_id:
            return job  # placed already, started or finished: a duplicate retry does nothing
        try:
            node = place(tenant=job.tenant, base_model=job.base_model)
        except NoCapacity as exc:
            waited = timezone.now() - job.created_at
            if waited >= timedelta(seconds=settings.VAJRA_TRAIN_QUEUE_TIMEOUT_SECONDS):
                return finish(job, TrainingJob.FAILED, code="no_capacity", message=(
                    f"No node serving {job.base_model.name} could take the job within "
                    f"{settings.VAJRA_TRAIN_QUEUE_TIMEOUT_SECONDS} s; start it again later."))
            if not job.events.filter(message__startswith=WAITING).exists():
                scale_up = exc  # one scale-up signal per job, not one per retry
                event(job, f"{WAITING} serving {job.base_model.name}; retrying every "
                           f"{settings.VAJRA_TRAIN_PLACE_RETRY_SECONDS} s.", level=TrainingEvent.WARNING)
            transaction.on_commit(lambda: _send(TASK_PLACE, [job_id], queue=CONTROL_QUEUE,
                                                countdown=settings.VAJRA_TRAIN_PLACE_RETRY_SECONDS))
        else:
            job.node = node
            job.save(update_fields=["node"])
            event(job, f"Sent to node {node.name}.")
            spec = training_spec(job)
            transaction.on_commit(lambda: runtime_client.send_train(spec, node_name=node.name, task_id=job_id))
    if scale_up is not None:
        record_scale_up(scale_up)  # its own write: kept whatever happens to the job
    return job


def finish(job, status, *, code="", message="", level=None):
    """Closes a locked, unfinished job with an event (callers hold the row lock inside a transaction)."""
    job.status = status
    job.error_code = code[:64]
    job.error_message = message[:2000] if code else ""  # an error's message; other closes are only events
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "error_code", "error_message", "finished_at"])
    level = level or (TrainingEvent.ERROR if status == TrainingJob.FAILED else TrainingEvent.INFO)
    event(job, message or f"Job {status}.", level=level)
    return job


# ---- cancel ---------------------------------------------------------------------------------------------------

def signal_cancel(job_id, *, sent_to_node):
    """The runtime drops the job at its next step (or before it starts) when it sees the key."""
    from vajra.redis import get_redis

    get_redis().set(cancel_key(job_id), 1, ex=CANCEL_TTL_SECONDS)
    if sent_to_node:
        runtime_client.revoke(job_id)  # a node that has not taken it yet discards the message


def training_cancel(*, principal, job_id):
    """The tenant's job ``job_id`` (404 for another tenant's), under its row lock: validating_files / queued:
    cancelled now. running: cancel requested; the runtime's finished message brings the final status. A finished
    job: 409."""
    with transaction.atomic():
        job = access_training_job(tenant=principal.tenant, job_id=job_id, lock=True)
        principal.require("training.write")
        if job.status in TrainingJob.TERMINAL:
            raise Conflict(f"Job {job.id} has already finished ({job.status}); there is nothing to cancel.",
                           code="job_finished")
        sent = job.node_id is not None or job.status == TrainingJob.RUNNING
        if job.cancel_requested_at is None:  # a repeated cancel of a running job is not a second action
            audit_record(tenant=job.tenant_id, principal=principal, action="training.cancelled",
                         target_type="training_job", target_id=job.id, details={"status": job.status})
        if job.status == TrainingJob.RUNNING:
            if job.cancel_requested_at is None:
                job.cancel_requested_at = timezone.now()
                job.save(update_fields=["cancel_requested_at"])
                event(job, "Cancel requested; the node stops the job at its next step.")
        else:
            job.cancel_requested_at = timezone.now()
            job.save(update_fields=["cancel_requested_at"])
            finish(job, TrainingJob.CANCELLED, message="Cancelled before it started.")
        transaction.on_commit(lambda: signal_cancel(job.id, sent_to_node=sent))
    return job
