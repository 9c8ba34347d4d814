from django.urls import path

from . import v1

urlpatterns = [
    path("models/<str:model_id>/infer", v1.infer, name="v1-infer"),
    path("models/<str:model_id>/versions", v1.versions, name="v1-versions"),
    path("requests/<str:request_id>", v1.request_detail, name="v1-request"),
    path("requests/<str:request_id>/events", v1.request_events, name="v1-request-events"),
    path("requests/<str:request_id>/cancel", v1.request_cancel, name="v1-request-cancel"),
]
