"""/v1 training routes (inference/training_api.py); <str:> stops at "/", so none shadows another /v1 route."""

from django.urls import path

from . import training_api

urlpatterns = [
    path("models/<str:model_id>/train", training_api.TrainView.as_view(), name="v1-train"),
    path("models/<str:model_id>/train/estimate", training_api.TrainEstimateView.as_view(), name="v1-train-estimate"),
    path("training/jobs", training_api.JobListView.as_view(), name="v1-training-jobs"),
    path("training/jobs/<str:job_id>", training_api.JobDetailView.as_view(), name="v1-training-job"),
    path("training/jobs/<str:job_id>/events", training_api.JobEventsView.as_view(), name="v1-training-job-events"),
    path("training/jobs/<str:job_id>/checkpoints", training_api.JobCheckpointsView.as_view(),
         name="v1-training-job-checkpoints"),
    path("training/jobs/<str:job_id>/cancel", training_api.JobCancelView.as_view(), name="v1-training-job-cancel"),
]
