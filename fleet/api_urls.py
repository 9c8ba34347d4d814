from django.urls import path

from . import api

urlpatterns = [
    path("base-models", api.BaseModelListView.as_view(), name="api-v1-base-models"),
]
