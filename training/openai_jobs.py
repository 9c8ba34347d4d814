"""OpenAI's fine-tuning API over VAJRA's training jobs, so the unmodified ``openai`` package runs them:

    POST /v1/fine_tuning/jobs                      {"model", "training_file", "validation_file"?, "hyperparameters"?,
                                                    "suffix"?, "seed"?, "method"?} -> the job
    GET  /v1/fine_tuning/jobs                      newest first; ?after=<job id>, ?limit=1..100
    GET  /v1/fine_tuning/jobs/{id}
    POST /v1/fine_tuning/jobs/{id}/cancel
    GET  /v1/fine_tuning/jobs/{id}/events          newest first; ?after=<event id>, ?limit=1..100
    GET  /v1/fine_tuning/jobs/{id}/checkpoints     newest first; ?after=<checkpoint id>, ?limit=1..100

A job here is the same job as /v1/training/jobs (training.jobs.training_create: the same checks, billing and
statuses, which are OpenAI's). ``model`` is a base model (the job trains a new adapter, named
``ft-<suffix>-<12 hex of the job id>``) or one of the tenant's adapters, ``name`` or ``name@vN`` of its current
version (the job trains its next version). The finished job's ``fine_tuned_model`` is that version as
``name@vN``, the model id ``/v1/chat/completions`` takes. OpenAI's hyperparameters map onto ours: ``n_epochs`` ->
epochs, ``batch_size`` -> batch_size, ``learning_rate_multiplier`` x DEFAULT_LEARNING_RATE -> learning_rate;
"auto" is our default. A validation file gives an eval loss after each epoch: ``valid_loss`` in the metrics
events and checkpoints. Answers carry a ``vajra`` field: adapter, steps, losses and the cost so far.
"""

import re
import secrets

from django.db.models import Q, Sum
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from adapters.access import access_adapter_version, access_base_model
from gpu_runtime.training_spec import MAX_BATCH_SIZE, MAX_EPOCHS, Hyperparameters
from serving.openai_api import model_not_found
from vajra.errors import InvalidRequest
from vajra.schema import errors
from vajra.serializers import StrictSerializer

from . import access
from .api import money
from .dataset_fetch import is_dataset_url
from .jobs import gradient_cost_micro_usd, new_job_id, training_cancel, training_create
from .models import TrainingJob
from .openai_files import page_param, unix

DEFAULT_LEARNING_RATE = Hyperparameters.learning_rate  # what learning_rate_multiplier 1 (or "auto") means
MAX_MULTIPLIER = 1 / DEFAULT_LEARNING_RATE  # our learning_rate is at most 1
MAX_PAGE = 100
SUFFIX_RE = r"^[a-z0-9][a-z0-9._-]{0,39}$"
EVENT_ID = re.compile(r"^ftevent-(\d{1,18})$")
CHECKPOINT_ID = re.compile(r"^ftckpt-(\d{1,18})$")
LEVELS = {"info": "info", "warning": "warn", "error": "error"}


class HyperparametersIn(StrictSerializer):
    """Each one "auto" or a number; checked in ``_hyperparameters`` so the message names OpenAI's field."""

    n_epochs = serializers.JSONField(required=False, help_text=f'"auto" or 1..{MAX_EPOCHS}')
    batch_size = serializers.JSONField(required=False, help_text=f'"auto" or 1..{MAX_BATCH_SIZE}')
    learning_rate_multiplier = serializers.JSONField(required=False, help_text=(
        f'"auto" or > 0 and <= {MAX_MULTIPLIER:g}: times {DEFAULT_LEARNING_RATE:g}'))


class SupervisedIn(StrictSerializer):
    hyperparameters = HyperparametersIn(required=False)


class MethodIn(StrictSerializer):
    type = serializers.ChoiceField(choices=["supervised"], error_messages={
        "invalid_choice": "\"{input}\" is not supported: VAJRA fine-tunes LoRA adapters on chat records "
                          "(supervised)."})
    supervised = SupervisedIn(required=False)


class FineTuningJobIn(StrictSerializer):
    model = serializers.CharField(max_length=200, help_text="A base model id, or an adapter 'name' / 'name@vN'.")
    training_file = serializers.CharField(max_length=40)
    validation_file = serializers.CharField(max_length=40, required=False, allow_null=True)
    hyperparameters = HyperparametersIn(required=False)
    method = MethodIn(required=False)
    suffix = serializers.RegexField(SUFFIX_RE, required=False, allow_null=True, error_messages={
        "invalid": "suffix is 1-40 lowercase letters, digits, '.', '_' and '-', starting with a letter or digit."})
    seed = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=2**31 - 1)
    integrations = serializers.ListField(required=False, allow_null=True, max_length=0, error_messages={
        "max_length": "integrations are not supported."})
    metadata = serializers.DictField(required=False, allow_null=True, allow_empty=True)

    def validate_metadata(self, value):
        if value:
            raise serializers.ValidationError("metadata is not supported; leave it out.", code="unsupported_value")
        return value


# ---- answers, as the schema shows them ----------------------------------------------------------------------------

class HyperparametersOut(serializers.Serializer):
    n_epochs = serializers.IntegerField()
    batch_size = serializers.IntegerField()
    learning_rate_multiplier = serializers.FloatField()


class JobErrorOut(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    param = serializers.CharField(allow_null=True)


class FineTuningJobOut(serializers.Serializer):
    """OpenAI's fine_tuning.job; ``vajra``: the adapter, steps, losses and cost so far (training.api's job)."""

    id = serializers.CharField()
    object = serializers.CharField(help_text="fine_tuning.job")
    created_at = serializers.IntegerField()
    model = serializers.CharField(help_text="The base model, or the adapter version training continued from.")
    fine_tuned_model = serializers.CharField(allow_null=True, help_text="name@vN, once the job succeeded.")
    finished_at = serializers.IntegerField(allow_null=True)
    status = serializers.ChoiceField(choices=[c for c, _ in TrainingJob.STATUS_CHOICES])
    organization_id = serializers.CharField(help_text="The tenant's slug.")
    error = JobErrorOut(allow_null=True)
    hyperparameters = HyperparametersOut()
    seed = serializers.IntegerField()
    result_files = serializers.ListField(child=serializers.CharField())
    trained_tokens = serializers.IntegerField(allow_null=True)
    training_file = serializers.CharField()
    validation_file = serializers.CharField(allow_null=True)
    estimated_finish = serializers.IntegerField(allow_null=True)
    integrations = serializers.ListField(child=serializers.DictField())
    metadata = serializers.DictField(allow_null=True)
    method = serializers.DictField()
    vajra = serializers.DictField()


class FineTuningJobListOut(serializers.Serializer):
    object = serializers.CharField(help_text="list")
    data = FineTuningJobOut(many=True)
    has_more = serializers.BooleanField()


class EventOut(serializers.Serializer):
    id = serializers.CharField(help_text="ftevent-<n>")
    object = serializers.CharField(help_text="fine_tuning.job.event")
    created_at = serializers.IntegerField()
    level = serializers.ChoiceField(choices=["info", "warn", "error"])
    message = serializers.CharField()
    type = serializers.ChoiceField(choices=["message", "metrics"])
    data = serializers.DictField(help_text="metrics: step, train_loss and, after an epoch, valid_loss.")


class EventListOut(serializers.Serializer):
    object = serializers.CharField(help_text="list")
    data = EventOut(many=True)
    has_more = serializers.BooleanField()


class CheckpointMetricsOut(serializers.Serializer):
    step = serializers.IntegerField()
    train_loss = serializers.FloatField(allow_null=True)
    valid_loss = serializers.FloatField(allow_null=True)


class CheckpointOut(serializers.Serializer):
    id = serializers.CharField(help_text="ftckpt-<n>")
    object = serializers.CharField(help_text="fine_tuning.job.checkpoint")
    created_at = serializers.IntegerField()
    fine_tuning_job_id = serializers.CharField()
    step_number = serializers.IntegerField()
    metrics = CheckpointMetricsOut()
    fine_tuned_model_checkpoint = serializers.CharField(help_text="Where the checkpoint downloads as a PEFT zip.")
    vajra = serializers.DictField()


class CheckpointListOut(serializers.Serializer):
    object = serializers.CharField(help_text="list")
    data = CheckpointOut(many=True)
    has_more = serializers.BooleanField()


# ---- create -------------------------------------------------------------------------------------------------------

def _choice(values, name, *, integer, high):
    value = values.get(name, "auto")
    if value == "auto":
        return None
    number_ok = isinstance(value, int | float) and not isinstance(value, bool)
    # an int compares exactly whatever its size (float() of a 400-digit one would overflow)
    whole = isinstance(value, int) or (number_ok and float(value).is_integer())
    if not number_ok or (integer and not whole) or not 0 < value <= high:
        kind = f"an integer from 1 to {high}" if integer else f"a number > 0 and <= {high:g}"
        raise InvalidRequest(f"hyperparameters.{name} must be \"auto\" or {kind}, got {value!r}.",
                             param=f"hyperparameters.{name}", code="invalid_hyperparameter")
    return int(value) if integer else float(value)


def _hyperparameters(values, seed):
    """OpenAI's hyperparameters as ours (training.jobs checks them again, with the base model's facts)."""
    epochs = _choice(values, "n_epochs", integer=True, high=MAX_EPOCHS)
    batch_size = _choice(values, "batch_size", integer=True, high=MAX_BATCH_SIZE)
    multiplier = _choice(values, "learning_rate_multiplier", integer=False, high=MAX_MULTIPLIER)
    defaults = Hyperparameters()
    return {"epochs": epochs or defaults.epochs, "batch_size": batch_size or defaults.batch_size,
            "learning_rate": DEFAULT_LEARNING_RATE * (multiplier or 1.0), "seed": seed}


def _file(principal, file_id, param):
    """The tenant's stored file (a URL is not a file here); another tenant's is a 404."""
    if file_id is None:
        return None
    if is_dataset_url(file_id):
        raise InvalidRequest(f"{param} is a file id from POST /v1/files.", param=param, code="invalid_file")
    try:
        return access.access_dataset(tenant=principal.tenant, dataset_id=file_id)
    except Http404:
        raise Http404(f"No file '{file_id}' in this tenant ({param}). GET /v1/files lists yours.") from None


def _model(principal, name, suffix, job_id):
    """(base model, adapter name, whether the adapter must be new) for ``model``."""
    try:
        base_model = access_base_model(name=name)
    except Http404:
        pass
    else:
        return base_model, f"ft-{suffix + '-' if suffix else ''}{job_id[-12:]}", True
    try:
        version = access_adapter_version(tenant=principal.tenant, ref=name)
    except Http404 as exc:
        raise model_not_found(name, str(exc)) from None
    adapter = version.adapter
    if adapter.current_version_id != version.pk:
        raise InvalidRequest(f"Training continues from the current version of '{adapter.name}', "
                             f"v{adapter.current_version.number}; name it, or '{adapter.name}'.", param="model",
                             code="not_current_version")
    if suffix:
        raise InvalidRequest(f"suffix names a new adapter; training '{adapter.name}' makes its next version. Leave "
                             "suffix out, or fine-tune a base model.", param="suffix", code="suffix_not_allowed")
    return adapter.base_model, adapter.name, False


def fine_tuning_create(*, principal, values):
    """A training job from OpenAI's create request (training.jobs.training_create writes it, or nothing)."""
    principal.require("training.write")
    hyperparameters = values.get("hyperparameters")
    method = values.get("method")
    if method is not None and "hyperparameters" in method.get("supervised", {}):
        if hyperparameters is not None:
            raise InvalidRequest("Give hyperparameters once: at the top or in method.supervised.",
                                 param="hyperparameters", code="invalid_hyperparameter")
        hyperparameters = method["supervised"]["hyperparameters"]
    seed = values.get("seed")
    hp = _hyperparameters(hyperparameters or {}, secrets.randbelow(2**31) if seed is None else seed)
    training = _file(principal, values["training_file"], "training_file")
    validation = _file(principal, values.get("validation_file"), "validation_file")
    job_id = new_job_id()
    base_model, adapter_name, new = _model(principal, values["model"], values.get("suffix"), job_id)
    return training_create(principal=principal, base_model=base_model, adapter_name=adapter_name,
                           dataset_ref=training.id, hyperparameters=hp,
                           validation_ref=validation.id if validation else None, job_id=job_id, new_adapter=new)


def job_object(job):
    """OpenAI's fine_tuning.job for ``job`` (annotated by ``_jobs``), with VAJRA's own figures under ``vajra``."""
    hp = job.hyperparameters
    openai_hp = {"n_epochs": hp.get("epochs"), "batch_size": hp.get("batch_size"),
                 "learning_rate_multiplier": round(hp.get("learning_rate", DEFAULT_LEARNING_RATE)
                                                   / DEFAULT_LEARNING_RATE, 12)}
    started_from = f"{job.adapter.name}@v{job.base_version.number}" if job.base_version_id else job.base_model.name
    finished = job.status == TrainingJob.SUCCEEDED and job.result_version_id
    trained_tokens, gradients = job.tokens_used or 0, job.gradients_used or 0
    return {
        "id": job.id, "object": "fine_tuning.job", "created_at": unix(job.created_at), "model": started_from,
        "fine_tuned_model": f"{job.adapter.name}@v{job.result_version.number}" if finished else None,
        "finished_at": unix(job.finished_at), "status": job.status, "organization_id": job.tenant.slug,
        "error": {"code": job.error_code, "message": job.error_message, "param": None} if job.error_code else None,
        "hyperparameters": openai_hp, "seed": hp.get("seed", 0), "result_files": [],
        "trained_tokens": trained_tokens if job.status in TrainingJob.TERMINAL else None,
        "training_file": job.dataset_id, "validation_file": job.validation_dataset_id, "estimated_finish": None,
        "integrations": [], "metadata": None,
        "method": {"type": "supervised", "supervised": {"hyperparameters": openai_hp}},
        "vajra": {"adapter": job.adapter.name, "base_model": job.base_model.name, "total_steps": job.total_steps,
                  "trained_steps": job.trained_steps, "last_loss": job.last_loss,
                  "last_eval_loss": job.last_eval_loss, "cancel_requested": job.cancel_requested_at is not None,
                  "usage": {"gradients": gradients, **money(gradient_cost_micro_usd(gradients, tenant=job.tenant_id))},
                  "hyperparameters": hp},
    }


def _jobs(request):
    return (access.tenant_training_jobs(tenant=request.auth.tenant).select_related("tenant")
            .annotate(tokens_used=Sum("steps__tokens"), gradients_used=Sum("steps__gradients")))


def _job(request, job_id):
    access.access_training_job(tenant=request.auth.tenant, job_id=job_id)  # 404 for another tenant's job
    return _jobs(request).get(pk=job_id)


def _cursor(request, pattern, what):
    raw = request.query_params.get("after")
    if raw in (None, ""):
        return None
    match = pattern.match(raw)
    if not match:
        raise InvalidRequest(f"after must be the id of a {what} from the previous page, got {raw!r}.", param="after",
                             code="invalid_cursor")
    return int(match[1])


PAGE_PARAMETERS = [OpenApiParameter("after", str, description="The id of the last item of the previous page."),
                   OpenApiParameter("limit", int, description="1 to 100 items (default 20).")]


def _page(items, limit, render):
    items = list(items[:limit + 1])
    return Response({"object": "list", "data": [render(i) for i in items[:limit]], "has_more": len(items) > limit})


class FineTuningJobListView(APIView):
    required_actions = {"GET": "training.read", "POST": "training.write"}

    @extend_schema(operation_id="v1_fine_tuning_jobs_create", request=FineTuningJobIn,
                   responses={200: FineTuningJobOut, **errors(402, 404, 409)})
    def post(self, request):
        data = FineTuningJobIn(data=request.data)
        data.is_valid(raise_exception=True)
        job = fine_tuning_create(principal=request.auth, values=data.validated_data)
        return Response(job_object(_job(request, job.id)))

    @extend_schema(operation_id="v1_fine_tuning_jobs_list", parameters=PAGE_PARAMETERS,
                   responses={200: FineTuningJobListOut, **errors(404)})  # 404: an ``after`` that is no job of yours
    def get(self, request):
        limit = page_param(request, "limit", 20, minimum=1, maximum=MAX_PAGE)
        jobs = _jobs(request).order_by("-created_at", "-id")
        after = request.query_params.get("after")
        if after:
            cursor = access.access_training_job(tenant=request.auth.tenant, job_id=after)
            jobs = jobs.filter(Q(created_at__lt=cursor.created_at) | Q(created_at=cursor.created_at, id__lt=cursor.id))
        return _page(jobs, limit, job_object)


class FineTuningJobDetailView(APIView):
    required_action = "training.read"

    @extend_schema(operation_id="v1_fine_tuning_jobs_retrieve", responses={200: FineTuningJobOut})
    def get(self, request, job_id):
        return Response(job_object(_job(request, job_id)))


class FineTuningJobCancelView(APIView):
    required_action = "training.write"

    @extend_schema(operation_id="v1_fine_tuning_jobs_cancel", request=None,
                   responses={200: FineTuningJobOut, **errors(409)})  # 409: it has ended
    def post(self, request, job_id):
        job = training_cancel(principal=request.auth, job_id=job_id)
        return Response(job_object(_job(request, job.id)))  # running: cancelled once the node stops it


def event_object(event):
    measured = event.loss is not None
    data = {}
    if measured:
        data = {"step": event.step, "train_loss": event.loss}
        if event.eval_loss is not None:
            data["valid_loss"] = event.eval_loss
    return {"id": f"ftevent-{event.id}", "object": "fine_tuning.job.event", "created_at": unix(event.created_at),
            "level": LEVELS.get(event.level, "info"), "message": event.message,
            "type": "metrics" if measured else "message", "data": data}


class FineTuningJobEventsView(APIView):
    required_action = "training.read"

    @extend_schema(operation_id="v1_fine_tuning_jobs_events", parameters=PAGE_PARAMETERS,
                   responses={200: EventListOut})
    def get(self, request, job_id):
        job = access.access_training_job(tenant=request.auth.tenant, job_id=job_id)
        limit = page_param(request, "limit", 20, minimum=1, maximum=MAX_PAGE)
        events = job.events.order_by("-id")
        after = _cursor(request, EVENT_ID, "event")
        if after is not None:
            events = events.filter(id__lt=after)
        return _page(events, limit, event_object)


class FineTuningJobCheckpointsView(APIView):
    required_action = "training.read"

    @extend_schema(operation_id="v1_fine_tuning_jobs_checkpoints", parameters=PAGE_PARAMETERS,
                   responses={200: CheckpointListOut})
    def get(self, request, job_id):
        job = access.access_training_job(tenant=request.auth.tenant, job_id=job_id)
        limit = page_param(request, "limit", 10, minimum=1, maximum=MAX_PAGE)
        checkpoints = job.checkpoints.order_by("-step", "-id")
        after = _cursor(request, CHECKPOINT_ID, "checkpoint")
        if after is not None:
            cursor = job.checkpoints.filter(pk=after).first()
            if cursor is None:
                raise InvalidRequest(f"Job {job.id} has no checkpoint ftckpt-{after}.", param="after",
                                     code="invalid_cursor")
            checkpoints = checkpoints.filter(step__lt=cursor.step)
        eval_losses = dict(job.steps.filter(eval_loss__isnull=False).values_list("step", "eval_loss"))

        def render(checkpoint):
            download = f"/v1/training/jobs/{job.id}/checkpoints/{checkpoint.step}/download"
            metrics = {"step": checkpoint.step, "train_loss": checkpoint.loss,
                       "valid_loss": eval_losses.get(checkpoint.step)}
            return {"id": f"ftckpt-{checkpoint.pk}", "object": "fine_tuning.job.checkpoint",
                    "created_at": unix(checkpoint.created_at), "fine_tuning_job_id": job.id,
                    "step_number": checkpoint.step, "metrics": metrics, "fine_tuned_model_checkpoint": download,
                    "vajra": {"download": download}}

        return _page(checkpoints, limit, render)
