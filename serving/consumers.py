"""The playground's websocket, ws/v1/playground/: chat with a base model or one of the tenant's adapters, the
runtime's tokens relayed live from the request's Redis Stream.

Client to server (after authentication, see tenants/ws.py):
    {"type": "chat", "model": "<base id | adapter | adapter@vN>", "messages": [{"role", "content"}, ...],
     "temperature", "top_p", "max_tokens", "seed", "stop"}   the whole history each time (the chat template);
                                                             the sampling parameters of inference/parameters.py
    {"type": "stop"}                                         cancel the running generation
    {"type": "resume", "request_id": "req_...", "last_id": "<entry id>"}   relay again after that entry
    {"type": "ping"}
Server to client:
    {"type": "welcome", "tenant"}
    {"type": "start", "request_id", "model", "adapter", "tier", "cost", "resumed"}
    {"type": "delta", "request_id", "id": "<entry id>", "text"}   (the id is what resume takes)
    {"type": "retry", "request_id", "id", "attempt", "node", "reason"}   its node was lost: the answer starts over
    {"type": "done", "request_id", "finish_reason", "usage", "timings", "gpu_ms", "cost", "error"}
    {"type": "error", "error": {"message", "type", "param", "code"}}   the socket stays open; a chat refused
        for its fields also lists each bad field in "error"."errors" ([{"param", "message", "code"}, ...])
    {"type": "pong"}

One generation at a time per socket. Stop and disconnect both set the request's cancel flag; after a stop
the relay goes on until the runtime's final event, so the client learns how many tokens were generated
(only those count). Refusals write no row and send no task.
"""

import asyncio
import json
import logging
from types import SimpleNamespace

from channels.db import database_sync_to_async
from django.http import Http404
from rest_framework import serializers
from rest_framework.exceptions import APIException, Throttled

from adapters.access import access_adapter_version, access_base_model
from fleet.placement import NoCapacity
from tenants.active import active_membership
from tenants.keys import principal_from_key, principal_from_membership
from tenants.limits import rate_limit_wait
from tenants.ws import TenantConsumer
from vajra.errors import InvalidRequest, error_response

from . import access, parameters, relay
from .dispatch import cost_for, final_cost_of, inference_submit, on_submit_thread
from .v1 import CHARS_PER_TOKEN_BOUND, SAMPLING_DEFAULTS, ParametersIn, Unavailable, version_label

log = logging.getLogger(__name__)

MAX_MESSAGES = 200


class MessageIn(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "user", "assistant"])
    content = serializers.CharField(trim_whitespace=False, allow_blank=True, max_length=1_000_000)

    def to_internal_value(self, data):
        if isinstance(data, dict) and set(data) - {"role", "content"}:
            raise serializers.ValidationError("A message has only 'role' and 'content'.", code="unknown_field")
        return super().to_internal_value(data)


class ChatIn(ParametersIn):
    """A chat turn: the sampling parameters with exactly the /v1 API's limits, plus the model and history."""

    type = serializers.ChoiceField(choices=["chat"])
    model = serializers.CharField(max_length=80)
    messages = serializers.ListField(child=MessageIn(), min_length=1, max_length=MAX_MESSAGES)

    def validate_messages(self, messages):
        last = messages[-1]
        if last["role"] != "user" or not last["content"].strip():
            raise serializers.ValidationError("The last message must be the user's, and not empty.",
                                              code="invalid_messages")
        return messages


class ResumeIn(serializers.Serializer):
    type = serializers.ChoiceField(choices=["resume"])
    request_id = serializers.CharField(max_length=40)
    last_id = serializers.CharField(max_length=41, default="0")

    def validate_last_id(self, value):
        return relay.checked_last_id(value, param="last_id")


def error_event(exc):
    """An exception as the one error shape (the same body the HTTP API would answer)."""
    return {"type": "error", **json.loads(error_response(exc).content)}


def resolve_model(*, tenant, ref):
    """(base model, adapter version or None) for a base model id or one of the tenant's adapter refs. Base
    models come first: a tenant's adapter cannot shadow the platform's models."""
    try:
        return access_base_model(name=ref), None
    except Http404:
        version = access_adapter_version(tenant=tenant, ref=ref)
        return version.adapter.base_model, version


def chat_submit(principal, content):
    """Validates a chat message and submits it; (row, last id "0", start event). Everything that can refuse runs before
    inference_submit writes the row."""
    principal.require("infer")
    chat = ChatIn(data=content)
    if not chat.is_valid():
        raise parameters.refusal(chat.errors, each=True)
    data = chat.validated_data
    base_model, version = resolve_model(tenant=principal.tenant, ref=data["model"])
    if sum(len(m["content"]) for m in data["messages"]) > base_model.context_length * CHARS_PER_TOKEN_BOUND:
        raise InvalidRequest(f"The conversation is longer than the context of {base_model.context_length} tokens; "
                             "start a new chat.", param="messages", code="context_length_exceeded")
    wait = rate_limit_wait(principal)
    if wait:
        raise Throttled(wait=wait)
    try:
        row = inference_submit(principal=principal, base_model=base_model, version=version,
                               messages=[dict(m) for m in data["messages"]],
                               sampling=parameters.sampling(data, SAMPLING_DEFAULTS), api="playground")
    except NoCapacity as exc:
        raise Unavailable(str(exc), exc.retry_after) from None
    return row, "0", start_event(row, resumed=False)


def resume_access(principal, content):
    """The caller's own request to relay again: (row, last id, start event)."""
    principal.require("infer")
    resume = ResumeIn(data=content)
    if not resume.is_valid():
        raise serializers.ValidationError(resume.errors)
    row = access.access_inference_request(tenant=principal.tenant, request_id=resume.validated_data["request_id"])
    return row, resume.validated_data["last_id"], start_event(row, resumed=True)


def start_event(row, *, resumed):
    return {"type": "start", "request_id": row.id, "model": row.base_model.name, "adapter": version_label(row),
            "tier": row.tier, "cost": cost_for(row), "resumed": resumed}


class PlaygroundConsumer(TenantConsumer):
    generation = None  # the asyncio task relaying the running request's stream
    request_id = None
    finished = True

    async def authorized(self, principal):
        principal.require("infer")
        await self.send_json({"type": "welcome", "tenant": principal.tenant.slug})

    @database_sync_to_async
    def _resolve_principal(self, key, user):
        if key is not None:
            return principal_from_key(key)
        # The dashboard's active tenant (the one the page shows), not just the member's first tenant.
        return principal_from_membership(active_membership(SimpleNamespace(user=user, session=self.scope["session"])))

    async def receive_json(self, content, **kwargs):
        kind = content.get("type")
        try:
            if kind == "chat":
                await self._start(chat_submit, content, submit=True)
            elif kind == "resume":
                await self._start(resume_access, content)
            elif kind == "stop":
                if self.running:
                    await relay.cancel(self.request_id)
            elif kind == "ping":
                await self.send_json({"type": "pong"})
            else:
                raise InvalidRequest("Send a message of type chat, stop, resume or ping.", param="type",
                                     code="unknown_message")
        except (APIException, Http404) as exc:
            await self.send_json(error_event(exc))

    @property
    def running(self):
        return self.generation is not None and not self.generation.done()

    async def _start(self, prepare, content, *, submit=False):
        if self.running:
            raise InvalidRequest("A generation is running on this socket; stop it or wait for it to finish.",
                                 code="generation_running")
        if submit:  # to the submit threads, not Channels' database thread (one per process, for every socket)
            row, last_id, start = await on_submit_thread(prepare, self.principal, content)
        else:
            row, last_id, start = await database_sync_to_async(prepare)(self.principal, content)
        self.request_id, self.finished = row.id, False
        await self.send_json(start)
        self.generation = asyncio.create_task(self._relay(row.id, last_id))

    async def _relay(self, request_id, last_id):
        try:
            async for entry_id, kind, data in relay.events(request_id, last_id):
                if kind == "delta":
                    await self.send_json({"type": "delta", "request_id": request_id, "id": entry_id,
                                          "text": data.get("text", "")})
                elif kind == "retry":  # its node was lost: the next attempt starts the answer over
                    await self.send_json({"type": "retry", "request_id": request_id, "id": entry_id, **data})
                elif kind == "final":
                    self.finished = True
                    await self.send_json({"type": "done", "request_id": request_id,
                                          "finish_reason": data.get("finish_reason"), "usage": data.get("usage"),
                                          "timings": data.get("timings"), "gpu_ms": data.get("gpu_ms"),
                                          "cost": await final_cost_of(request_id, data),
                                          "error": data.get("error")})
        except Exception:  # Redis went away: say so rather than leave the client waiting
            log.exception("playground relay of %s failed", request_id)
            await self.send_json({"type": "error", "request_id": request_id, "error": {
                "message": "Lost the token stream; resume with the last id you received.", "type": "api_error",
                "param": None, "code": "stream_failed"}})

    async def disconnect(self, code):
        # A client that leaves cancels its generation: only the tokens generated so far count.
        if self.running:
            self.generation.cancel()
        if self.request_id is not None and not self.finished:
            await relay.cancel(self.request_id)
