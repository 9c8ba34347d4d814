"""Creating an inference request and sending it to its node; recording its end from the runtime's
final event (exactly once: a finished row is never rewritten).

The web's async entry points (``/v1/.../infer``, the OpenAI API, the playground) run the synchronous part of
a request (API key, rate limit, row, task) in one trip to a submit thread (``on_submit_thread``)."""

import json
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, connections, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone
from rest_framework.exceptions import Throttled

from adapters.models import Adapter
from adapters.prompt_tokens import prompt_tokens
from adapters.services import adapter_ref
from billing.caps import check_spend
from billing.ledger import finish_status, record_inference
from billing.plans import account_for, finished_price, plan_limits, query_price
from fleet import runtime_client
from fleet.placement import NoCapacity, place, record_scale_up
from gpu_runtime.contract import infer_payload, stream_key
from gpu_runtime.streams import final_of
from vajra.errors import REDIS_DOWN, InvalidRequest, redis_unavailable

from .models import InferenceRequest

log = logging.getLogger(__name__)
ACTIVE = (InferenceRequest.QUEUED, InferenceRequest.RUNNING)
DEFAULT_MAX_TOKENS = 256  # when a request names none (or the plan's cap, if lower): a bounded default, no surprise
# HTTP status of a request whose final carries one of these error codes: the request's own input (its prompt, its
# parameters, its adapter's weights) caused it; every other runtime error is the platform's (502).
FINAL_ERROR_STATUS = {"context_length_exceeded": 400, "invalid_request": 400, "non_finite_logits": 422}


def final_error_status(code):
    return FINAL_ERROR_STATUS.get(code, 502)


SUBMIT_THREADS = 8  # PostgreSQL: submits run side by side on this many threads (SQLite: one, see submit_pool)

_pool = None
_pool_lock = threading.Lock()


def _sqlite():
    return settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")


def submit_pool():
    """The submit threads of this process. On SQLite one: it takes one writer at a time, and a second thread
    would wait in SQLite's busy handler, which sleeps 1, 2, 5, 10, ... ms between tries (32 concurrent submits
    were spread over 1.5 s that way); queued here, each starts the moment the previous one ends."""
    global _pool
    with _pool_lock:
        if _pool is None:
            workers = 1 if _sqlite() else SUBMIT_THREADS
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vajra-submit")
    return _pool


def _closing_connections(fn):
    """A job ends like a request: its connections close unless CONN_MAX_AGE keeps them (SQLite: a kept one costs
    a file handle, and saves ~0.7 ms of connect + schema read per job). PostgreSQL: always closed, as a kept one
    would hold a server backend per submit thread for the life of the process (Django's connection pool,
    OPTIONS["pool"], makes its connects cheap)."""

    def job(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            if _sqlite():
                close_old_connections()
            else:
                connections.close_all()

    return job


async def on_submit_thread(fn, *args, own_thread=False, **kwargs):
    """``fn(*args, **kwargs)`` on a submit thread. ``own_thread``: on the caller's request thread instead (a
    request served over WSGI, or by Django's test client, owns its thread and connection: its database work,
    the test's transaction included, stays there)."""
    if own_thread:
        return await sync_to_async(fn)(*args, **kwargs)
    return await sync_to_async(_closing_connections(fn), thread_sensitive=False,
                               executor=submit_pool())(*args, **kwargs)


def new_request_id():
    return f"req_{uuid.uuid4().hex}"


def cost_for(row):
    """A request's price under its tenant's plan, before it ends: its tier's units (billing.plans.query_price)."""
    return query_price(row.tier, tenant=row.tenant_id)


def final_cost(row, final):
    """A finished request's price from its final event: what its ledger row bills (billing.plans.finished_price)."""
    return finished_price(tenant=row.tenant_id, tier=row.tier, created_at=row.created_at, final=final)


def request_cost(row):
    """A request's price as its row stands: what it is billed once it has ended, its quoted price before."""
    if row.status not in InferenceRequest.TERMINAL:
        return cost_for(row)
    return final_cost(row, {"finish_reason": row.finish_reason, "gpu_ms": row.gpu_ms,
                            "usage": {"completion_tokens": row.completion_tokens},
                            "timings": {"total_ms": row.total_ms}})


def _final_cost_of(request_id, final):
    try:
        row = InferenceRequest.objects.filter(pk=request_id).only("tenant_id", "tier", "created_at").first()
        return final_cost(row, final) if row is not None else None
    except DatabaseError:  # the answer still ends; its ledger row is written once the database is back
        log.warning("request %s: no price for its final while the database is unreachable", request_id)
        return None
    finally:
        # An ASGI request's sync work runs on a thread of its own for as long as its stream lasts: a connection
        # kept there would hold a PostgreSQL backend per open stream (80 streams passed max_connections).
        if not _sqlite() and not connection.in_atomic_block:
            connection.close()


async def final_cost_of(request_id, final):
    """``final_cost`` for the request ``request_id``, from async code (the relays send it with the final); None
    while the database cannot be reached, so a stream whose answer is complete always ends."""
    return await sync_to_async(_final_cost_of)(request_id, final)


def sampling_within_plan(sampling, limits, *, param="max_tokens"):
    """``sampling`` with its max_tokens under the plan's cap (400 past it, naming ``param``, the field the caller
    sent); a max_tokens of None gets the default."""
    value = sampling.get("max_tokens")
    if value is None:
        return {**sampling, "max_tokens": min(DEFAULT_MAX_TOKENS, limits.max_tokens)}
    if value > limits.max_tokens:
        name = param.rsplit(".", 1)[-1]  # the message names the field, as serving/parameters.py words refusals
        raise InvalidRequest(f"{name} is {value}, over the limit of {limits.max_tokens} on the plan "
                             f"'{limits.plan}'; ask for at most {limits.max_tokens} tokens or upgrade the plan.",
                             param=param, code="max_tokens_exceeded")
    return sampling


def check_context(base_model, *, prompt, messages, max_tokens):
    """400 when the prompt and max_tokens together pass the base model's context, counted as the runtime counts
    (gpu_runtime/engine.py refuses the same); a web that cannot count leaves it to the runtime."""
    tokens = prompt_tokens(base_model, prompt=prompt, messages=messages)
    context = base_model.context_length
    if tokens is None or tokens + max_tokens <= context:
        return
    param = "messages" if messages else "prompt"
    if tokens >= context:
        fix = f"shorten the {param} to fewer than {context} tokens"
    else:
        fix = f"shorten the {param} or lower max_tokens to at most {context - tokens}"
    verb = "are" if messages else "is"
    raise InvalidRequest(f"The {param} {verb} {tokens} tokens and max_tokens is {max_tokens}: {tokens + max_tokens} "
                         f"tokens, over the context of {context} tokens of '{base_model.name}'; {fix}.",
                         param=param, code="context_length_exceeded")


def inference_submit(*, principal, base_model, version=None, prompt="", messages=(), sampling, api, request_id=None,
                     max_tokens_param="max_tokens"):
    """Places the request, writes its row and sends the runtime task after commit. Returns the row. The quotas
    come from the tenant's plan: the account read here serves the spend cap too (no query more per submit)."""
    principal.require("infer")
    account = account_for(principal.tenant)
    limits = plan_limits(principal.tenant, account=account)
    sampling = sampling_within_plan(sampling, limits, param=max_tokens_param)
    check_context(base_model, prompt=prompt, messages=messages, max_tokens=sampling["max_tokens"])
    check_spend(principal.tenant, account=account)  # 402 once this month's spend reached the cap (billing/caps.py)
    args = (principal, base_model, version, prompt, messages, sampling, api, request_id, limits)
    try:
        try:
            return _submit(*args)
        except Throttled:
            # Rows whose answer was delivered but whose final the control plane has not recorded yet (it lags, e.g.
            # while it reconnects after a broker restart) hold the quota: record those from their streams, and if
            # any ended, try once more.
            if not answered_meanwhile(principal.tenant):
                raise
            return _submit(*args)
    except NoCapacity as exc:
        record_scale_up(exc)
        raise


def _submit(principal, base_model, version, prompt, messages, sampling, api, request_id, limits):
    tenant = principal.tenant
    # Placement only reads (nodes, the tenant's recent requests): outside the write transaction, which then
    # holds its lock (SQLite: the whole database) for the quota check and the insert alone.
    try:
        node, no_capacity = place(tenant=tenant, base_model=base_model, version=version), None
    except NoCapacity as exc:
        node, no_capacity = None, exc
    with transaction.atomic():
        if connection.features.has_select_for_update:  # SQLite: the transaction already holds the write lock
            # Lock the tenant row so two concurrent submits cannot both slip under the concurrency quota.
            type(tenant).objects.select_for_update().filter(pk=tenant.pk).first()
        active = InferenceRequest.objects.filter(tenant=tenant, status__in=ACTIVE).count()
        if active >= limits.max_concurrent_requests:
            raise Throttled(wait=1, detail=f"{active} requests are in progress, the limit of "
                                           f"{limits.max_concurrent_requests} concurrent requests on the plan "
                                           f"'{limits.plan}'; retry when one finishes or upgrade the plan.")
        if no_capacity is not None:  # after the quota: a throttled request is no scale-up signal
            raise no_capacity
        tier = version.adapter.tier if version is not None else Adapter.COLD
        request_id = request_id or new_request_id()
        payload = infer_payload(request_id=request_id, prompt=prompt, messages=messages, sampling=sampling,
                                adapter=adapter_ref(version) if version is not None else None,
                                tenant=f"t{tenant.pk}", base_model=base_model.name)
        row = InferenceRequest.objects.create(
            id=request_id, tenant=tenant, api_key=principal.api_key, user=principal.user,
            base_model=base_model, adapter_version=version, tier=tier, api=api, node=node,
            max_tokens=sampling["max_tokens"], payload=payload,
        )

        def fail(code, message):
            InferenceRequest.objects.filter(pk=row.id, status=InferenceRequest.QUEUED).update(
                status=InferenceRequest.FAILED, finish_reason="error", error_code=code, error_message=message,
                finished_at=timezone.now())

        def send():
            # Committed, but if the broker did not take it no node will ever see it: the row ends now (nothing
            # billed, never left queued), and the client hears why.
            try:
                runtime_client.send_infer(payload, node_name=node.name, task_id=row.id)
            except REDIS_DOWN:
                fail("broker_unavailable", "The broker (Redis) did not take the request; retry it.")
                raise redis_unavailable() from None
            except Exception:
                fail("dispatch_failed", "The request could not be sent to a runtime node.")
                raise

        transaction.on_commit(send)
    return row


def inference_start(*, request_id, node_name, attempt=1):
    """A node took the request: queued -> running (never back from a terminal state, and never for an attempt
    that failover has superseded: that node was lost)."""
    from fleet.models import Node

    node = Node.objects.filter(name=node_name).first()
    InferenceRequest.objects.filter(pk=request_id, status=InferenceRequest.QUEUED, attempt=attempt).update(
        status=InferenceRequest.RUNNING, **({"node": node} if node else {}))


def inference_finish(*, request_id, final):
    """Records the runtime's final event once; a redelivered or duplicate event changes nothing."""
    status = finish_status(final.get("finish_reason"))
    usage, timings, error = final.get("usage") or {}, final.get("timings") or {}, final.get("error") or {}
    with transaction.atomic():
        row = InferenceRequest.objects.select_for_update().filter(pk=request_id).first()
        if row is None or row.status in InferenceRequest.TERMINAL:
            return row
        if final.get("attempt", 1) != row.attempt:  # a superseded attempt's (fleet/failover.py)
            return row
        row.status = status
        row.finish_reason = final.get("finish_reason") or ""
        row.prompt_tokens = usage.get("prompt_tokens", 0)
        row.completion_tokens = usage.get("completion_tokens", 0)
        row.cached_tokens = usage.get("cached_tokens", 0)
        row.queued_ms = timings.get("queued_ms")
        row.adapter_ready_ms = timings.get("adapter_ready_ms")
        row.first_token_ms = timings.get("first_token_ms")
        row.total_ms = timings.get("total_ms")
        row.gpu_ms = final.get("gpu_ms")
        row.error_code = (error.get("code") or "")[:64]
        row.error_message = (error.get("message") or "")[:500]
        guarantee = settings.VAJRA_TIER_READY_MS[row.tier]
        row.guarantee_broken = row.adapter_version_id is not None and (row.adapter_ready_ms or 0) > guarantee
        row.finished_at = timezone.now()
        row.payload = None  # the prompt was kept for failover only
        row.save()
        record_inference(row)  # its ledger rows, in this transaction: billed once, with the finish
    return row


def stale_final(timeout_s, attempt=1):
    return {"finish_reason": "error", "attempt": attempt, "usage": None, "timings": None, "gpu_ms": None, "error": {
        "code": "node_timeout", "message": f"No runtime node finished the request within {timeout_s} s (a node or "
                                           "the broker may have restarted and lost it); retry it."}}


def stream_append(request_id, kind, data):
    """An entry the control plane adds to a request's stream itself (a failover's retry, an end no node wrote)."""
    from vajra.redis import get_redis

    key = stream_key(request_id)
    pipe = get_redis().pipeline()
    pipe.xadd(key, {"type": kind, "data": json.dumps(data)})
    pipe.expire(key, settings.VAJRA_STREAM_TTL_SECONDS)
    pipe.execute()


def finals_from_streams(*, limit=500):
    """Records the final event of each request still active VAJRA_FINAL_RECONCILE_SECONDS after it began whose
    Redis Stream already ends with it: the node finished it, but the control task carrying the final was lost (a
    control worker killed after taking the message off its queue and before recording it: kombu's Redis transport
    holds the message nowhere in between). Billed once, as from that task: ``inference_finish`` records a final
    once, whoever brings it. A stream that ends otherwise (still answering, a failover's retry, another attempt's
    final) is left alone. Returns how many rows it ended."""
    cutoff = timezone.now() - timedelta(seconds=settings.VAJRA_FINAL_RECONCILE_SECONDS)
    rows = list(InferenceRequest.objects.filter(status__in=ACTIVE, created_at__lt=cutoff)
                .order_by("created_at").values_list("pk", "attempt")[:limit])
    ended = _record_finals(rows)
    for request_id in ended:
        log.warning("request %s: recorded its final event from its stream (the task carrying it was lost)",
                    request_id)
    return len(ended)


def answered_meanwhile(tenant):
    """Records the finals already on the streams of the tenant's active requests (see finals_from_streams);
    how many ended. Redis away: none."""
    rows = list(InferenceRequest.objects.filter(tenant=tenant, status__in=ACTIVE).values_list("pk", "attempt"))
    try:
        return len(_record_finals(rows))
    except REDIS_DOWN:
        return 0


def _record_finals(rows):
    """(request id, attempt) pairs -> the ids ended by the final event their stream ends with (one round trip)."""
    from vajra.redis import get_redis

    if not rows:
        return []
    pipe = get_redis().pipeline(transaction=False)
    for request_id, _ in rows:
        pipe.xrevrange(stream_key(request_id), count=1)
    ended = []
    for (request_id, attempt), last in zip(rows, pipe.execute(), strict=True):
        final = final_of(last)
        if final is None or final.get("attempt", 1) != attempt:
            continue
        row = inference_finish(request_id=request_id, final=final)
        if row is not None and row.status in InferenceRequest.TERMINAL:
            ended.append(request_id)
    return ended


def inference_expire_stale(*, limit=500):
    """Fails requests still queued or running past VAJRA_REQUEST_TIMEOUT_SECONDS: a broker that restarted without
    its data lost their task or their node's answer, and nothing else would ever end them. Bills nothing (no work
    is known). Each row in its own transaction (inference_finish), at most ``limit`` per run; the final event goes
    to the request's stream after commit, so a client still waiting gets it."""
    timeout_s = settings.VAJRA_REQUEST_TIMEOUT_SECONDS
    cutoff = timezone.now() - timedelta(seconds=timeout_s)
    rows = list(InferenceRequest.objects.filter(status__in=ACTIVE, created_at__lt=cutoff)
                .order_by("created_at").values_list("pk", "attempt")[:limit])
    expired = 0
    for request_id, attempt in rows:
        final = stale_final(timeout_s, attempt)
        if getattr(inference_finish(request_id=request_id, final=final), "error_code", "") != "node_timeout":
            continue
        expired += 1
        try:
            stream_append(request_id, "final", final)
        except REDIS_DOWN:
            log.warning("could not tell the client of %s that it expired: Redis unavailable", request_id)
    return expired


def versions_in_requests():
    """Adapter versions a request in progress runs on: their files stay (adapters.storage_quota)."""
    return Exists(InferenceRequest.objects.filter(adapter_version=OuterRef("pk"), status__in=ACTIVE))
