"""The one intake for a request's final event: whoever brings it, ``record_final`` records it, once.

Recording a final ends the request: its row takes the status, usage and timings the final reports, its ledger rows
are written in the same transaction (billing.ledger.record_inference), and a final the control plane made itself
goes to the request's stream after commit, so a client still waiting hears it. The bringers, as ``source``:

- ``control_task``: the node's ``control.inference_finished`` task, the usual way;
- ``stream_sweep``: beat's sweep of requests still active VAJRA_FINAL_RECONCILE_SECONDS after they began whose
  stream already ends with their final: the node finished, but the task carrying the final was lost (a control
  worker killed after taking the message off its queue and before recording it: kombu's Redis transport holds the
  message nowhere in between);
- ``throttle_retry``: a submit refused by the concurrency quota first records the finals already on the streams of
  the tenant's active requests (the control plane lags, e.g. while it reconnects after a broker restart), then
  tries once more;
- ``failover``: a lost node's request whose stream shows that it had finished, or that no other node can take (a
  ``node_lost`` final made here);
- ``expiry``: a request no node finished within VAJRA_REQUEST_TIMEOUT_SECONDS (a ``node_timeout`` final made here);
- ``dispatch``: a request whose task the broker did not take (``broker_unavailable``, ``dispatch_failed``, made
  here): no node will ever see it, and its client hears why in the submit's answer.

Exactly once: the request's row is locked, and a final is recorded only on an active row and for its current
attempt. A second bringer finds the row ended and changes nothing; the ledger's unique key would refuse a second
row anyway. The row keeps who recorded its final (``final_source``).
"""

import json
import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.ledger import finish_status, record_inference
from gpu_runtime.contract import OMITTED, ContractError, Final, Usage, stream_key
from vajra.errors import REDIS_DOWN

from .models import InferenceRequest

log = logging.getLogger(__name__)

SOURCES = InferenceRequest.FINAL_SOURCES
CONTROL_TASK, STREAM_SWEEP, THROTTLE_RETRY, FAILOVER, EXPIRY, DISPATCH = SOURCES


def _given(value, default=None):
    """A final's field, or ``default`` where the final left it out or sent null."""
    return default if value is OMITTED or value is None else value


def _attempt(final):
    return _given(final.attempt, 1)


def record_final(request_id, final, *, source, ends_stream=False):
    """Records ``final`` (a gpu_runtime.contract.Final) as the end of request ``request_id``, brought by ``source``.
    Returns the row when this call ended it; None when it changed nothing (no such request, already ended, or a
    final of an attempt that failover superseded). ``ends_stream``: the control plane made this final itself, and it
    goes to the request's stream once committed (inside a caller's transaction, once that commits)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source of a final: {source!r}")
    with transaction.atomic():
        row = InferenceRequest.objects.select_for_update().filter(pk=request_id).first()
        if row is None or row.status in InferenceRequest.TERMINAL or _attempt(final) != row.attempt:
            return None
        _fill(row, final)
        row.final_source = source
        row.save()
        record_inference(row)  # its ledger rows, in this transaction: billed once, with the finish
        if ends_stream:
            transaction.on_commit(lambda: _announce(request_id, final))
    return row


def _fill(row, final):
    usage, timings, error = _given(final.usage, Usage()), _given(final.timings), final.error
    row.status = finish_status(final.finish_reason)
    row.finish_reason = final.finish_reason or ""
    row.prompt_tokens = _given(usage.prompt_tokens, 0)
    row.completion_tokens = _given(usage.completion_tokens, 0)
    row.cached_tokens = _given(usage.cached_tokens, 0)
    for name in ("queued_ms", "adapter_ready_ms", "first_token_ms", "total_ms"):
        setattr(row, name, _given(getattr(timings, name)) if timings is not None else None)
    row.gpu_ms = _given(final.gpu_ms)
    row.error_code = (error.code if error else "")[:64]
    row.error_message = (error.message if error else "")[:500]
    guarantee = settings.VAJRA_TIER_READY_MS[row.tier]
    row.guarantee_broken = row.adapter_version_id is not None and (row.adapter_ready_ms or 0) > guarantee
    row.finished_at = timezone.now()
    row.payload = None  # the prompt was kept for failover only


def _announce(request_id, final):
    try:
        stream_append(request_id, "final", final.to_json())
    except REDIS_DOWN:
        log.warning("could not tell the client of %s how it ended: Redis unavailable", request_id)


def stream_append(request_id, kind, data):
    """An entry the control plane adds to a request's stream itself (a failover's retry, an end no node wrote)."""
    from vajra.redis import get_redis

    key = stream_key(request_id)
    pipe = get_redis().pipeline()
    pipe.xadd(key, {"type": kind, "data": json.dumps(data)})
    pipe.expire(key, settings.VAJRA_STREAM_TTL_SECONDS)
    pipe.execute()


def final_from_wire(request_id, data):
    """The Final in a node's JSON, or None (logged) for JSON that is not one: nothing records it."""
    try:
        return Final.from_json(data)
    except ContractError as exc:
        log.warning("request %s: a final that breaks the contract was dropped: %s", request_id, exc)
        return None


def stream_finals(rows):
    """(request id, attempt) pairs -> {request id: Final} for each whose stream ends with that attempt's final (one
    round trip to Redis). A stream that ends otherwise (still answering, a failover's retry, another attempt's final)
    is left out."""
    from vajra.redis import get_redis

    if not rows:
        return {}
    pipe = get_redis().pipeline(transaction=False)
    for request_id, _ in rows:
        pipe.xrevrange(stream_key(request_id), count=1)
    finals = {}
    for (request_id, attempt), last in zip(rows, pipe.execute(), strict=True):
        if not last or last[0][1].get(b"type") != b"final":
            continue
        final = final_from_wire(request_id, json.loads(last[0][1][b"data"]))
        if final is not None and _attempt(final) == attempt:
            finals[request_id] = final
    return finals


def _record_stream_finals(rows, *, source):
    """Records the finals the streams of ``rows`` end with; the ids this call ended."""
    return [request_id for request_id, final in stream_finals(rows).items()
            if record_final(request_id, final, source=source) is not None]


def _overdue(seconds, limit):
    cutoff = timezone.now() - timedelta(seconds=seconds)
    return list(InferenceRequest.objects.filter(status__in=InferenceRequest.ACTIVE, created_at__lt=cutoff)
                .order_by("created_at").values_list("pk", "attempt")[:limit])


def finals_from_streams(*, limit=500):
    """The stream sweep: records the final of each request still active VAJRA_FINAL_RECONCILE_SECONDS after it began
    whose stream already ends with it, at most ``limit``. Returns how many it ended."""
    ended = _record_stream_finals(_overdue(settings.VAJRA_FINAL_RECONCILE_SECONDS, limit), source=STREAM_SWEEP)
    for request_id in ended:
        log.warning("request %s: recorded its final event from its stream (the task carrying it was lost)",
                    request_id)
    return len(ended)


def answered_meanwhile(tenant):
    """Before a throttled submit tries again: records the finals already on the streams of the tenant's active
    requests; how many ended. Redis away: none."""
    rows = list(InferenceRequest.objects.filter(tenant=tenant, status__in=InferenceRequest.ACTIVE)
                .values_list("pk", "attempt"))
    try:
        return len(_record_stream_finals(rows, source=THROTTLE_RETRY))
    except REDIS_DOWN:
        return 0


def node_timeout_final(timeout_s, attempt=1):
    return Final.failed("node_timeout", f"No runtime node finished the request within {timeout_s} s (a node or the "
                                        "broker may have restarted and lost it); retry it.").with_attempt(attempt)


def inference_expire_stale(*, limit=500):
    """The expiry: fails requests still queued or running past VAJRA_REQUEST_TIMEOUT_SECONDS (a broker that restarted
    without its data lost their task or their node's answer, and nothing else would ever end them), at most
    ``limit``, each in its own transaction. Bills nothing (no work is known); the client still waiting gets the
    final on the stream. Returns how many it ended."""
    timeout_s = settings.VAJRA_REQUEST_TIMEOUT_SECONDS
    return sum(record_final(request_id, node_timeout_final(timeout_s, attempt), source=EXPIRY,
                            ends_stream=True) is not None
               for request_id, attempt in _overdue(timeout_s, limit))
