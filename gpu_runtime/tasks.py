"""The node's tasks on queue ``node.<name>`` (gpu_runtime.contract names them): each delegates to this process's
node (gpu_runtime.node)."""

import logging
import time

from . import logs
from .celery_app import app, config, send_control
from .contract import (
    SUPERSEDED,
    TASK_INFER,
    TASK_INFERENCE_STARTED,
    TASK_PING,
    TASK_PREFETCH,
    TASK_SET_TIER,
    AdapterRef,
    ContractError,
    Final,
)
from .generation import GenerationRequest
from .node import node, report_finished
from .streams import REDIS_DOWN

log = logging.getLogger("vajra.runtime.tasks")


@app.task(name=TASK_INFER, acks_late=True)
def infer(payload):
    """Runs one inference request to its end; its tokens go to the request's Redis Stream."""
    logs.default_request_id(payload.get("request_id") if isinstance(payload, dict) else None)
    try:
        request = GenerationRequest.from_json(payload)
    except ContractError as exc:
        result = Final.failed("invalid_request", str(exc)).to_json()
        if isinstance(payload, dict) and isinstance(payload.get("request_id"), str):
            node.streams.final(payload["request_id"], result)
        return result
    try:
        final, current, cancelled = node.streams.run_state(request.request_id)
    except REDIS_DOWN:  # Redis restarting: whatever it held is gone with it, so this is no known redelivery
        final, current, cancelled = None, None, False
    if final is None and current is not None and current != request.attempt:
        # A superseded attempt (its node was lost and the request went to another node): the current attempt
        # reports the request's end; this one does nothing.
        log.info("request %s: attempt %s superseded by attempt %s", request.request_id, request.attempt, current)
        return {"superseded": request.attempt, "current": current}
    if final is None and cancelled:  # while its task waited in the node's queue: it ends ``cancelled`` without
        # reaching the engine (no prefill, no token, 0 GPU-ms: the ledger bills it nothing)
        from .batch_rows import unadmitted_final

        final = unadmitted_final(time.perf_counter(), "cancelled").with_attempt(request.attempt).to_json()
        node.streams.final(request.request_id, final)
    if final is None:  # not a redelivery of a request that already ran: run it (never twice)
        engine = node.require_engine()
        node.observe(request)
        handle = engine.submit(request)
        send_control(TASK_INFERENCE_STARTED, [request.request_id, config.node_name, request.attempt])
        final = handle.wait()
        if final.get("finish_reason") == SUPERSEDED:  # another node runs the current attempt and reports it
            return final
    report_finished(request.request_id, final)
    return final


@app.task(name=TASK_PREFETCH)
def prefetch(adapter):
    """Moves an adapter to this node's disk and host RAM ahead of its requests."""
    ref = AdapterRef.from_json(adapter)
    node.require_engine()
    node.store.prepare(ref).result(timeout=120)
    return {"where": node.store.where(ref.key)}


@app.task(name=TASK_SET_TIER)
def set_tier(adapter, tier):
    """hot: pinned in a device slot; warm: disk + host RAM; cold: object storage only."""
    from .adapter_entry import adapter_key

    ref = AdapterRef.from_json({**adapter, "tier": tier})
    engine = node.require_engine()
    future = node.store.set_tier(ref, tier)
    if future is not None:
        future.result(timeout=120)
    if tier == "hot":
        engine.call(lambda: node.store.activate(adapter_key(ref), acquire=False)).result(timeout=60)
    return {"where": node.store.where(adapter_key(ref)), "tier": tier}


@app.task(name=TASK_PING)
def ping():
    """Round trip through the node's queue: what is loaded and where."""
    beat = node.heartbeat().to_json()
    beat["pong_at"] = time.time()
    if node.engine is not None:  # inference forward time, which the requests' gpu_ms split among them exactly
        beat["busy_ms"] = round(node.engine.busy_ms, 3)
    if node.load_error:
        beat["load_error"] = node.load_error
    return beat
