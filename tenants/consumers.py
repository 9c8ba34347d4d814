"""Live events of one tenant (keys, members, invites): ws/v1/tenants/<slug>/events/."""

from django.http import Http404

from .events import tenant_group
from .models import Tenant
from .ws import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED, TenantConsumer


def access_withdrawn(principal, event, data):
    """(close code, code, message) when this event takes away the socket's own access, else None: a key
    revoked or a member removed must not go on hearing the tenant's events until they reconnect."""
    if event == "tenant.status" and data["status"] != Tenant.ACTIVE:
        return CLOSE_FORBIDDEN, "tenant_suspended", "This tenant was suspended; contact support."
    if event == "api_key.revoked" and principal.is_key and data["prefix"] == principal.api_key.prefix:
        return CLOSE_UNAUTHENTICATED, "api_key_revoked", "This API key was revoked."
    if event == "member.removed" and principal.user is not None and data["user"] == principal.user.email:
        if principal.is_key:  # removing a member revokes the keys they created
            return CLOSE_UNAUTHENTICATED, "api_key_revoked", "This API key was revoked: its creator left."
        return CLOSE_FORBIDDEN, "member_removed", "You are no longer a member of this tenant."
    return None


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
        if self.closed:
            return
        withdrawn = access_withdrawn(self.principal, message["event"], message["data"])
        if withdrawn:
            await self.refuse(*withdrawn)
            return
        await self.send_json({"type": "event", "event": message["event"], "data": message["data"]})

    async def disconnect(self, code):
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)
