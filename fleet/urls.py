from django.urls import path

from . import views

urlpatterns = [
    path("nodes/", views.nodes, name="nodes"),
    path("base-models/", views.base_models, name="base-models"),
]
