"""Live tenant events (key created, member joined, ...) pushed to the tenant's websocket group.

Sent after commit, never inside a transaction; a Redis outage only costs the live update, never the
write that caused it.
"""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)


def tenant_group(tenant_id):
    return f"tenant.{tenant_id}"


def publish_tenant_event(tenant_id, event_type, data):
    def send():
        try:
            async_to_sync(get_channel_layer().group_send)(
                tenant_group(tenant_id), {"type": "tenant.event", "event": event_type, "data": data}
            )
        except Exception:  # the write already committed; a missed live update is not worth a 500
            log.warning("could not publish %s for tenant %s", event_type, tenant_id, exc_info=True)

    transaction.on_commit(send)
