"""/v1 training routes (adapters/api.py); <str:> stops at "/", so none shadows another /v1 route."""

from django.urls import path

from . import api

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
]
