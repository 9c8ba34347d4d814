"""Live events of one tenant (keys, members, invites): ws/v1/tenants/<slug>/events/."""

from django.http import Http404

from .events import tenant_group
from .ws import TenantConsumer


class TenantEventsConsumer(TenantConsumer):
    async def authorized(self, principal):
        slug = self.scope["url_route"]["kwargs"]["tenant_slug"]
        if principal.tenant.slug != slug:  # an API key speaks for its own tenant only
            raise Http404(f"No tenant '{slug}' for these credentials.")
        self.group = tenant_group(principal.tenant.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.send_json({"type": "welcome", "tenant": slug, "role": principal.role,
                              "api_key": principal.api_key.prefix if principal.is_key else None,
                              "scopes": principal.scopes})

    async def receive_json(self, content, **kwargs):
        if content.get("type") == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self.refuse(4400, "unknown_message", "This socket accepts only {\"type\": \"ping\"}.")

    async def tenant_event(self, message):
        await self.send_json({"type": "event", "event": message["event"], "data": message["data"]})

    async def disconnect(self, code):
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)
