"""/api/v1/billing/... routes (billing/api.py)."""

from django.urls import path

from . import api

urlpatterns = [
    path("billing/metering", api.MeteringView.as_view(), name="api-v1-billing-metering"),
]
