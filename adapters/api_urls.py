from django.urls import path

from . import api

urlpatterns = [
    path("base-models", api.BaseModelListView.as_view(), name="api-v1-base-models"),
    path("adapters", api.AdapterListView.as_view(), name="api-v1-adapters"),
    path("adapters/<str:name>", api.AdapterDetailView.as_view(), name="api-v1-adapter"),
    path("adapters/<str:name>/versions", api.AdapterVersionListView.as_view(), name="api-v1-adapter-versions"),
    path("adapters/<str:name>/versions/<id:number>/download", api.AdapterVersionDownloadView.as_view(),
         name="api-v1-adapter-version-download"),
]
