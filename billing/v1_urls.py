"""/v1/usage/... : the seed's usage API (VAJRA A.1), billing/api.py."""

from django.urls import path

from . import api

urlpatterns = [
    path("usage/<str:tenant_id>/metrics", api.UsageMetricsView.as_view(), name="v1-usage-metrics"),
]
