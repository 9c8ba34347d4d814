"""Live tenant events (key created, member joined, ...) pushed to the tenant's websocket group.

Sent after commit, never inside a transaction; a Redis outage only costs the live update, never the
write that caused it.

Each event type names the action whose REST read shows the same thing; the events socket passes an event on only
to a principal allowed that action (``Principal.can``, the check the REST view makes), so a socket never
learns what its credentials could not read over REST.
"""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)

ANY_PRINCIPAL = None  # readable by whoever holds the tenant's credentials (GET /api/v1/me shows the tenant)

EVENT_READ_ACTIONS = {
    "tenant.status": ANY_PRINCIPAL,  # GET /api/v1/me
    "invite.created": "members.view",  # GET /api/v1/invites
    "member.joined": "members.view",  # GET /api/v1/members
    "member.role": "members.view",
    "member.removed": "members.view",
    "api_key.created": "keys.view",  # GET /api/v1/keys
    "api_key.scopes": "keys.view",
    "api_key.revoked": "keys.view",
}


def event_visible(principal, event):
    action = EVENT_READ_ACTIONS[event]
    return action is ANY_PRINCIPAL or principal.can(action)


def visible_events(principal):
    return sorted(event for event in EVENT_READ_ACTIONS if event_visible(principal, event))


def tenant_group(tenant_id):
    return f"tenant.{tenant_id}"


def publish_tenant_event(tenant_id, event_type, data):
    if event_type not in EVENT_READ_ACTIONS:  # every event says who may see it before it is ever sent
        raise ValueError(f"Unknown tenant event {event_type!r}.")

    def send():
        try:
            async_to_sync(get_channel_layer().group_send)(
                tenant_group(tenant_id), {"type": "tenant.event", "event": event_type, "data": data}
            )
        except Exception:  # the write already committed; a missed live update is not worth a 500
            log.warning("could not publish %s for tenant %s", event_type, tenant_id, exc_info=True)

    transaction.on_commit(send)
