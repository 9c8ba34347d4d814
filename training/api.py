"""The training API (VAJRA paper A.1), with API keys (scope ``train``) or the dashboard's session:

    POST /v1/models/{model_id}/train           {"adapter_id", "dataset", "validation_dataset"?, "hyperparameters"}
                                               -> 201 job
    POST /v1/models/{model_id}/train/estimate  the same body -> 200 estimate, nothing written
    GET  /v1/training/jobs                     newest first; ?limit=, ?after=<job id>
    GET  /v1/training/jobs/{id}
    GET  /v1/training/jobs/{id}/events         oldest first; ?after=<event id> to follow a job
    GET  /v1/training/jobs/{id}/checkpoints
    GET  /v1/training/jobs/{id}/checkpoints/{step}/download   the checkpoint's PEFT folder as a zip
    POST /v1/training/jobs/{id}/cancel
    POST /api/v1/adapters/{name}/rollback      {"version": N}

DRF views (no stream to hold, unlike /v1/.../infer): the same auth, rate limits, error shape and schema as
/api/v1. ``dataset`` is a dataset id (ds_...) or, where an operator configured it for the tenant, an s3:// or
file:// URL (VAJRA_TENANT_DATASET_URL_PREFIXES).
"""

from django.db.models import Sum
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from adapters.access import access_base_model
from adapters.api import NAME_RE, AdapterOut
from adapters.downloads import folder_zip_response
from billing.plans import plain, training_price
from vajra.errors import InvalidRequest
from vajra.schema import errors
from vajra.serializers import StrictSerializer

from . import access, hot_swap
from .jobs import (
    checkpoint_key,
    gradient_cost_micro_usd,
    micro_usd_text,
    storage_uri,
    training_cancel,
    training_create,
    training_quote,
)
from .v1_schema import CheckpointsOut, EstimateOut, EventsOut, JobListOut, JobOut

MAX_PAGE = 100
MAX_EVENTS_PAGE = 1000


class TrainIn(StrictSerializer):
    adapter_id = serializers.RegexField(NAME_RE, max_length=64, error_messages={
        "invalid": "Name the adapter to train (1-64 lowercase letters, digits, '.', '_' and '-'): an existing one "
                   "continues from its current version, a new name creates it."})
    dataset = serializers.CharField(max_length=1000)
    validation_dataset = serializers.CharField(max_length=40, required=False, allow_null=True, help_text=(
        "A dataset id whose loss is measured after each epoch (eval_loss)."))
    hyperparameters = serializers.DictField()


def _validated(request, model_id):
    data = TrainIn(data=request.data)
    data.is_valid(raise_exception=True)
    values = data.validated_data
    return {"base_model": access_base_model(name=model_id), "adapter_name": values["adapter_id"],
            "dataset_ref": values["dataset"], "hyperparameters": values["hyperparameters"],
            "validation_ref": values.get("validation_dataset")}


def money(micro_usd):
    return {"cost_micro_usd": micro_usd, "cost_usd": micro_usd_text(micro_usd)}


def training_prices(tenant):
    """The tenant's plan's training prices (billing.plans.training_price reads the same plan): C_gradient exact in
    dollars per million gradients (a fraction of a micro-dollar), P_GPU in micro-dollars an hour."""
    plan = training_price(tenant=tenant, gradients=0)[1]
    return {"c_gradient_usd": plain(plan.gradient_price_per_million),
            "p_gpu_micro_usd_per_hour": int((plan.gpu_price_per_hour * 10**6).to_integral_value()),
            "plan": plan.name}


def job_json(job):
    gradients = getattr(job, "gradients_used", None)
    if gradients is None:
        gradients = job.steps.aggregate(n=Sum("gradients"))["n"]
    return {
        "id": job.id, "object": "training.job", "model": job.base_model.name, "adapter": job.adapter.name,
        "base_version": job.base_version.number if job.base_version_id else None,
        "result_version": job.result_version.number if job.result_version_id else None,
        "dataset": job.dataset_id, "validation_dataset": job.validation_dataset_id, "status": job.status,
        "hyperparameters": job.hyperparameters,
        "node": job.node.name if job.node_id else None,
        "total_steps": job.total_steps, "trained_steps": job.trained_steps, "trainable_params": job.trainable_params,
        "last_loss": job.last_loss, "last_eval_loss": job.last_eval_loss,
        "estimate": {"gradients": job.estimated_gradients, **money(job.estimated_cost_micro_usd),
                     "total_steps": job.total_steps, "trainable_params": job.trainable_params},
        "usage": {"steps": job.trained_steps, "gradients": gradients or 0,
                  **money(gradient_cost_micro_usd(gradients or 0, tenant=job.tenant_id))},
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "cancel_requested_at": job.cancel_requested_at.isoformat() if job.cancel_requested_at else None,
    }


def _jobs(request):
    return access.tenant_training_jobs(tenant=request.auth.tenant).select_related("node").annotate(
        gradients_used=Sum("steps__gradients"))


def _job(request, job_id):
    access.access_training_job(tenant=request.auth.tenant, job_id=job_id)  # 404 for another tenant's job
    return _jobs(request).get(pk=job_id)


def _int_param(request, name, default, *, minimum, maximum=None):
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer, got {raw!r}.", param=name, code="invalid") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise InvalidRequest(f"{name} must be between {minimum} and {maximum}.", param=name, code="invalid")
    return value


class TrainView(APIView):
    required_action = "training.write"

    @extend_schema(request=TrainIn, responses={201: JobOut, **errors(402, 409)})
    def post(self, request, model_id):
        job = training_create(principal=request.auth, **_validated(request, model_id))
        return Response(job_json(_job(request, job.id)), status=status.HTTP_201_CREATED)


class TrainEstimateView(APIView):
    required_action = "training.read"

    @extend_schema(request=TrainIn, responses={200: EstimateOut})
    def post(self, request, model_id):
        estimate = training_quote(principal=request.auth, **_validated(request, model_id))
        return Response({"object": "training.estimate", "model": model_id, **estimate.to_json(),
                         "prices": training_prices(request.auth.tenant)})


class JobListView(APIView):
    required_action = "training.read"

    @extend_schema(operation_id="v1_training_jobs_list", responses={200: JobListOut}, parameters=[
        OpenApiParameter("limit", int, description=f"1 to {MAX_PAGE}; 20 by default."),
        OpenApiParameter("after", str, description="A job id: the jobs created before it (the next page).")])
    def get(self, request):
        limit = _int_param(request, "limit", 20, minimum=1, maximum=MAX_PAGE)
        jobs = _jobs(request)
        after = request.query_params.get("after")
        if after:
            cursor = access.access_training_job(tenant=request.auth.tenant, job_id=after)
            jobs = jobs.filter(created_at__lt=cursor.created_at)
        page = list(jobs[:limit + 1])
        return Response({"object": "list", "data": [job_json(j) for j in page[:limit]], "has_more": len(page) > limit})


class JobDetailView(APIView):
    required_action = "training.read"

    @extend_schema(responses={200: JobOut})
    def get(self, request, job_id):
        return Response(job_json(_job(request, job_id)))


class JobEventsView(APIView):
    required_action = "training.read"

    @extend_schema(responses={200: EventsOut}, parameters=[
        OpenApiParameter("after", int, description="An event id: the events after it; 0 by default."),
        OpenApiParameter("limit", int, description=f"1 to {MAX_EVENTS_PAGE}; 100 by default.")])
    def get(self, request, job_id):
        job = access.access_training_job(tenant=request.auth.tenant, job_id=job_id)
        after = _int_param(request, "after", 0, minimum=0)
        limit = _int_param(request, "limit", 100, minimum=1, maximum=MAX_EVENTS_PAGE)
        page = list(job.events.filter(id__gt=after).order_by("id")[:limit + 1])
        data = [{"id": e.id, "object": "training.event", "created_at": e.created_at.isoformat(), "level": e.level,
                 "message": e.message, "step": e.step, "loss": e.loss, "eval_loss": e.eval_loss}
                for e in page[:limit]]
        return Response({"object": "list", "job": job.id, "status": job.status, "data": data,
                         "has_more": len(page) > limit})


class JobCheckpointsView(APIView):
    required_action = "training.read"

    @extend_schema(responses={200: CheckpointsOut})
    def get(self, request, job_id):
        job = access.access_training_job(tenant=request.auth.tenant, job_id=job_id)
        # Where a checkpoint lies is the platform's business: the tenant sees its step and loss.
        data = [{"object": "training.checkpoint", "step": c.step, "loss": c.loss,
                 "created_at": c.created_at.isoformat()} for c in job.checkpoints.order_by("step")]
        return Response({"object": "list", "job": job.id, "data": data})


class JobCheckpointDownloadView(APIView):
    required_action = "training.read"

    @extend_schema(responses={(200, "application/zip"): OpenApiResponse(
        OpenApiTypes.BINARY, description="The checkpoint's LoRA weights as a PEFT folder in a zip (adapter_config.json "
                                         "and adapter_model.safetensors), loadable by PeftModel.from_pretrained.")})
    def get(self, request, job_id, step):
        job = access.access_training_job(tenant=request.auth.tenant, job_id=job_id)
        checkpoint = job.checkpoints.filter(step=step).first() if step < 2 ** 31 else None
        key = checkpoint_key(job, step)
        if checkpoint is None or checkpoint.uri.rstrip("/") != storage_uri(key):  # written elsewhere: not ours to serve
            raise Http404(f"Training job '{job.id}' has no checkpoint at step {step}.")
        return folder_zip_response(key, f"{job.adapter.name}-{job.id}-step-{step}.zip",
                                   f"The files of the checkpoint at step {step} are no longer in storage.")


class JobCancelView(APIView):
    required_action = "training.write"

    @extend_schema(request=None, responses={200: JobOut, 202: OpenApiResponse(JobOut, description=(
        "Cancelling: the node running it stops it.")), **errors(409)})
    def post(self, request, job_id):
        job = training_cancel(principal=request.auth, job_id=job_id)
        code = status.HTTP_200_OK if job.status == job.CANCELLED else status.HTTP_202_ACCEPTED  # 202: node stops it
        return Response(job_json(_job(request, job.id)), status=code)


class AdapterRollbackView(APIView):
    required_action = "adapters.write"

    class RollbackIn(StrictSerializer):
        version = serializers.IntegerField(min_value=1, max_value=2 ** 31 - 1)

    @extend_schema(request=RollbackIn, responses={200: AdapterOut, **errors(409)})
    def post(self, request, name):
        data = self.RollbackIn(data=request.data)
        data.is_valid(raise_exception=True)
        adapter = hot_swap.adapter_rollback(principal=request.auth, adapter_name=name,
                                            version_number=data.validated_data["version"])
        return Response(AdapterOut(adapter).data)
