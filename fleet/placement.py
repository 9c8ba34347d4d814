"""Placement (VAJRA paper, Algorithm 2) and tier moves on the nodes.

Candidates are the up nodes serving the request's base model with room for its adapter: a free device slot in a
rank bucket that fits the adapter's rank (a node whose slot pool has no bucket that large, or whose fitting buckets
are all held by pinned adapters, is not a candidate), or the adapter already resident. The adapter's tier narrows
them first (``tier_candidates``):

- hot: the up nodes that report it pinned on their device (its pin, or its failover pin), however busy they are:
  the engine queues the request there and the adapter is ready when it is admitted. A pin sent but not yet in a
  heartbeat counts (``pin_sent``). With no pin on an up node (its node is down or silent), the request goes where
  the warm rule says and the pin moves there (``pin_move``); its adapter-ready time is then what it is, on the
  request row, and the SLO credit covers a broken guarantee.
- warm: the candidates holding it in host RAM or on the device, when there are any; else every candidate.
- cold and base-model-only requests: every candidate.

What is left is scored

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
from django.db import transaction
from django.db.models import Count

from adapters.models import Adapter
from adapters.services import adapter_ref
from gpu_runtime.contract import adapter_id_of, version_key
from vajra.errors import Conflict

from . import runtime_client
from .liveness import nodes_up
from .models import Node, ScaleUpSignal

log = logging.getLogger(__name__)
AFFINITY_WINDOW = 50
HOT, WARM = Adapter.HOT, Adapter.WARM


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


def version_key_of(version):
    """A version row's contract version key (what heartbeats list and pins name)."""
    return version_key(adapter_id_of(version.adapter_id), version.number)


def _adapters(node):
    return node.state.get("adapters") or {}


def _resident(node, tier):
    return set((node.state.get("resident") or {}).get(tier, []))


def version_residence(version):
    """Where a version is kept now, by the up nodes' last heartbeats: {"pinned", "device", "host"} -> node names
    (a hot pin sent but not yet reported counts as pinned on its node)."""
    token = version_key_of(version)
    out = {place: [] for place in ("pinned", "device", "host")}
    for node in nodes_up().filter(base_model=version.adapter.base_model.name).order_by("name"):
        for place, names in out.items():
            if token in _resident(node, place):
                names.append(node.name)
    sent = pin_sent(token) if version.adapter.tier == HOT else None
    if sent and sent not in out["pinned"]:
        out["pinned"].append(sent)
    return out


def residence_facts(adapter, versions):
    """The adapter page's "residence": where its current version is held (warm and hot only)."""
    current = adapter.current_version
    return {"residence": version_residence(current) if current and adapter.tier != Adapter.COLD else None}


def _candidates(*, base_model, version):
    """(node, load, locality) of the up nodes that may run a request for this version (None: base model only)."""
    nodes = list(nodes_up().filter(base_model=base_model.name))
    if version is None:
        return tier_candidates(nodes, None)
    token, tier = version_key_of(version), version.adapter.tier
    if tier == HOT and not any(token in _resident(node, "pinned") for node in nodes):
        sent = pin_sent(token)
        nodes_pinning = [node for node in nodes if node.name == sent]
        if nodes_pinning:  # its pin is on the way to an up node, whose next heartbeats will report it
            return [(node, candidate(node, None)[0], 1.0) for node in nodes_pinning]
    return tier_candidates(nodes, token, rank=version.rank, tier=tier)


def tier_candidates(nodes, token, *, rank=None, tier=None):
    """(node, load, locality) of the nodes that may run a request for an adapter version token (None: base model
    only) of this rank and tier, by the tier rules above (no database: the nodes' heartbeat state alone)."""
    if tier == HOT:
        pinned = [node for node in nodes if token in _resident(node, "pinned")]
        if pinned:  # the pin holds its slot: only the node's load is scored
            return [(node, candidate(node, None)[0], 1.0) for node in pinned]
    out = [(node, *facts) for node in nodes if (facts := candidate(node, token, rank)) is not None]
    if tier in (HOT, WARM):
        holders = [c for c in out if c[2] > 0]
        if holders:
            return holders
    return out


def candidate(node, token, rank=None):
    """(load, locality) of a node for an adapter version token (None: base model only) of ``rank``, or None when
    the adapter is not resident there and it has no free slot, or no rank bucket with room for it."""
    adapters = _adapters(node)
    slots, active = adapters.get("slots", 0), adapters.get("device", 0)
    on_device = token is not None and token in _resident(node, "device")
    if token is not None and not on_device and (active >= slots or not bucket_room(node, rank)):
        return None
    load = 1 - active / slots if slots else 0.0
    locality = 1.0 if on_device else (0.5 if token is not None and token in _resident(node, "host") else 0.0)
    return load, locality


def bucket_room(node, rank):
    """Whether the node's slot pool has a rank bucket that fits ``rank`` with a slot not held by a pinned adapter
    (a node whose heartbeat carries no buckets, or an unknown rank: yes)."""
    buckets = _adapters(node).get("buckets")
    if not buckets or rank is None:
        return True
    return any(int(bucket) >= rank and room["slots"] > room["pinned"] for bucket, room in buckets.items())


def _requests():
    """The inference request rows (serving's model), reached through their foreign key to Node (``node.requests``):
    serving sits above fleet, so placement reads them without importing it."""
    return Node._meta.get_field("requests").related_model


def _score(candidates, tenant):
    InferenceRequest = _requests()
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
    """The node to run this request on, or NoCapacity (after recording a scale-up signal). A hot version whose
    pin is on no up node gets its pin moved to the chosen node."""
    candidates = _candidates(base_model=base_model, version=version)
    if not candidates:
        raise NoCapacity(f"No runtime node can take this request now (no up node serves {base_model.name} with a "
                         "free adapter slot); retry shortly.", base_model=base_model.name)
    if len(candidates) == 1:  # nothing to choose between: no need for the tenant's recent requests (a query)
        node = candidates[0][0]
    else:
        node = _score(candidates, tenant)[0].node
    if version is not None and version.adapter.tier == HOT:
        token = version_key_of(version)
        if token not in _resident(node, "pinned") and pin_sent(token) != node.name:
            pin_move(version, node)
    return node


def _pin_key(token):
    return f"vajra:hot-pin:{token}"


def pin_sent(token):
    """The node a hot version's pin was last sent to, while its heartbeats may not report it yet (None)."""
    from vajra.redis import get_redis

    sent = get_redis().get(_pin_key(token))
    return sent.decode() if sent is not None else None


def _pin_sent_to(version, node):
    from vajra.redis import get_redis

    seconds = settings.VAJRA_HEARTBEAT_SECONDS * settings.VAJRA_NODE_DOWN_AFTER_MISSED * 2
    get_redis().set(_pin_key(version_key_of(version)), node.name, ex=seconds)


def pin_move(version, node):
    """The failover pin: a hot version pinned on no up node is pinned on ``node`` (after commit), where its
    request runs, so its next requests find it there; unless that node has no hot capacity left for its rank (the
    request then runs unpinned, and its adapter-ready time decides its SLO credit)."""
    if hot_capacity(node) <= 0 or not bucket_room(node, version.rank):
        log.warning("hot adapter %s: pinned on no up node, and %s has no hot capacity for it", version, node.name)
        return
    log.warning("hot adapter %s: pinned on no up node, pinning it on %s", version, node.name)
    transaction.on_commit(lambda: _send_set_tier(version, Adapter.HOT, [node]))


def record_scale_up(exc):
    """Records the signal in its own transaction, so the refused request's rollback does not erase it."""
    log.warning("placement: %s", exc)
    ScaleUpSignal.objects.create(base_model=exc.base_model, reason=str(exc)[:200])


def hot_capacity(node):
    adapters = _adapters(node)
    return int(adapters.get("slots", 0) * settings.VAJRA_HOT_SLOT_SHARE) - adapters.get("pinned", 0)


def place_hot(*, base_model, adapter, rank=None):
    """The node that will pin a hot adapter: the one with the most hot capacity left, among those with a rank
    bucket that fits ``rank`` (default: its current version's)."""
    if rank is None and adapter.current_version_id:
        rank = adapter.current_version.rank
    nodes = [n for n in nodes_up().filter(base_model=base_model.name) if hot_capacity(n) > 0 and bucket_room(n, rank)]
    if not nodes:
        raise NoCapacity(f"No node serving {base_model.name} has hot capacity left; keep '{adapter.name}' warm "
                         "for now or ask for more capacity.")
    return max(nodes, key=lambda n: (hot_capacity(n), n.name))


def check_hot(*, base_model, adapter):
    """409 ``no_hot_capacity`` when no node serving the base model could pin the adapter (adapters.tier_moves)."""
    try:
        place_hot(base_model=base_model, adapter=adapter)
    except NoCapacity as exc:
        raise Conflict(str(exc), code="no_hot_capacity", param="tier") from None


def send_tier(version, tier=None):
    """Moves a version on the nodes to its adapter's tier (hot: pinned on one node; warm: disk + host RAM on
    the nodes serving its base; cold: dropped back to object storage). Sent after commit."""
    tier = tier or version.adapter.tier
    base_model = version.adapter.base_model
    if tier == "hot":
        try:
            targets = [place_hot(base_model=base_model, adapter=version.adapter, rank=version.rank)]
        except NoCapacity:
            log.warning("hot adapter %s: no node with hot capacity at send time", version)
            return
    else:
        targets = list(nodes_up().filter(base_model=base_model.name))
    _send_set_tier(version, tier, targets)


def _send_set_tier(version, tier, nodes):
    from vajra.redis import get_redis

    if tier == HOT:
        _pin_sent_to(version, nodes[0])  # before the task runs: placement sends the version's requests there
    else:
        get_redis().delete(_pin_key(version_key_of(version)))
    ref = adapter_ref(version)
    for node in nodes:
        runtime_client.send_set_tier(ref, tier, node_name=node.name)
