"""The paper's API (VAJRA Appendix A.1) as async views, so a streamed answer holds no thread:

    POST /v1/models/{model_id}/infer        {"prompt", "adapter_id", "parameters": {...}, "stream"}
    GET  /v1/models/{model_id}/versions     the caller's adapter versions for that base model
    GET  /v1/requests/{id}                  a request's row (status, usage, timings, cost)
    GET  /v1/requests/{id}/events           its SSE stream again, resuming after Last-Event-ID
    POST /v1/requests/{id}/cancel

Authentication is an API key (``Authorization: Bearer``). Every refusal happens before a row is written
or a task sent.
"""

import functools

from asgiref.sync import sync_to_async
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers
from rest_framework.exceptions import (
    APIException,
    MethodNotAllowed,
    NotAuthenticated,
    ParseError,
    Throttled,
    UnsupportedMediaType,
)

from adapters.access import access_adapter_version, access_base_model, tenant_versions
from fleet.placement import NoCapacity
from gpu_runtime.generation import MAX_CHOICES, MAX_TOP_LOGPROBS
from tenants.keys import principal_from_key
from tenants.limits import rate_limit_wait
from vajra import parsers
from vajra.errors import INFRASTRUCTURE_DOWN, InvalidRequest, error_response, redis_unavailable, unavailable
from vajra.schema import documented, errors
from vajra.serializers import StrictSerializer

from . import access, parameters, relay
from .dispatch import cost_for, final_cost_of, final_error_status, inference_submit, on_submit_thread, request_cost
from .openai_shapes import choice_ends
from .parameters import NumberField, SamplingFields
from .v1_schema import (
    FAILED_INFERENCE,
    INFERENCE_STREAM,
    LAST_EVENT_ID,
    CancelOut,
    InferenceOut,
    RequestOut,
    VersionsOut,
)

# A prompt past this many characters per token of context is too long for certain (BPE tokens average
# ~4 characters); the engine checks the exact token count and answers context_length_exceeded.
CHARS_PER_TOKEN_BOUND = 8


class Unavailable(APIException):
    status_code = 503
    default_code = "no_capacity"

    def __init__(self, detail, wait, code=None):
        super().__init__(detail, code)
        self.wait = wait


class ParametersIn(StrictSerializer, SamplingFields):
    """The sampling parameters (serving/parameters.py), nested as ``parameters``."""


class InferParametersIn(ParametersIn):
    """/infer's parameters also take ``n`` (choices: the answer's ``choices``) and ``logprobs`` (alternatives per
    token: the answer's ``logprobs``, in OpenAI's chat entries)."""

    n = NumberField(low=1, high=MAX_CHOICES, integer=True)
    logprobs = NumberField(low=0, high=MAX_TOP_LOGPROBS, integer=True)


class InferIn(StrictSerializer):
    prompt = serializers.CharField(trim_whitespace=False, max_length=1_000_000)
    adapter_id = serializers.CharField(required=False, allow_null=True, max_length=80, default=None)
    parameters = InferParametersIn(required=False)
    stream = serializers.BooleanField(default=False)


SAMPLING_DEFAULTS = parameters.defaults(temperature=0.7)


def sampling_from(data):
    return parameters.sampling(data or {}, SAMPLING_DEFAULTS)


def bearer_key(request):
    """The presented API key (header checks only: no database)."""
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if not header:
        raise NotAuthenticated("No API key was sent; this endpoint takes API keys, not a signed-in session.")
    if scheme.lower() != "bearer" or not raw.strip():
        raise ParseError("Malformed Authorization header; send 'Authorization: Bearer <api key>'.")
    return raw.strip()


def authorize(raw_key):
    """The key's principal, then the rate limit (401/403, then 429): synchronous, on a database thread."""
    principal = principal_from_key(raw_key)
    wait = rate_limit_wait(principal)
    if wait:
        raise Throttled(wait=wait)
    return principal


async def authenticate(request):
    return await sync_to_async(authorize)(bearer_key(request))


def own_thread(request):
    """True for a request that owns its thread (WSGI, Django's test client); an ASGI request has none worth
    keeping (Django runs each on a throwaway one), so its submit goes to the submit threads."""
    return getattr(request, "scope", None) is None


async def authorized_submit(request, raw_key, submit, *args):
    """``submit(principal, *args)`` after the key and the rate limit, all in one trip to a submit thread: each
    trip between the event loop and a thread costs latency on every request."""

    def job():
        return submit(authorize(raw_key), *args)

    return await on_submit_thread(job, own_thread=own_thread(request))


def read_json(request):
    if request.content_type != "application/json":
        raise UnsupportedMediaType(request.content_type or "none")
    return parsers.loads(request.body or b"null")


def api_view(methods, *, submits=False):
    """Async view wrapper: method check, API-key auth, errors in the one error shape. ``submits``: the view
    gets the raw key instead of a principal and authorizes it in its submit trip (``authorized_submit``)."""

    def wrap(view):
        async def handler(request, *args, **kwargs):
            try:
                if request.method not in methods:
                    raise MethodNotAllowed(request.method)
                credential = bearer_key(request) if submits else await authenticate(request)
                return await view(request, credential, *args, **kwargs)
            except (APIException, Http404) as exc:
                return error_response(exc, key_only=True)
            except INFRASTRUCTURE_DOWN as exc:  # a restarting database or Redis: 503, retry, never a 500
                return error_response(unavailable(exc), key_only=True)

        functools.update_wrapper(handler, view)  # its name, module and docstring (the operation's description)
        handler.methods = frozenset(methods)  # what it serves, for the schema's completeness test
        handler.key_only = True  # API keys alone: no session, CSRF or user middleware (vajra.page_middleware)
        return csrf_exempt(handler)

    return wrap


def deferred(parse):
    """(the parsed input, None), or (None, the refusal) to raise after authentication: a bad key is a 401
    whatever the body, as when authentication ran first."""
    try:
        return parse(), None
    except APIException as exc:
        return None, exc


def check_prompt_length(prompt, base_model):
    if not prompt.strip():
        raise InvalidRequest("prompt must not be empty.", param="prompt", code="empty_prompt")
    limit = base_model.context_length * CHARS_PER_TOKEN_BOUND
    if len(prompt) > limit:
        raise InvalidRequest(f"prompt is longer than the context of {base_model.context_length} tokens; shorten it.",
                             param="prompt", code="context_length_exceeded")


def _submit(principal, model_id, data):
    base_model = access_base_model(name=model_id)
    version = None
    if data.get("adapter_id"):
        version = access_adapter_version(tenant=principal.tenant, ref=data["adapter_id"])
        if version.adapter.base_model_id != base_model.pk:
            raise InvalidRequest(f"Adapter '{version.adapter.name}' is for base model "
                                 f"'{version.adapter.base_model.name}', not '{base_model.name}'.",
                                 param="adapter_id", code="base_mismatch")
    check_prompt_length(data["prompt"], base_model)
    try:
        return inference_submit(principal=principal, base_model=base_model, version=version, prompt=data["prompt"],
                                sampling=sampling_from(data.get("parameters")), api="infer",
                                max_tokens_param="parameters.max_tokens")
    except NoCapacity as exc:
        raise Unavailable(str(exc), exc.retry_after) from None


def _submit_and_describe(principal, model_id, data, refusal=None):
    if refusal is not None:
        raise refusal
    row = _submit(principal, model_id, data)
    return describe(row, version_label(row))


def describe(row, version_label):
    return {"id": row.id, "object": "inference", "model": row.base_model.name, "adapter": version_label,
            "tier": row.tier, "cost": cost_for(row)}


def version_label(row):
    version = row.adapter_version
    return f"{version.adapter.name}@v{version.number}" if version else None


def final_body(head, final, choices=None, cost=None):
    """The answer's end: ``choices`` (serving.relay.Choice) give its text (the first's), its logprobs when asked for,
    and with several each one's text and end; ``cost`` is what the request is billed (``final_cost_of``), in place
    of the head's quote."""
    body = dict(head)
    if choices is not None:
        body["text"] = choices[0].text
        if choices[0].logprobs is not None:
            body["logprobs"] = choices[0].logprobs
        if len(choices) > 1:
            ends = choice_ends(final, len(choices)) if final else [None] * len(choices)
            body["choices"] = [{"index": i, "text": c.text, "finish_reason": ends[i],
                                **({"logprobs": c.logprobs} if c.logprobs is not None else {})}
                               for i, c in enumerate(choices)]
    if cost is not None:
        body["cost"] = cost
    body.update({"finish_reason": final.get("finish_reason"), "usage": final.get("usage"),
                 "timings": final.get("timings"), "gpu_ms": final.get("gpu_ms")})
    if final.get("error"):
        body["error"] = final["error"]
    return body


def sse_response(request_id, head, last_id="0"):
    async def stream():
        yield relay.sse("", "request", head)
        async for entry_id, kind, data in relay.events(request_id, last_id):
            if kind == "keepalive":
                yield b": keep-alive\n\n"
            elif kind == "final":
                cost = await final_cost_of(request_id, data)
                yield relay.sse(entry_id, "done", final_body(head, data, cost=cost))
            else:
                yield relay.sse(entry_id, kind, data)

    return relay.event_stream_response(request_id, stream())


def infer_input(request):
    serializer = InferIn(data=read_json(request))
    if not serializer.is_valid():
        raise parameters.refusal(serializer.errors)
    return serializer.validated_data


@documented(action="infer", post={"operation_id": "v1_infer", "request": InferIn, "responses": {
    (200, "application/json"): InferenceOut, (200, "text/event-stream"): INFERENCE_STREAM, **errors(402),
    # a request the runtime failed answers the Inference shape with its error (dispatch.final_error_status)
    **{status: FAILED_INFERENCE for status in (400, 422, 502)}}})
@api_view({"POST"}, submits=True)
async def infer(request, raw_key, model_id):
    data, refusal = deferred(lambda: infer_input(request))
    head = await authorized_submit(request, raw_key, _submit_and_describe, model_id, data, refusal)
    row_id = head["id"]
    if data["stream"]:
        return sse_response(row_id, head)
    choices, final = await relay.answer_choices(row_id)
    status = 200
    error = (final or {}).get("error")
    if error:
        status = final_error_status(error.get("code"))
    cost = await final_cost_of(row_id, final) if final is not None else None
    return JsonResponse(final_body(head, final, choices, cost=cost), status=status)


@documented(action="infer", get={"operation_id": "v1_versions", "responses": {200: VersionsOut}})
@api_view({"GET"})
async def versions(request, principal, model_id):
    def listing():
        base_model = access_base_model(name=model_id)
        principal.require("infer")
        return [{"adapter": v.adapter.name, "version": v.number, "id": f"{v.adapter.name}@v{v.number}",
                 "current": v.adapter.current_version_id == v.pk, "status": v.status, "tier": v.adapter.tier,
                 "rank": v.rank, "target_modules": v.target_modules, "sha256": v.sha256, "size_bytes": v.size_bytes,
                 "created_at": v.created_at.isoformat()}
                for v in tenant_versions(tenant=principal.tenant, base_model=base_model)]

    return JsonResponse({"object": "list", "model": model_id, "data": await sync_to_async(listing)()})


def request_json(row):
    return {"id": row.id, "status": row.status, "model": row.base_model.name, "tier": row.tier,
            "adapter_version_id": row.adapter_version_id, "node": row.node.name if row.node else None,
            "finish_reason": row.finish_reason, "error": {"code": row.error_code, "message": row.error_message}
            if row.error_code else None,
            "usage": {"prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
                      "cached_tokens": row.cached_tokens},
            "timings": {"queued_ms": row.queued_ms, "adapter_ready_ms": row.adapter_ready_ms,
                        "first_token_ms": row.first_token_ms, "total_ms": row.total_ms},
            "gpu_ms": row.gpu_ms, "guarantee_broken": row.guarantee_broken, "cost": request_cost(row),
            "created_at": row.created_at.isoformat(),
            "finished_at": row.finished_at.isoformat() if row.finished_at else None}


def _row(principal, request_id):
    principal.require("infer")
    row = access.access_inference_request(tenant=principal.tenant, request_id=request_id)
    return row, request_json(row), version_label(row)


@documented(action="infer", get={"operation_id": "v1_request", "responses": {200: RequestOut}})
@api_view({"GET"})
async def request_detail(request, principal, request_id):
    _, body, _ = await sync_to_async(_row)(principal, request_id)
    return JsonResponse(body)


@documented(action="infer", get={"operation_id": "v1_request_events", "parameters": [LAST_EVENT_ID],
                                  "responses": {(200, "text/event-stream"): INFERENCE_STREAM, **errors(400)}})
@api_view({"GET"})
async def request_events(request, principal, request_id):
    last_id = relay.checked_last_id(request.headers.get("Last-Event-ID") or "0", param="Last-Event-ID")
    row, _, label = await sync_to_async(_row)(principal, request_id)
    return sse_response(row.id, describe(row, label), last_id)


@documented(action="infer", post={"operation_id": "v1_request_cancel", "request": None,
                                  "responses": {202: CancelOut}})
@api_view({"POST"})
async def request_cancel(request, principal, request_id):
    _, body, _ = await sync_to_async(_row)(principal, request_id)
    if not await relay.cancel(request_id):
        return error_response(redis_unavailable())
    return JsonResponse({**body, "cancel_requested": True}, status=202)
