"""Dashboard pages for fine-tuning: the Training page (datasets, the start form with its estimate, the jobs) and a
job's page (progress, loss chart and events, live over ws/v1/training/<job_id>/ through vajra/training.js; cancel).

The forms call the same services as the train API (training/jobs.py), so a refusal reads the same here and
there, and writes nothing.
"""


from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST
from rest_framework.exceptions import APIException

from adapters.access import access_adapter, access_base_model, tenant_adapters
from adapters.storage_quota import storage_used
from adapters.views import detail_page, require_adapters_view
from billing.plans import plain, plan_limits, training_price
from tenants.forms import add_service_error
from tenants.views import tenant_member_required

from . import access, hot_swap
from .api import job_json
from .consumers import RECENT_EVENTS, job_snapshot
from .datasets import dataset_upload
from .forms import DatasetUploadForm, TrainingJobForm
from .jobs import micro_usd_text, reference_million_tokens, training_cancel, training_create, training_quote
from .models import TrainingJob

JOBS_ON_PAGE = 25


def _forbidden(principal, what):
    return PermissionDenied(f"Your role '{principal.role}' in {principal.tenant.name} does not include {what}; ask "
                            "an owner or admin.")


def _job_form(principal, data=None):
    tenant = principal.tenant
    datasets = access.tenant_datasets(tenant=tenant) if principal.can("datasets.read") else []
    return TrainingJobForm(data, datasets=datasets,
                           adapter_names=[a.name for a in tenant_adapters(tenant=tenant)])


def _plan_prices(tenant):
    plan = training_price(tenant=tenant, gradients=0)[1]
    reference = reference_million_tokens(tenant)
    return {"c_gradient_usd": plain(plan.gradient_price_per_million), "p_gpu_usd": plan.gpu_price_per_hour,
            "reference_price": reference and {"base_model": reference[0], "rank": reference[1],
                                              "targets": ", ".join(reference[2]),
                                              "cost_usd": micro_usd_text(reference[3])}}


def _training_page(request, *, form=None, job_form=None, report=None, estimate=None, status=200):
    principal = request.principal
    can_read_datasets, can_read_training = principal.can("datasets.read"), principal.can("training.read")
    context = {
        "form": form or DatasetUploadForm(), "report": report, "can_read_datasets": can_read_datasets,
        "can_write_datasets": principal.can("datasets.write"),
        "datasets": access.tenant_datasets(tenant=principal.tenant) if can_read_datasets else [],
        "limits": plan_limits(principal.tenant), "storage_used": storage_used(principal.tenant),
        "can_read_training": can_read_training, "can_write_training": principal.can("training.write"),
        "job_form": job_form or _job_form(principal), "estimate": estimate,
        "jobs": access.tenant_training_jobs(tenant=principal.tenant)[:JOBS_ON_PAGE] if can_read_training else [],
        "jobs_shown": JOBS_ON_PAGE,
        **_plan_prices(principal.tenant),
    }
    return render(request, "inference/training.html", context, status=status)


@tenant_member_required
def training(request):
    """Training: the tenant's datasets (POST uploads one; a refusal lists every bad line), the start form, jobs."""
    principal = request.principal
    if request.method != "POST":
        return _training_page(request)
    if not principal.can("datasets.write"):
        raise _forbidden(principal, "uploading datasets")
    form = DatasetUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _training_page(request, form=form, status=400)
    data = form.cleaned_data
    try:
        base_model = access_base_model(name=data["base_model"]) if data.get("base_model") else None
        dataset = dataset_upload(principal=principal, file=data["file"], name=data["name"] or None,
                                 base_model=base_model)
    except APIException as exc:
        report = getattr(exc, "extra", {}).get("lines")
        if report:  # the line-by-line report is shown as a table; the form only says that the file was refused
            form.add_error("file", f"The file has {len(report) + exc.extra['lines_omitted']} problem(s), listed "
                                   "below. Fix them and upload it again.")
        else:
            add_service_error(form, exc)
        return _training_page(request, form=form, report=exc.extra if report else None, status=exc.status_code)
    messages.success(request, f"Uploaded {dataset.name}: {dataset.records} {dataset.format} record"
                              f"{'s' if dataset.records != 1 else ''}, {'' if dataset.tokens_exact else 'at most '}"
                              f"{dataset.tokens} tokens.")
    return redirect("training")


def _keeps_shape(tenant, adapter_name):
    """An adapter with a version trains on in its own shape, so the form's rank, alpha and targets stay out."""
    try:
        return access_adapter(tenant=tenant, name=adapter_name).current_version_id is not None
    except Http404:
        return False


@require_POST
@tenant_member_required
def training_start(request):
    """The start form: ``action=estimate`` shows what the job would compute and cost (nothing written);
    ``action=start`` creates the job, as POST /v1/models/{model}/train does, and opens its page."""
    principal = request.principal
    start = request.POST.get("action") != "estimate"
    if not principal.can("training.write" if start else "training.read"):
        raise _forbidden(principal, "fine-tuning")
    form = _job_form(principal, request.POST)
    if not form.is_valid():
        return _training_page(request, job_form=form, status=400)
    data = form.cleaned_data
    request_args = {
        "base_model": access_base_model(name=data["base_model"]), "adapter_name": data["adapter_id"],
        "dataset_ref": data["dataset"], "validation_ref": data.get("validation_dataset") or None,
        "hyperparameters": form.hyperparameters(keep_shape=_keeps_shape(principal.tenant, data["adapter_id"])),
    }
    try:
        if not start:
            estimate = training_quote(principal=principal, **request_args)
            return _training_page(request, job_form=form, estimate={
                **estimate.to_json(), "adapter": data["adapter_id"]})
        job = training_create(principal=principal, **request_args)
    except APIException as exc:
        form.add_service_error(exc)
        return _training_page(request, job_form=form, status=exc.status_code)
    messages.success(request, f"Started {job.id} on {job.adapter.name}: {job.total_steps} steps, about "
                              f"${micro_usd_text(job.estimated_cost_micro_usd)}.")
    # Its own fragment: a redirect would otherwise keep the form's #start, which the job page does not have.
    return redirect(reverse("training-job", args=[job.id]) + "#job")


def _eta_s(job):
    """Remaining steps at the pace so far; the page's websocket replaces it with the node's own estimate."""
    if job.status != TrainingJob.RUNNING or not job.started_at or not job.trained_steps:
        return None
    elapsed = (timezone.now() - job.started_at).total_seconds()
    return max(0, round(elapsed / job.trained_steps * max(0, job.total_steps - job.trained_steps)))


def loss_chart(losses, total_steps, eval_losses=()):
    """The loss chart's JSON for vajra/charts.js, [[step, loss], ...] -> a line over steps 0..total_steps, and the
    eval loss (dashed) at the steps that measured one; the page's websocket appends the steps that follow
    (training.js)."""
    series = [{"label": "Training loss", "values": [loss for _, loss in losses]}]
    measured = dict(eval_losses)
    if measured:
        series.append({"label": "Eval loss", "dash": True, "values": [measured.get(step) for step, _ in losses]})
    return {"kind": "lines", "x": [step for step, _ in losses], "x_max": max(total_steps, 1), "x_label": "Step",
            "y_label": "Loss", "y_zero": False, "y_decimals": 4, "series": series}


def _job_page(request, job_id, *, status=200):
    principal = request.principal
    if not principal.can("training.read"):
        raise _forbidden(principal, "fine-tuning")
    job = access.access_training_job(tenant=principal.tenant, job_id=job_id)
    job = access.tenant_training_jobs(tenant=principal.tenant).select_related("node").get(pk=job.pk)
    snapshot = job_snapshot(job)
    measured = dict(snapshot["eval_losses"])
    context = {
        "job": job, "info": job_json(job), "snapshot": snapshot, "hp": job.hyperparameters,
        "percent": round(100 * job.trained_steps / job.total_steps) if job.total_steps else 0,
        "eta_s": _eta_s(job), "chart": loss_chart(snapshot["losses"], job.total_steps, snapshot["eval_losses"]),
        "losses": snapshot["losses"], "eval_losses": snapshot["eval_losses"],
        "figures": [(step, loss, measured.get(step)) for step, loss in snapshot["losses"]],
        "events": list(job.events.order_by("-id")[:RECENT_EVENTS])[::-1], "recent_events": RECENT_EVENTS,
        "active": job.status in TrainingJob.ACTIVE, "can_write": principal.can("training.write"),
    }
    return render(request, "inference/training_job.html", context, status=status)


@tenant_member_required
def training_job(request, job_id):
    return _job_page(request, job_id)


@require_POST
@tenant_member_required
def training_job_cancel(request, job_id):
    principal = request.principal
    if not principal.can("training.read"):
        raise _forbidden(principal, "fine-tuning")
    job = access.access_training_job(tenant=principal.tenant, job_id=job_id)  # another tenant's job: 404
    if not principal.can("training.write"):
        raise _forbidden(principal, "cancelling jobs")
    try:
        job = training_cancel(principal=principal, job_id=job.id)
    except APIException as exc:  # already finished
        messages.error(request, str(exc.detail))
        return _job_page(request, job_id, status=exc.status_code)
    if job.status == TrainingJob.CANCELLED:
        messages.success(request, f"Cancelled {job.id} before it started; nothing was billed.")
    else:
        messages.success(request, f"Cancel requested: the node stops {job.id} at its next step. Steps already "
                                  "trained are billed.")
    return redirect("training-job", job_id=job.id)


def version_jobs(adapter, versions):
    """The adapter page's link from each trained version to the job that made it (``version.training_job_id``)."""
    jobs = dict(access.tenant_training_jobs(tenant=adapter.tenant_id).filter(
        result_version__in=versions).values_list("result_version_id", "id"))
    for version in versions:
        version.training_job_id = jobs.get(version.pk)
    return {}


@require_POST
@tenant_member_required
def adapter_rollback(request, name):
    """Makes an earlier version current again (the same swap as a finished training job)."""
    principal = request.principal
    require_adapters_view(principal)
    access_adapter(tenant=principal.tenant, name=name)  # another tenant's adapter: 404 before anything
    try:
        number = int(request.POST.get("version", ""))
        if not 0 < number < 2 ** 31:  # past the database's integer: no such version
            raise ValueError(number)
        adapter = hot_swap.adapter_rollback(principal=principal, adapter_name=name, version_number=number)
    except ValueError:
        messages.error(request, "Choose the version to make current.")
        return detail_page(request, name, status=400)
    except APIException as exc:  # already current, or not ready
        messages.error(request, str(exc.detail))
        return detail_page(request, name, status=exc.status_code)
    messages.success(request, f"{adapter.name} v{number} is current again: new requests use it, and requests "
                              "already running finish on the version they started with.")
    return redirect("adapter-detail", name=adapter.name)
