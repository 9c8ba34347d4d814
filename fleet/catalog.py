"""The base-model catalog as the fleet sees it: every imported model and the nodes that serve it."""

from adapters.models import BaseModel

from .liveness import nodes_up
from .models import Node


def base_models_with_nodes():
    """[(BaseModel, [{"name", "status", "device"}, ...])] in name order; a node counts as up only with a fresh
    heartbeat (what placement routes to)."""
    up = set(nodes_up().values_list("pk", flat=True))
    serving = {}
    for node in Node.objects.exclude(base_model="").order_by("name"):
        serving.setdefault(node.base_model, []).append(
            {"name": node.name, "status": Node.UP if node.pk in up else Node.DOWN, "device": node.device})
    return [(base, serving.get(base.name, [])) for base in BaseModel.objects.order_by("name")]
