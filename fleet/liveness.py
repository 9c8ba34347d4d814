"""Which nodes are up: those whose last heartbeat is within the allowed number of missed beats
(``VAJRA_NODE_DOWN_AFTER_MISSED`` x ``VAJRA_HEARTBEAT_SECONDS``). Heartbeats (fleet/heartbeats.py) mark the others
down; placement and failover send work to these alone."""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from .models import Node


def node_down_cutoff():
    return timezone.now() - timedelta(
        seconds=settings.VAJRA_HEARTBEAT_SECONDS * settings.VAJRA_NODE_DOWN_AFTER_MISSED
    )


def nodes_up():
    return Node.objects.filter(status=Node.UP, last_heartbeat_at__gte=node_down_cutoff())
