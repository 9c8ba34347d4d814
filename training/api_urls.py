from django.urls import path

from . import api, datasets_api

urlpatterns = [
    path("adapters/<str:name>/rollback", api.AdapterRollbackView.as_view(), name="api-v1-adapter-rollback"),
    path("datasets", datasets_api.DatasetListView.as_view(), name="api-v1-datasets"),
    path("datasets/<str:dataset_id>", datasets_api.DatasetDetailView.as_view(), name="api-v1-dataset"),
]
