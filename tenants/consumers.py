"""Live events of one tenant (keys, members, invites): ws/v1/tenants/<slug>/events/.

A socket hears only the event types its principal could read over REST (tenants/events.py); the welcome lists
them. Its principal follows changes made while it is open: a member's new role, a key's narrowed scopes; a revoked
key, a removed member or a suspended tenant closes it.
"""

from django.http import Http404

from .events import event_visible, tenant_group, visible_events
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
                              "scopes": principal.scopes, "events": visible_events(principal)})

    async def receive_json(self, content, **kwargs):
        if content.get("type") == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self.refuse(4400, "unknown_message", "This socket accepts only {\"type\": \"ping\"}.")

    async def tenant_event(self, message):
        if self.closed:
            return
        event, data = message["event"], message["data"]
        withdrawn = access_withdrawn(self.principal, event, data)
        if withdrawn:
            await self.refuse(*withdrawn)
            return
        await self._follow_own_change(event, data)
        if not self.closed and event_visible(self.principal, event):
            await self.send_json({"type": "event", "event": event, "data": data})

    async def _follow_own_change(self, event, data):
        """Keeps the socket's principal what REST would resolve now (a member's new role, a key's narrowed
        scopes), so that what it hears next is what it may read next."""
        principal = self.principal
        own_key = event == "api_key.scopes" and principal.is_key and data["prefix"] == principal.api_key.prefix
        if own_key or (event == "member.role" and not principal.is_key):
            await self.recheck()

    async def disconnect(self, code):
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)
