"""Node bookkeeping from heartbeats."""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from gpu_runtime.contract import Heartbeat

from .models import BaseModel, Node


@transaction.atomic
def node_heartbeat(*, payload):
    """Upserts the node from its heartbeat; a node that was down comes back up."""
    beat = Heartbeat.from_json(payload)
    if beat.base_architecture:  # the catalog learns base models from the nodes that serve them
        BaseModel.objects.update_or_create(name=beat.base_model, defaults={
            "architecture": beat.base_architecture, "context_length": beat.context_length or 2048})
    node, _ = Node.objects.update_or_create(
        name=beat.node,
        defaults={
            "status": Node.UP,
            "base_model": beat.base_model,
            "device": beat.device,
            "state": beat.to_json(),
            "started_at": parse_datetime(beat.started_at),
            "last_heartbeat_at": timezone.now(),
        },
    )
    return node


def node_down_cutoff():
    return timezone.now() - timedelta(
        seconds=settings.VAJRA_HEARTBEAT_SECONDS * settings.VAJRA_NODE_DOWN_AFTER_MISSED
    )


def nodes_mark_down(*, limit=500):
    """Marks nodes silent for the allowed number of heartbeats as down (bounded batch)."""
    stale = list(Node.objects.filter(status=Node.UP, last_heartbeat_at__lt=node_down_cutoff())
                 .values_list("pk", flat=True)[:limit])
    return Node.objects.filter(pk__in=stale, status=Node.UP).update(status=Node.DOWN)


def nodes_up():
    return Node.objects.filter(status=Node.UP, last_heartbeat_at__gte=node_down_cutoff())
