from django.urls import path

from . import views

urlpatterns = [
    path("playground/", views.playground, name="playground"),
    path("usage/", views.usage, name="usage"),
    path("usage/export.csv", views.usage_export, name="usage-export"),
]
