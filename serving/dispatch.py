"""Creating an inference request and sending it to its node, and its start on a node. Its end is recorded by the
one intake for finals (serving.finals).

The web's async entry points (``/v1/.../infer``, the OpenAI API, the playground) run the synchronous part of
a request (API key, rate limit, row, task) in one trip to a submit thread (``on_submit_thread``)."""

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, connections, transaction
from django.db.models import Exists, OuterRef
from rest_framework.exceptions import Throttled

from adapters.models import Adapter
from adapters.prompt_tokens import prompt_tokens
from adapters.services import adapter_ref
from billing.caps import check_spend
from billing.ledger import finished_price
from billing.plans import account_for, plan_limits, query_price
from fleet import runtime_client
from fleet.placement import NoCapacity, place, record_scale_up
from gpu_runtime.contract import Final, Timings, Usage, infer_payload
from vajra.errors import REDIS_DOWN, InvalidRequest, redis_unavailable

from .finals import DISPATCH, answered_meanwhile, record_final
from .models import InferenceRequest

log = logging.getLogger(__name__)
DEFAULT_MAX_TOKENS = 256  # when a request names none (or the plan's cap, if lower): a bounded default, no surprise
# HTTP status of a request whose final carries one of these error codes: the request's own input (its prompt, its
# parameters, its adapter's weights) caused it; every other runtime error is the platform's (502).
# grammar_error: the request's own schema or tools ran past what the matcher allows a step.
FINAL_ERROR_STATUS = {"context_length_exceeded": 400, "invalid_request": 400, "non_finite_logits": 422,
                      "grammar_error": 422}


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
    """A request's price under its tenant's plan, before it ends: its tier's units (billing.plans.query_price). A row
    fresh from ``inference_submit`` carries it already, priced with the account its submit read."""
    quote = getattr(row, "quote", None)
    return quote if quote is not None else query_price(row.tier, tenant=row.tenant_id)


def final_cost(row, final):
    """A finished request's price from its final event (its JSON): what its ledger row bills
    (billing.ledger.finished_price)."""
    return finished_price(tenant=row.tenant_id, tier=row.tier, created_at=row.created_at, final=final)


def request_cost(row):
    """A request's price as its row stands: what it is billed once it has ended, its quoted price before."""
    if row.status not in InferenceRequest.TERMINAL:
        return cost_for(row)
    return final_cost(row, Final(row.finish_reason, usage=Usage(completion_tokens=row.completion_tokens),
                                 timings=Timings(total_ms=row.total_ms), gpu_ms=row.gpu_ms).to_json())


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


def check_options(base_model, sampling, *, within=""):
    """400 for options the runtime would refuse once the base model and max_tokens are known: min_tokens past
    max_tokens, a logit_bias token outside the base model's vocabulary (named, as the runtime checks it too).
    ``within``: the object the parameters came in ("parameters" for /v1's), for the refusal's param."""
    param_prefix = f"{within}." if within else ""
    min_tokens = sampling.get("min_tokens", 0)
    if min_tokens > sampling["max_tokens"]:
        raise InvalidRequest(f"min_tokens is {min_tokens}, over max_tokens ({sampling['max_tokens']}); ask for at most "
                             "as many tokens as max_tokens allows.", param=f"{param_prefix}min_tokens",
                             code="min_tokens_exceeds_max_tokens")
    vocabulary = (base_model.architecture or {}).get("vocab_size")
    outside = [token for token in sampling.get("logit_bias", {}) if vocabulary and int(token) >= vocabulary]
    if outside:
        raise InvalidRequest(f"logit_bias names token {outside[0]}, outside the vocabulary of '{base_model.name}' "
                             f"(token ids 0 to {vocabulary - 1}).", param=f"{param_prefix}logit_bias",
                             code="invalid_token_id")


def check_context(base_model, *, prompt, messages, max_tokens, tools=()):
    """400 when the prompt and max_tokens together pass the base model's context, counted as the runtime counts
    (gpu_runtime/engine.py refuses the same); a web that cannot count leaves it to the runtime."""
    tokens = prompt_tokens(base_model, prompt=prompt, messages=messages, tools=tools)
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
                     max_tokens_param="max_tokens", tools=(), grammar=None):
    """Places the request, writes its row and sends the runtime task after commit. Returns the row. The quotas
    come from the tenant's plan: the account read here serves the spend cap too (no query more per submit).
    ``tools`` are shown in the prompt, ``grammar`` (gpu_runtime.grammar_spec.Grammar) constrains the answer."""
    principal.require("infer")
    account = account_for(principal.tenant)
    limits = plan_limits(principal.tenant, account=account)
    sampling = sampling_within_plan(sampling, limits, param=max_tokens_param)
    check_options(base_model, sampling, within=max_tokens_param.rpartition(".")[0])
    check_context(base_model, prompt=prompt, messages=messages, max_tokens=sampling["max_tokens"], tools=tools)
    check_spend(principal.tenant, account=account)  # 402 once this month's spend reached the cap (billing/caps.py)
    args = (principal, base_model, version, prompt, messages, sampling, api, request_id, limits, tools, grammar)
    try:
        try:
            row = _submit(*args)
        except Throttled:
            # Rows whose answer was delivered but whose final the control plane has not recorded yet (it lags, e.g.
            # while it reconnects after a broker restart) hold the quota: record those from their streams, and if
            # any ended, try once more.
            if not answered_meanwhile(principal.tenant):
                raise
            row = _submit(*args)
    except NoCapacity as exc:
        record_scale_up(exc)
        raise
    row.quote = query_price(row.tier, tenant=row.tenant_id, account=account)  # what cost_for(row) answers
    return row


def _submit(principal, base_model, version, prompt, messages, sampling, api, request_id, limits, tools, grammar):
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
        active = InferenceRequest.objects.filter(tenant=tenant, status__in=InferenceRequest.ACTIVE).count()
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
                                tenant=f"t{tenant.pk}", base_model=base_model.name, tools=tools, grammar=grammar)
        row = InferenceRequest.objects.create(
            id=request_id, tenant=tenant, api_key=principal.api_key, user=principal.user,
            base_model=base_model, adapter_version=version, tier=tier, api=api, node=node,
            max_tokens=sampling["max_tokens"], payload=payload,
        )

        def fail(code, message):
            record_final(row.id, Final.failed(code, message), source=DISPATCH)

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


def versions_in_requests():
    """Adapter versions a request in progress runs on: their files stay (adapters.storage_quota)."""
    return Exists(InferenceRequest.objects.filter(adapter_version=OuterRef("pk"), status__in=InferenceRequest.ACTIVE))
