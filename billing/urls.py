from django.urls import path

from . import views

urlpatterns = [
    path("usage/", views.usage, name="usage"),
    path("billing/", views.billing, name="billing"),
]
