from django.urls import path

from . import api, imports_api, model_import_api

urlpatterns = [
    path("base-models/imports", model_import_api.BaseModelImportListView.as_view(), name="api-v1-base-model-imports"),
    path("base-models/imports/<int:import_id>", model_import_api.BaseModelImportDetailView.as_view(),
         name="api-v1-base-model-import"),
    path("adapters", api.AdapterListView.as_view(), name="api-v1-adapters"),
    path("adapter-imports", imports_api.ImportListView.as_view(), name="api-v1-adapter-imports"),
    path("adapter-imports/<str:import_id>", imports_api.ImportDetailView.as_view(), name="api-v1-adapter-import"),
    path("adapters/<str:name>", api.AdapterDetailView.as_view(), name="api-v1-adapter"),
    path("adapters/<str:name>/versions", api.AdapterVersionListView.as_view(), name="api-v1-adapter-versions"),
    path("adapters/<str:name>/versions/<id:number>/download", api.AdapterVersionDownloadView.as_view(),
         name="api-v1-adapter-version-download"),
]
