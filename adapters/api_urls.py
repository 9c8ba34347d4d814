from django.urls import path

from . import api, datasets_api, training_api

urlpatterns = [
    path("base-models", api.BaseModelListView.as_view(), name="api-v1-base-models"),
    path("adapters", api.AdapterListView.as_view(), name="api-v1-adapters"),
    path("adapters/<str:name>", api.AdapterDetailView.as_view(), name="api-v1-adapter"),
    path("adapters/<str:name>/versions", api.AdapterVersionListView.as_view(), name="api-v1-adapter-versions"),
    path("adapters/<str:name>/rollback", training_api.AdapterRollbackView.as_view(), name="api-v1-adapter-rollback"),
    path("datasets", datasets_api.DatasetListView.as_view(), name="api-v1-datasets"),
    path("datasets/<str:dataset_id>", datasets_api.DatasetDetailView.as_view(), name="api-v1-dataset"),
]
