from django.urls import path

from . import views

urlpatterns = [
    path("adapters/", views.adapters, name="adapters"),
    path("playground/", views.playground, name="playground"),
    path("training/", views.training, name="training"),
    path("nodes/", views.nodes, name="nodes"),
]
