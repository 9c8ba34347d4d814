from django.urls import path

from . import views

urlpatterns = [
    path("adapters/", views.adapters, name="adapters"),
    path("adapter-imports/", views.adapter_import, name="adapter-import"),
    path("adapters/<str:name>/", views.adapter_detail, name="adapter-detail"),
    path("adapters/<str:name>/versions/<id:number>/download/", views.adapter_version_download,
         name="adapter-version-download"),
    path("adapters/<str:name>/tier/", views.adapter_tier, name="adapter-tier"),
    path("adapters/<str:name>/delete/", views.adapter_remove, name="adapter-delete"),
]
