"""A lost node's requests (fleet/failover.py marks the node lost and sends ``node_lost_signal``; serving's app
connects ``node_requests_reroute`` to it).

A request the lost node had not finished is sent again to another node (Algorithm 2 placement, the lost node
excluded as it is no longer up) as the next attempt: the row takes the new node and attempt, the request's
Redis Stream gets a ``retry`` entry so readers start the answer over, ``vajra:attempt:<id>`` is set so that a
late redelivery of the old attempt does nothing (gpu_runtime.contract, "Failover"), and the task goes to the
new node's queue. Billing needs nothing more: the ledger row is written once, from whichever attempt's final
event is recorded first (serving.finals.record_final), and the lost node's time is never billed.
A request with no node left to take it, or past ``VAJRA_MAX_ATTEMPTS``, ends with a ``node_lost`` error.
"""

import logging

from django.conf import settings
from django.db import transaction

from adapters.models import AdapterVersion
from fleet import runtime_client
from fleet.failover import BATCH
from fleet.placement import NoCapacity, place
from gpu_runtime.contract import Final, Timings, Usage, attempt_key, retry_entry, with_attempt

from .finals import FAILOVER, record_final, stream_append, stream_finals
from .models import InferenceRequest

log = logging.getLogger(__name__)


def _redis():
    from vajra.redis import get_redis

    return get_redis()


def node_requests_reroute(sender=None, *, node, reason, before=None, **kwargs):
    """The receiver of fleet's ``node_lost_signal``: the node's unfinished requests (created before ``before`` when
    given) go to other nodes, at most BATCH per call. Counts of what was done."""
    rows = InferenceRequest.objects.filter(node=node, status__in=InferenceRequest.ACTIVE)
    if before is not None:
        rows = rows.filter(created_at__lt=before)
    moved = [request_reroute(request_id=pk, lost=node.name, reason=reason)
             for pk in rows.order_by("created_at").values_list("pk", flat=True)[:BATCH]]
    return {"requests": len(moved), "retried": moved.count("retried"), "failed": moved.count("failed")}


def node_lost_final(lost, reason, attempt):
    """The end the control plane gives a lost node's request that no other node can take."""
    return Final.failed("node_lost", f"The node running this request ({lost}) was lost ({reason}) and no other node "
                        "could take it; send the request again.", usage=Usage(0, 0, 0), timings=Timings(),
                        gpu_ms=0.0).with_attempt(attempt)


@transaction.atomic
def request_reroute(*, request_id, lost, reason):
    """One request of a lost node: recorded if it had in fact finished, else the next attempt on another node,
    else ended with a ``node_lost`` error. Returns what was done: finished, retried, failed or skipped."""
    row = (InferenceRequest.objects.select_for_update(of=("self",)).select_related("node", "tenant", "base_model")
           .filter(pk=request_id).first())
    if row is None or row.status not in InferenceRequest.ACTIVE or row.node is None or row.node.name != lost:
        return "skipped"  # finished meanwhile, or already moved by another pass
    final = stream_finals([(row.id, row.attempt)]).get(row.id)
    if final is not None:  # it ended on the node, whose report was lost with it
        record_final(row.id, final, source=FAILOVER)
        return "finished"
    version = (AdapterVersion.objects.select_related("adapter").get(pk=row.adapter_version_id)
               if row.adapter_version_id else None)
    node = None
    if row.payload is not None and row.attempt < settings.VAJRA_MAX_ATTEMPTS:
        try:
            node = place(tenant=row.tenant, base_model=row.base_model, version=version)
        except NoCapacity:
            node = None
    if node is None:
        record_final(row.id, node_lost_final(lost, reason, row.attempt), source=FAILOVER, ends_stream=True)
        log.warning("request %s: node %s lost (%s), no node to retry on", row.id, lost, reason)
        return "failed"
    attempt = row.attempt + 1
    InferenceRequest.objects.filter(pk=row.pk).update(node=node, attempt=attempt, status=InferenceRequest.QUEUED)
    payload = with_attempt(row.payload, attempt)
    retry = retry_entry(attempt=attempt, node=node.name, reason=f"node {lost} lost ({reason})")

    def send():
        redis = _redis()
        redis.set(attempt_key(row.id), attempt, ex=settings.VAJRA_STREAM_TTL_SECONDS)  # before the task runs
        stream_append(row.id, "retry", retry)
        runtime_client.send_infer(payload, node_name=node.name, task_id=f"{row.id}.{attempt}")

    transaction.on_commit(send)
    log.warning("request %s: node %s lost (%s), attempt %s on %s", row.id, lost, reason, attempt, node.name)
    return "retried"
