from django.urls import path

from . import views

urlpatterns = [
    path("nodes/", views.nodes, name="nodes"),
]
