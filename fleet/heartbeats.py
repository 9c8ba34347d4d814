"""Node bookkeeping from heartbeats."""

import logging

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from adapters.models import BaseModel
from gpu_runtime.contract import Heartbeat

from .failover import node_lost, node_rejoined
from .liveness import node_down_cutoff
from .models import Node

log = logging.getLogger(__name__)


@transaction.atomic
def node_heartbeat(*, payload):
    """Upserts the node from its heartbeat. A node that was down comes back up; one that comes back with a new
    start time restarted and lost what it held: its unfinished requests from before go to other nodes, and it
    gets its adapters again (fleet/failover.py)."""
    beat = Heartbeat.from_json(payload)
    if beat.base_architecture:  # the catalog learns base models from the nodes that serve them
        BaseModel.objects.update_or_create(name=beat.base_model, defaults={
            "architecture": beat.base_architecture, "context_length": beat.context_length or 2048})
    started_at = parse_datetime(beat.started_at)
    fields = {"status": Node.UP, "base_model": beat.base_model, "device": beat.device, "state": beat.to_json(),
              "started_at": started_at, "last_heartbeat_at": timezone.now()}
    node = Node.objects.select_for_update().filter(name=beat.node).first()
    if node is None:
        try:
            with transaction.atomic():
                return Node.objects.create(name=beat.node, **fields)
        except IntegrityError:  # a new node's first two beats (loader and heartbeat threads) raced: one created it
            node = Node.objects.select_for_update().get(name=beat.node)
    was_down = node.status == Node.DOWN
    restarted = node.started_at is not None and started_at is not None and started_at > node.started_at
    for name, value in fields.items():
        setattr(node, name, value)
    node.save()
    if restarted or was_down:
        if restarted:  # requests sent to it before it restarted died with the old process, and its pins
            node_lost(node=node, reason="restarted", before=started_at)
        node_rejoined(node=node, hot=not restarted)  # node_lost pinned a restarted node's hot adapters again
    return node


def nodes_mark_down(*, limit=500):
    """Marks nodes silent for the allowed number of heartbeats as down (bounded batch); each one's unfinished
    requests go to other nodes and its hot adapters are pinned elsewhere (fleet/failover.py)."""
    stale = list(Node.objects.filter(status=Node.UP, last_heartbeat_at__lt=node_down_cutoff())
                 .values_list("pk", flat=True)[:limit])
    marked = 0
    for pk in stale:
        with transaction.atomic():
            if not Node.objects.filter(pk=pk, status=Node.UP).update(status=Node.DOWN):
                continue  # a heartbeat came in meanwhile, or another pass took it
            marked += 1
            node = Node.objects.get(pk=pk)
            log.warning("node %s marked down: no heartbeat since %s", node.name, node.last_heartbeat_at)
            node_lost(node=node, reason=f"no heartbeat for {settings.VAJRA_NODE_DOWN_AFTER_MISSED} beats")
    # Requests still on a down node (more than one pass's batch, or a failed pass): the next pass takes them.
    for node in Node.objects.filter(status=Node.DOWN, requests__status__in=("queued", "running")).distinct()[:limit]:
        with transaction.atomic():
            node_lost(node=node, reason="node down")
    return marked
