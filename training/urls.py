from django.urls import path

from . import views

urlpatterns = [
    path("adapters/<str:name>/rollback/", views.adapter_rollback, name="adapter-rollback"),
    path("training/", views.training, name="training"),
    path("training/jobs/", views.training_start, name="training-start"),
    path("training/jobs/<str:job_id>/", views.training_job, name="training-job"),
    path("training/jobs/<str:job_id>/cancel/", views.training_job_cancel, name="training-job-cancel"),
]
