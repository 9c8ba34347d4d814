from django.urls import path

from . import training_views, views

urlpatterns = [
    path("adapters/", views.adapters, name="adapters"),
    path("adapters/<str:name>/", views.adapter_detail, name="adapter-detail"),
    path("adapters/<str:name>/tier/", views.adapter_tier, name="adapter-tier"),
    path("adapters/<str:name>/rollback/", views.adapter_rollback, name="adapter-rollback"),
    path("adapters/<str:name>/delete/", views.adapter_remove, name="adapter-delete"),
    path("playground/", views.playground, name="playground"),
    path("training/", training_views.training, name="training"),
    path("training/jobs/", training_views.training_start, name="training-start"),
    path("training/jobs/<str:job_id>/", training_views.training_job, name="training-job"),
    path("training/jobs/<str:job_id>/cancel/", training_views.training_job_cancel, name="training-job-cancel"),
    path("nodes/", views.nodes, name="nodes"),
]
