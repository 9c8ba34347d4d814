"""Node loss: what happens to a node's work when it is marked down, or comes back having restarted.

The node's unfinished requests are serving's to move: ``node_lost`` sends ``node_lost_signal`` and serving's
receiver (serving/reroute.py) sends each request to another node or ends it; fleet sits below serving and never
imports it.

A hot adapter is pinned on at least one node: when the node that pinned it is lost, it is pinned on another (the
failover pin), and placement sends its requests there (fleet/placement.py).
A node that comes back gets its warm adapters again.
"""

import logging

from django.db import transaction
from django.db.models import F
from django.dispatch import Signal

from adapters.models import Adapter, AdapterVersion
from adapters.services import adapter_ref

from . import runtime_client
from .liveness import nodes_up
from .models import Node
from .placement import pin_sent, send_tier, version_key_of

log = logging.getLogger(__name__)
BATCH = 200  # requests or adapters handled per lost node in one pass (the next pass takes the rest)

# Sent by node_lost inside its transaction, with ``node``, ``reason`` and ``before``; a receiver moves the node's
# unfinished work and returns counts ({"requests", "retried", "failed"}) that node_lost adds to its answer.
node_lost_signal = Signal()


def node_lost(*, node, reason, before=None):
    """The node's unfinished requests (those created before ``before`` when given: a restarted node keeps the
    ones sent after it started) go to other nodes; its hot adapters are pinned elsewhere."""
    counts = {"requests": 0, "retried": 0, "failed": 0}
    for _, result in node_lost_signal.send(sender=Node, node=node, reason=reason, before=before):
        for key, value in (result or {}).items():
            counts[key] = counts.get(key, 0) + value
    hot = hot_adapters_replace(base_model=node.base_model, lost=node.name)
    return {**counts, "hot_repinned": hot}


def _current_versions(*, base_model, tier):
    return (AdapterVersion.objects.select_related("adapter", "adapter__base_model")
            .filter(adapter__current_version=F("pk"), adapter__tier=tier, adapter__deleted_at__isnull=True,
                    adapter__base_model__name=base_model, status=AdapterVersion.READY)
            .order_by("-created_at")[:BATCH])


def hot_adapters_replace(*, base_model, lost=None):
    """Hot adapters of this base that no up node reports pinned, and whose pin is not on its way to an up node,
    are pinned again: the failover pin (after commit: placement picks the node with the most hot capacity). A pin
    sent to ``lost`` (a node that lost or restarted) is not on its way."""
    up = list(nodes_up().filter(base_model=base_model))
    pinned = set()
    for node in up:
        pinned.update((node.state.get("resident") or {}).get("pinned", []))
    names = {node.name for node in up} - {lost}
    orphans = [v for v in _current_versions(base_model=base_model, tier=Adapter.HOT)
               if version_key_of(v) not in pinned and pin_sent(version_key_of(v)) not in names]
    for version in orphans:
        transaction.on_commit(lambda version=version: send_tier(version, Adapter.HOT))
    return len(orphans)


def node_rejoined(*, node, hot=True):
    """A node back up (or restarted) holds nothing: its warm adapters go back to its disk and host RAM, and (with
    ``hot``) hot adapters held nowhere are pinned again."""
    warm = list(_current_versions(base_model=node.base_model, tier=Adapter.WARM))
    for version in warm:
        transaction.on_commit(lambda version=version: runtime_client.send_set_tier(
            adapter_ref(version), Adapter.WARM, node_name=node.name))
    return {"warm": len(warm),
            "hot_repinned": hot_adapters_replace(base_model=node.base_model, lost=node.name) if hot else 0}
