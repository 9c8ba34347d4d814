from django.urls import path

from inference.consumers import PlaygroundConsumer
from inference.training_ws import TrainingJobConsumer
from tenants.consumers import TenantEventsConsumer

websocket_urlpatterns = [
    path("ws/v1/tenants/<slug:tenant_slug>/events/", TenantEventsConsumer.as_asgi()),
    path("ws/v1/playground/", PlaygroundConsumer.as_asgi()),
    path("ws/v1/training/<str:job_id>/", TrainingJobConsumer.as_asgi()),
]
