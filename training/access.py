"""The one way to reach a tenant's datasets and training jobs: another tenant's is a 404 that never says it exists."""

from django.http import Http404

from .models import Dataset, TrainingJob


def tenant_datasets(*, tenant):
    return Dataset.objects.filter(tenant=tenant, deleted_at__isnull=True).order_by("-created_at")


def access_dataset(*, tenant, dataset_id, lock=False):
    qs = Dataset.objects.filter(tenant=tenant, id=dataset_id, deleted_at__isnull=True)
    dataset = (qs.select_for_update() if lock else qs).first()
    if dataset is None:
        raise Http404(f"No dataset '{dataset_id}' in this tenant. GET /api/v1/datasets lists yours.")
    return dataset


def tenant_training_jobs(*, tenant):
    return (TrainingJob.objects.filter(tenant=tenant).select_related("adapter", "dataset", "base_model",
                                                                      "result_version", "base_version")
            .order_by("-created_at"))


def access_training_job(*, tenant, job_id, lock=False):
    qs = TrainingJob.objects.filter(tenant=tenant, id=job_id).select_related("adapter", "dataset", "base_model")
    job = (qs.select_for_update(of=("self",)) if lock else qs).first()
    if job is None:
        raise Http404(f"No training job '{job_id}' in this tenant.")
    return job
