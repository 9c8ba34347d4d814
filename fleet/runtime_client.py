"""The one door from the web to the runtime nodes: every Celery task sent to a node's queue (``node.<name>``) goes
through here, each one built by the contract's message builders (gpu_runtime.contract): task name and JSON
arguments. Callers send after commit.

It lives in fleet, the lowest app that sends to nodes (placement and failover move adapters between tiers);
serving and training sit above fleet and reach the nodes through it."""

from adapters.models import Adapter
from gpu_runtime.contract import infer_message, prefetch_message, set_tier_message, train_message


def _app():
    from vajra.celery import app

    return app


def send_infer(payload, *, node_name, task_id):
    """A request's runtime task.

    ignore_result: the answer comes back on the request's Redis Stream; with a result the web would SUBSCRIBE to a
    result channel per task (never read) and the node would store every final event. argsrepr: Celery's events and
    logs show the request id, not the tenant's prompt (and skip a repr)."""
    infer_message(payload).send(_app(), node_name, task_id=task_id, ignore_result=True,
                                argsrepr=f"[<request {payload['request_id']}>]", kwargsrepr="{}")


def send_set_tier(ref, tier, *, node_name):
    """Moves an adapter version (its AdapterRef) to ``tier`` on one node: hot pins it on the device, warm keeps it on
    disk and in host RAM, cold drops it."""
    set_tier_message(ref, tier).send(_app(), node_name)


def send_swap_hot(new_ref, old_ref, *, node_name):
    """Pins ``new_ref`` on a node where ``old_ref`` is pinned, then (linked, so only once the new one is pinned)
    demotes the old one to warm."""
    app = _app()
    demote = set_tier_message(old_ref, Adapter.WARM).signature(app, node_name, immutable=True)
    set_tier_message(new_ref, Adapter.HOT).send(app, node_name, link=demote)


def send_prefetch(ref, *, node_name):
    """Brings a version to the node's disk and host RAM ahead of its requests."""
    prefetch_message(ref).send(_app(), node_name)


def send_train(spec, *, node_name, task_id):
    """A training job's runtime task (its gpu_runtime.training_spec.TrainingSpec; gpu_runtime.contract, "Training")."""
    train_message(spec).send(_app(), node_name, task_id=task_id)


def revoke(task_id):
    """Tells the nodes to discard a task they have not started (a node that took it already ignores this)."""
    _app().control.revoke(task_id)
