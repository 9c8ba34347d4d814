"""OpenAI-compatible API, so the official clients work unmodified:

    POST /v1/chat/completions   messages rendered with the base model's chat template
    POST /v1/completions        a raw prompt
    GET  /v1/models             base models and the caller's adapters (``name`` and ``name@vN``)
    GET  /v1/models/{id}

``model`` is a base model id (the base alone) or one of the caller's adapters, ``name`` (its current
version) or ``name@vN``; a base model's id wins over an adapter of the same name. Parameters OpenAI
defines but VAJRA does not implement are accepted at their neutral default and refused otherwise, naming
the parameter; unknown fields are refused. Beside OpenAI's ``n``, ``logprobs``/``top_logprobs``,
``presence_penalty``, ``frequency_penalty`` and ``logit_bias``, the sampling takes vLLM's extensions ``top_k``,
``repetition_penalty`` and ``min_tokens`` (serving/parameters.py). Every refusal happens before a row is written or
a task sent, in OpenAI's error shape. Answers carry a ``vajra`` field: request id, adapter, tier, cost, timings.
"""

import json

from asgiref.sync import sync_to_async
from django.core.validators import ProhibitNullCharactersValidator
from django.http import Http404, JsonResponse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import NotFound

from adapters.access import access_adapter_version, access_base_model, tenant_adapters
from adapters.models import AdapterVersion, BaseModel
from fleet.placement import NoCapacity
from gpu_runtime.generation import MAX_CHOICES, MAX_TOP_LOGPROBS
from gpu_runtime.grammar_spec import MAX_TOOLS
from vajra.errors import InvalidRequest, error_body
from vajra.schema import documented, errors
from vajra.serializers import StrictSerializer

from . import parameters, relay
from .dispatch import cost_for, final_cost_of, final_error_status, inference_submit
from .openai_shapes import Envelope, choice_ends
from .parameters import NumberField, SamplingFields
from .structured import ToolCallIn, ToolCallReader, call_delta, output_of, tools_field
from .v1 import (
    CHARS_PER_TOKEN_BOUND,
    Unavailable,
    api_view,
    authorized_submit,
    check_prompt_length,
    deferred,
    read_json,
)
from .v1_schema import CHAT_STREAM, COMPLETION_STREAM, ChatCompletionOut, CompletionOut, ModelListOut, ModelOut

# Parameter -> the values that mean "off": accepted (and ignored) because clients send them routinely.
CHAT_NEUTRAL = {
    "functions": (None, []), "function_call": (None, "none", "auto"), "store": (None, False),
    "metadata": (None, {}), "service_tier": (None, "auto", "default"), "modalities": (None, ["text"]),
    "audio": (None,), "prediction": (None,), "reasoning_effort": (None,), "verbosity": (None,),
    "web_search_options": (None,), "prompt_cache_retention": (None,), "prompt_cache_options": (None,),
}
COMPLETION_NEUTRAL = {"best_of": (None, 1), "echo": (None, False), "suffix": (None, "")}
MAX_COMPLETION_LOGPROBS = 5  # the legacy completions API's bound on logprobs
# A message echoed back from an earlier answer carries these, empty.
MESSAGE_NEUTRAL = {"refusal": (None,), "function_call": (None,), "audio": (None,), "annotations": (None, [])}
IGNORED = {"user", "safety_identifier", "prompt_cache_key"}  # hints about the caller, nothing to do with them


def is_neutral(value, accepted):
    # bool is an int in Python: true must not pass for 1, nor false for 0
    return any(value == ok and isinstance(value, bool) == isinstance(ok, bool) for ok in accepted)


def strip_neutral(data, neutral):
    """Drops the known parameters that are at their neutral value; refuses those that are not."""
    if not isinstance(data, dict):
        return data
    for name in sorted(set(data) & set(neutral)):
        if not is_neutral(data[name], neutral[name]):
            accepted = " or ".join(json.dumps(ok) for ok in neutral[name] if ok is not None) or "null"
            raise serializers.ValidationError({name: [f"{name}={json.dumps(data[name])} is not supported; VAJRA "
                                                      f"accepts only {accepted} (or leaving it out)."]},
                                              code="unsupported_value")
    return {k: v for k, v in data.items() if k not in neutral and k not in IGNORED}


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": {
    "type": "object", "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
    "required": ["type", "text"]}}]})
class ContentField(serializers.Field):
    """A string, or a list of text parts (joined by newlines, as vLLM does); no images or audio. No NUL, as in every
    string field: the request row cannot store one."""

    def __init__(self, **kwargs):
        super().__init__(validators=[ProhibitNullCharactersValidator()], **kwargs)

    def to_internal_value(self, data):
        if isinstance(data, str):
            return data
        if isinstance(data, list) and all(isinstance(p, dict) and set(p) == {"type", "text"} and p["type"] == "text"
                                          and isinstance(p["text"], str) for p in data):
            return "\n".join(p["text"] for p in data)
        raise serializers.ValidationError('content must be a string or a list of {"type": "text", "text": ...} '
                                          "parts; images, audio and files are not supported.")


class MessageIn(StrictSerializer):
    """A message of the conversation: an assistant's may carry the tool calls it made (its content then may be
    null), a tool's result names the call it answers."""

    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant", "tool"])
    content = ContentField(required=False, allow_null=True)
    name = serializers.CharField(required=False, max_length=64)
    tool_calls = serializers.ListField(child=ToolCallIn(), required=False, allow_null=True, max_length=MAX_TOOLS)
    tool_call_id = serializers.CharField(required=False, max_length=64)

    def to_internal_value(self, data):
        if isinstance(data, dict) and data.get("tool_calls") == []:
            data = {k: v for k, v in data.items() if k != "tool_calls"}  # an echoed answer without calls
        return super().to_internal_value(strip_neutral(data, MESSAGE_NEUTRAL))

    def validate(self, data):
        role, calls = data["role"], data.get("tool_calls")
        if calls and role != "assistant":
            raise serializers.ValidationError({"tool_calls": "only an assistant message carries tool_calls."})
        if (role == "tool") != ("tool_call_id" in data):
            raise serializers.ValidationError({"tool_call_id": "a tool message, and only a tool message, names the "
                                                               "tool_call_id it answers."})
        if data.get("content") is None and not calls:
            raise serializers.ValidationError({"content": "content is required (it may be null only in an "
                                                          "assistant message with tool_calls)."})
        return data


class StreamOptionsIn(StrictSerializer):
    include_usage = serializers.BooleanField(required=False, default=False)


class SamplingIn(StrictSerializer, SamplingFields):
    """The sampling parameters (serving/parameters.py; top_k is vLLM's extension) and the request's options."""

    model = serializers.CharField(max_length=200)
    n = NumberField(low=1, high=MAX_CHOICES, integer=True)
    max_completion_tokens = parameters.max_tokens_field()
    stream = serializers.BooleanField(required=False, allow_null=True, default=False)
    stream_options = StreamOptionsIn(required=False, allow_null=True)

    def validate(self, data):
        if None not in (data.get("max_tokens"), data.get("max_completion_tokens")) and \
                data["max_tokens"] != data["max_completion_tokens"]:
            raise serializers.ValidationError({"max_tokens": "Give max_completion_tokens or max_tokens, not two "
                                                             "different values."})
        return data


class ChatIn(SamplingIn):
    """With the structured output and tool fields of serving/structured.py."""

    messages = serializers.ListField(child=MessageIn(), min_length=1, max_length=2000)
    logprobs = serializers.BooleanField(required=False, allow_null=True, default=None)
    top_logprobs = NumberField(low=0, high=MAX_TOP_LOGPROBS, integer=True)

    def validate(self, data):
        data = super().validate(data)
        if data.get("top_logprobs") and not data.get("logprobs"):
            raise serializers.ValidationError({"top_logprobs": "top_logprobs needs logprobs: true."})
        # logprobs as the runtime and the legacy API count it: None for none, else the alternatives per token
        data["logprobs"] = (data.pop("top_logprobs", None) or 0) if data.get("logprobs") else None
        return data

    response_format = serializers.JSONField(required=False, allow_null=True)
    tools = tools_field()
    tool_choice = serializers.JSONField(required=False, allow_null=True)
    parallel_tool_calls = serializers.BooleanField(required=False, allow_null=True)  # one call per answer either way


class CompletionIn(SamplingIn):
    prompt = serializers.JSONField()
    logprobs = NumberField(low=0, high=MAX_COMPLETION_LOGPROBS, integer=True)

    def validate_prompt(self, value):
        if isinstance(value, list) and len(value) == 1:  # some clients always send a batch; one prompt is fine
            value = value[0]
        if not isinstance(value, str):
            raise serializers.ValidationError("prompt must be one string; batches and token ids are not supported.")
        ProhibitNullCharactersValidator()(value)
        return value


def validated(serializer_class, body, neutral):
    serializer = serializer_class(data=strip_neutral(body, neutral))
    if not serializer.is_valid():
        raise parameters.refusal(serializer.errors)
    return serializer.validated_data


SAMPLING_DEFAULTS = parameters.defaults(temperature=1.0)  # OpenAI's


def sampling_of(data):
    # max_tokens None: the default; OpenAI's is "the rest of the context", VAJRA's is bounded
    # (dispatch.sampling_within_plan)
    max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
    return {**parameters.sampling(data, SAMPLING_DEFAULTS), "max_tokens": max_tokens}


def model_not_found(name, reason):
    exc = NotFound(f"The model '{name}' does not exist or you do not have access to it ({reason.rstrip('.')}). "
                   "GET /v1/models lists the models you can use.", code="model_not_found")
    exc.param = "model"
    return exc


def resolve_model(principal, name):
    """(base model, adapter version or None) for a request's ``model``."""
    principal.require("infer")
    try:
        return access_base_model(name=name), None
    except Http404:
        pass
    try:
        version = access_adapter_version(tenant=principal.tenant, ref=name)
    except Http404 as exc:
        raise model_not_found(name, str(exc)) from None
    return version.adapter.base_model, version


def final_error(final, param):
    """(status, OpenAI error body) for a final event that is not an answer; None for an answer."""
    reason = (final or {}).get("finish_reason")
    if reason in ("stop", "length"):
        return None
    if reason == "cancelled":
        status, code, message = 409, "request_cancelled", "The request was cancelled before it finished."
    else:
        error = (final or {}).get("error") or {}
        code = error.get("code") or "runtime_error"
        status = final_error_status(code)
        message = error.get("message") or "The runtime failed to answer; retry, quoting the x-request-id."
    return status, error_body(message, status_code=status, code=code, param=param if status < 500 else None)


def _submit(principal, data, *, api, prompt="", messages=(), request_id=None, tools=(), grammar=None):
    base_model, version = resolve_model(principal, data["model"])
    if api == "chat":
        if len("".join(m["content"] for m in messages)) > base_model.context_length * CHARS_PER_TOKEN_BOUND:
            raise InvalidRequest(f"messages are longer than the context of {base_model.context_length} tokens; "
                                 "shorten them.", param="messages", code="context_length_exceeded")
    else:
        check_prompt_length(prompt, base_model)
    try:
        row = inference_submit(principal=principal, base_model=base_model, version=version, prompt=prompt,
                               messages=messages, sampling=sampling_of(data), api=api, request_id=request_id,
                               tools=tools, grammar=grammar,
                               max_tokens_param="max_completion_tokens" if data.get("max_completion_tokens")
                               else "max_tokens")
    except NoCapacity as exc:
        raise Unavailable(str(exc), exc.retry_after) from None
    label = f"{version.adapter.name}@v{version.number}" if version else None
    prefix = "chatcmpl-" if api == "chat" else "cmpl-"
    sampling = row.payload["sampling"]
    return Envelope(api=api, id=prefix + row.id, created=int(row.created_at.timestamp()), model=data["model"],
                    vajra={"request_id": row.id, "base_model": base_model.name, "adapter": label,
                           "tier": row.tier, "cost": cost_for(row)},
                    n=sampling.get("n", 1), logprobs=sampling.get("logprobs") is not None,
                    tool_calls=grammar is not None and grammar.type == "tool_call")


def sse_data(body):
    return f"data: {json.dumps(body)}\n\n".encode()


def stream_response(request_id, envelope, include_usage, param):
    async def stream():
        if envelope.api == "chat":
            for index in range(envelope.n):
                yield sse_data(envelope.chunk(index=index, role=True, include_usage=include_usage))
        sent = False
        offsets = [0] * envelope.n  # each choice's text so far, for completions' text_offset
        reader = ToolCallReader() if envelope.tool_calls else None  # one choice: n > 1 with tools is refused
        async for _, kind, data in relay.events(request_id):
            if kind == "keepalive":
                yield b": keep-alive\n\n"
            elif kind == "delta" and data.get("text") and reader is not None:
                for event in reader.feed(data["text"]):
                    sent = True
                    yield sse_data(envelope.chunk(delta=call_delta(event), include_usage=include_usage))
            elif kind == "delta" and (data.get("text") or data.get("logprobs")):
                sent = True
                index = relay.choice_index(data)
                logprobs = envelope.shaped_logprobs(data.get("logprobs"), offsets[index])
                offsets[index] += len(data["text"])
                yield sse_data(envelope.chunk(data["text"], index=index, logprobs=logprobs,
                                              include_usage=include_usage))
            elif kind == "retry" and not sent and reader is not None:
                reader = ToolCallReader()  # the answer starts over: so does reading it
            elif kind == "retry" and sent:
                # Its node was lost after part of the answer went out, and OpenAI chunks cannot take text back:
                # end with an error and cancel the retry. Before any text, the retry simply answers.
                yield sse_data(error_body(
                    f"The node answering was lost after part of the answer was sent ({data.get('reason')}); "
                    "send the request again.", status_code=502, code="node_lost"))
                yield b"data: [DONE]\n\n"
                await relay.cancel(request_id)
                return
            elif kind == "final":
                failed = final_error(data, param)
                if failed:
                    yield sse_data(failed[1])
                else:
                    ends = choice_ends(data, envelope.n)
                    if reader is not None:
                        for event in reader.finish():
                            yield sse_data(envelope.chunk(delta=call_delta(event), include_usage=include_usage))
                        ends[-1] = "tool_calls" if reader.call and ends[-1] == "stop" else ends[-1]
                    for index in range(envelope.n - 1):
                        yield sse_data(envelope.chunk(finish_reason=ends[index], index=index,
                                                      include_usage=include_usage))
                    yield sse_data(envelope.chunk(finish_reason=ends[-1], index=envelope.n - 1,
                                                  include_usage=include_usage, final=data,
                                                  cost=await final_cost_of(request_id, data)))
                    if include_usage:
                        yield sse_data(envelope.usage_chunk(data))
                yield b"data: [DONE]\n\n"

    return relay.event_stream_response(request_id, stream())


async def collect(request_id):
    """The whole answer: (its choices, final event). A client that gives up first cancels the generation."""
    final = None
    try:
        choices, final = await relay.answer_choices(request_id)
    finally:
        if final is None:
            await relay.cancel(request_id)
    return choices, final


def own_request_id(request):
    """The x-request-id this server made (not one the caller sent): used as the row's id, so the header,
    the logs, the row and the answer's id all name the same request."""
    rid = getattr(request, "request_id", None)
    return rid if rid and rid != request.headers.get("X-Request-ID") else None


def _submit_or_refuse(principal, refusal, data, api, fields, request_id):
    if refusal is not None:
        raise refusal
    return _submit(principal, data, api=api, request_id=request_id, **fields)


async def respond(request, raw_key, parse, *, api):
    """``parse()`` -> (validated data, prompt or messages); the key, the rate limit, a refusal of the body and
    the submit then run in one trip to a submit thread."""
    parsed, refusal = deferred(parse)
    data, fields = parsed or (None, {})
    envelope = await authorized_submit(request, raw_key, _submit_or_refuse, refusal, data, api, fields,
                                       own_request_id(request))
    param = "messages" if api == "chat" else "prompt"
    request_id = envelope.vajra["request_id"]
    if data.get("stream"):
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        return stream_response(request_id, envelope, include_usage, param)
    choices, final = await collect(request_id)
    failed = final_error(final, param)
    if failed:
        return JsonResponse(failed[1], status=failed[0])
    return JsonResponse(envelope.answer(choices, final, await final_cost_of(request_id, final)))


def contract_message(message):
    """A validated message in the runtime's shape (gpu_runtime.generation.message_ok)."""
    role = "system" if message["role"] == "developer" else message["role"]
    out = {"role": role, "content": message.get("content") or ""}
    if message.get("tool_calls"):
        out["tool_calls"] = [{"id": c["id"], "type": "function", "function": dict(c["function"])}
                             for c in message["tool_calls"]]
    if role == "tool":
        out["tool_call_id"] = message["tool_call_id"]
    return out


def chat_input(request):
    data = validated(ChatIn, read_json(request), CHAT_NEUTRAL)
    tools, grammar = output_of(data)
    if grammar is not None and grammar.type == "tool_call" and (data.get("n") or 1) > 1:
        raise InvalidRequest("n > 1 is not supported with tools that may be called: ask for one choice, or set "
                             "tool_choice to \"none\".", param="n", code="unsupported_value")
    if grammar is not None and data.get("stop"):  # a stop string would cut the JSON or the call short, unseen
        raise InvalidRequest("stop cannot be combined with response_format json_object or json_schema, nor with tools "
                             "that may be called: the answer ends where its grammar is complete.", param="stop",
                             code="unsupported_value")
    return data, {"messages": [contract_message(m) for m in data["messages"]], "tools": tools, "grammar": grammar}


def completion_input(request):
    data = validated(CompletionIn, read_json(request), COMPLETION_NEUTRAL)
    return data, {"prompt": data["prompt"]}


@documented(action="infer", post={"operation_id": "v1_chat_completions", "request": ChatIn, "responses": {
    (200, "application/json"): ChatCompletionOut, (200, "text/event-stream"): CHAT_STREAM,
    **errors(402, 404, 409, 422, 502)}})
@api_view({"POST"}, submits=True)
async def chat_completions(request, raw_key):
    return await respond(request, raw_key, lambda: chat_input(request), api="chat")


@documented(action="infer", post={"operation_id": "v1_completions", "request": CompletionIn, "responses": {
    (200, "application/json"): CompletionOut, (200, "text/event-stream"): COMPLETION_STREAM,
    **errors(402, 404, 409, 422, 502)}})
@api_view({"POST"}, submits=True)
async def completions(request, raw_key):
    return await respond(request, raw_key, lambda: completion_input(request), api="completions")


def base_card(base_model):
    return {"id": base_model.name, "object": "model", "created": int(base_model.created_at.timestamp()),
            "owned_by": "vajra"}


def adapter_card(model_id, version, tenant):
    return {"id": model_id, "object": "model", "created": int(version.created_at.timestamp()),
            "owned_by": tenant.slug, "parent": version.adapter.base_model.name}


def model_cards(principal):
    principal.require("infer")
    cards = [base_card(b) for b in BaseModel.objects.order_by("name")]
    for adapter in tenant_adapters(tenant=principal.tenant):
        version = adapter.current_version
        if version is not None and version.status == AdapterVersion.READY:
            version.adapter = adapter
            cards += [adapter_card(name, version, principal.tenant)
                      for name in (adapter.name, f"{adapter.name}@v{version.number}")]
    return cards


def model_card(principal, model_id):
    base_model, version = resolve_model(principal, model_id)
    if version is None:
        return base_card(base_model)
    name = version.adapter.name if "@" not in model_id else f"{version.adapter.name}@v{version.number}"
    return adapter_card(name, version, principal.tenant)


@documented(action="infer", get={"operation_id": "v1_models", "responses": {200: ModelListOut}})
@api_view({"GET"})
async def models_list(request, principal):
    return JsonResponse({"object": "list", "data": await sync_to_async(model_cards)(principal)})


@documented(action="infer", get={"operation_id": "v1_model", "responses": {200: ModelOut}})
@api_view({"GET"})
async def model_detail(request, principal, model_id):
    return JsonResponse(await sync_to_async(model_card)(principal, model_id))
