"""Placement (VAJRA paper, Algorithm 2) and tier moves on the nodes.

Candidates are the up nodes serving the request's base model with room for its adapter (a free device
slot, or the adapter already resident). Each is scored

    alpha * load + beta * locality + gamma * tenant affinity

with load = the node's free share: 1 - active adapters / slots, or less when its requests in flight fill more of
its batch (in-flight rows / the engine's max batch, counted from the request rows: heartbeats are seconds old
and a burst would all go to one node), locality = 1 if the adapter version is on the node's device
(0.5 if in its host RAM), affinity = the share of the tenant's recent requests that ran there. No
candidate: a scale-up signal is recorded (the paper's ProvisionNewGPU) and the caller answers 503.
"""

import logging
from collections import Counter
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count

from gpu_runtime.contract import node_queue

from .models import InferenceRequest, ScaleUpSignal
from .services import nodes_up

log = logging.getLogger(__name__)
AFFINITY_WINDOW = 50


class NoCapacity(Exception):
    retry_after = 5

    def __init__(self, message, base_model=""):
        super().__init__(message)
        self.base_model = base_model


@dataclass(frozen=True)
class Scored:
    node: object
    score: float
    load: float
    locality: float
    affinity: float


def version_token(version):
    return f"a{version.adapter_id}:{version.number}"


def _adapters(node):
    return node.state.get("adapters") or {}


def _resident(node, tier):
    return set((node.state.get("resident") or {}).get(tier, []))


def _candidates(*, base_model, version):
    """(node, load, locality) of the up nodes serving the base model with room for the adapter."""
    token = version_token(version) if version is not None else None
    out = []
    for node in nodes_up().filter(base_model=base_model.name):
        facts = candidate(node, token)
        if facts is not None:
            out.append((node, *facts))
    return out


def candidate(node, token):
    """(load, locality) of a node for an adapter version token (None: base model only), or None when it has no
    free slot and the adapter is not resident there."""
    adapters = _adapters(node)
    slots, active = adapters.get("slots", 0), adapters.get("device", 0)
    on_device = token is not None and token in _resident(node, "device")
    if token is not None and not on_device and active >= slots:
        return None
    load = 1 - active / slots if slots else 0.0
    locality = 1.0 if on_device else (0.5 if token is not None and token in _resident(node, "host") else 0.0)
    return load, locality


def _score(candidates, tenant):
    recent = Counter(InferenceRequest.objects.filter(tenant=tenant, node__isnull=False)
                     .order_by("-created_at").values_list("node_id", flat=True)[:AFFINITY_WINDOW])
    in_flight = dict(InferenceRequest.objects.filter(node__in=[node for node, *_ in candidates],
                                                     status__in=(InferenceRequest.QUEUED, InferenceRequest.RUNNING))
                     .values("node_id").annotate(n=Count("pk")).values_list("node_id", "n"))
    return rank([(node, busy_load(node, load, in_flight.get(node.pk, 0)), locality)
                 for node, load, locality in candidates], recent, settings.VAJRA_PLACEMENT_WEIGHTS)


def busy_load(node, load, in_flight):
    """The free share of a node with ``in_flight`` requests: the lower of its free slots and its free batch rows."""
    batch = node.state.get("max_batch") or 0
    return min(load, max(0.0, 1 - in_flight / batch)) if batch else load


def rank(candidates, recent, weights):
    """Algorithm 2's order of (node, load, locality) candidates, best first, given how many of the tenant's
    recent requests ran on each node (``recent``: node pk -> count). No database: bench/scale.py replays
    synthetic traces through it."""
    alpha, beta, gamma = weights
    total = sum(recent.values())
    scored = []
    for node, load, locality in candidates:
        affinity = recent[node.pk] / total if total else 0.0
        scored.append(Scored(node, alpha * load + beta * locality + gamma * affinity, load, locality, affinity))
    return sorted(scored, key=lambda s: (-s.score, node_depth(s.node), s.node.name))


def score_nodes(*, tenant, base_model, version=None):
    return _score(_candidates(base_model=base_model, version=version), tenant)


def node_depth(node):
    return node.state.get("queue_depth", 0)


def place(*, tenant, base_model, version=None):
    """The node to run this request on, or NoCapacity (after recording a scale-up signal)."""
    candidates = _candidates(base_model=base_model, version=version)
    if not candidates:
        raise NoCapacity(f"No runtime node can take this request now (no up node serves {base_model.name} with a "
                         "free adapter slot); retry shortly.", base_model=base_model.name)
    if len(candidates) == 1:  # nothing to choose between: no need for the tenant's recent requests (a query)
        return candidates[0][0]
    return _score(candidates, tenant)[0].node


def record_scale_up(exc):
    """Records the signal in its own transaction, so the refused request's rollback does not erase it."""
    log.warning("placement: %s", exc)
    ScaleUpSignal.objects.create(base_model=exc.base_model, reason=str(exc)[:200])


def hot_capacity(node):
    adapters = _adapters(node)
    return int(adapters.get("slots", 0) * settings.VAJRA_HOT_SLOT_SHARE) - adapters.get("pinned", 0)


def place_hot(*, base_model, adapter):
    """The node that will pin a hot adapter: the one with the most hot capacity left."""
    nodes = [n for n in nodes_up().filter(base_model=base_model.name) if hot_capacity(n) > 0]
    if not nodes:
        raise NoCapacity(f"No node serving {base_model.name} has hot capacity left; keep '{adapter.name}' warm "
                         "for now or ask for more capacity.")
    return max(nodes, key=lambda n: (hot_capacity(n), n.name))


def send_tier(version, tier=None):
    """Moves a version on the nodes to its adapter's tier (hot: pinned on one node; warm: disk + host RAM on
    the nodes serving its base; cold: dropped back to object storage). Sent after commit."""
    from vajra.celery import app

    from .adapters import adapter_ref

    tier = tier or version.adapter.tier
    ref = adapter_ref(version)
    base_model = version.adapter.base_model
    if tier == "hot":
        try:
            targets = [place_hot(base_model=base_model, adapter=version.adapter)]
        except NoCapacity:
            log.warning("hot adapter %s: no node with hot capacity at send time", version)
            return
    else:
        targets = list(nodes_up().filter(base_model=base_model.name))
    for node in targets:
        app.send_task("runtime.set_tier", args=[ref, tier], queue=node_queue(node.name))
