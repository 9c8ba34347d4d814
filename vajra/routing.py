from django.urls import path, re_path

from serving.consumers import PlaygroundConsumer
from tenants.consumers import TenantEventsConsumer
from tenants.ws import CLOSE_NOT_FOUND, PROTOCOL, TenantConsumer
from training.consumers import TrainingJobConsumer


class UnknownRouteConsumer(TenantConsumer):
    """Any other websocket path: refused with 4404 and a reason (Channels' router would raise, failing the
    handshake with a server error)."""

    async def connect(self):
        await self.accept(subprotocol=PROTOCOL if PROTOCOL in self.scope.get("subprotocols", []) else None)
        await self.refuse(CLOSE_NOT_FOUND, "unknown_route", "No websocket route here; see the README for the "
                                                            "events, playground and training sockets.")


websocket_urlpatterns = [
    path("ws/v1/tenants/<slug:tenant_slug>/events/", TenantEventsConsumer.as_asgi()),
    path("ws/v1/playground/", PlaygroundConsumer.as_asgi()),
    # job ids are ftjob_<hex>: a slug, so an id holding NUL or other bytes PostgreSQL refuses never reaches a lookup
    path("ws/v1/training/<slug:job_id>/", TrainingJobConsumer.as_asgi()),
    re_path(r"", UnknownRouteConsumer.as_asgi()),
]
