"""/v1 training routes (adapters/api.py); <str:> stops at "/", so none shadows another /v1 route."""

from django.urls import path

from . import api, openai_files, openai_jobs

urlpatterns = [
    path("models/<str:model_id>/train", api.TrainView.as_view(), name="v1-train"),
    path("models/<str:model_id>/train/estimate", api.TrainEstimateView.as_view(), name="v1-train-estimate"),
    path("training/jobs", api.JobListView.as_view(), name="v1-training-jobs"),
    path("training/jobs/<str:job_id>", api.JobDetailView.as_view(), name="v1-training-job"),
    path("training/jobs/<str:job_id>/events", api.JobEventsView.as_view(), name="v1-training-job-events"),
    path("training/jobs/<str:job_id>/checkpoints", api.JobCheckpointsView.as_view(),
         name="v1-training-job-checkpoints"),
    path("training/jobs/<str:job_id>/checkpoints/<id:step>/download", api.JobCheckpointDownloadView.as_view(),
         name="v1-training-job-checkpoint-download"),
    path("training/jobs/<str:job_id>/cancel", api.JobCancelView.as_view(), name="v1-training-job-cancel"),
    # OpenAI's files and fine-tuning APIs over the same datasets and jobs
    path("files", openai_files.FileListView.as_view(), name="v1-files"),
    path("files/<str:file_id>", openai_files.FileDetailView.as_view(), name="v1-file"),
    path("files/<str:file_id>/content", openai_files.FileContentView.as_view(), name="v1-file-content"),
    path("fine_tuning/jobs", openai_jobs.FineTuningJobListView.as_view(), name="v1-fine-tuning-jobs"),
    path("fine_tuning/jobs/<str:job_id>", openai_jobs.FineTuningJobDetailView.as_view(), name="v1-fine-tuning-job"),
    path("fine_tuning/jobs/<str:job_id>/cancel", openai_jobs.FineTuningJobCancelView.as_view(),
         name="v1-fine-tuning-job-cancel"),
    path("fine_tuning/jobs/<str:job_id>/events", openai_jobs.FineTuningJobEventsView.as_view(),
         name="v1-fine-tuning-job-events"),
    path("fine_tuning/jobs/<str:job_id>/checkpoints", openai_jobs.FineTuningJobCheckpointsView.as_view(),
         name="v1-fine-tuning-job-checkpoints"),
]
