"""OpenAPI shapes of the /v1 inference answers, field for field as serving/v1.py and serving/openai_api.py build
them (and the runtime's final event they pass on, gpu_runtime.contract.Final); the views carry their operations with
``vajra.schema.documented``."""

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, PolymorphicProxySerializer
from rest_framework import serializers

from adapters.models import AdapterVersion
from billing.plans import TIERS
from gpu_runtime.contract import FINISH_REASONS
from vajra.schema import ErrorOut, again, constant, enum, event_stream, listing, shape

from .models import InferenceRequest

REQUEST_STATUSES = tuple(status for status, _ in InferenceRequest.STATUS_CHOICES)
VERSION_STATUSES = (AdapterVersion.VALIDATING, AdapterVersion.READY, AdapterVersion.FAILED)

Price = shape("Price", {
    "units": serializers.IntegerField(help_text="The tier's units (0 when the request is not billed)."),
    "micro_usd": serializers.IntegerField(help_text="The amount in integer micro-dollars, rounded half-even."),
    "usd": serializers.CharField(help_text="The exact amount in dollars, to the ledger's 10 places."),
    "plan": serializers.CharField(help_text="The price plan that priced it.")},
    help_text="A query's price under the tenant's plan (billing.plans.price_json): its tier's units before it ends, "
              "what it is billed (units and GPU time) after.")


# The runtime's final event (gpu_runtime.contract.Final): a request that ended before it ran leaves out what it has
# not got (its usage's cached_tokens, its timings).
FinalUsage = shape("FinalUsage", {
    "prompt_tokens": serializers.IntegerField(), "completion_tokens": serializers.IntegerField(),
    "cached_tokens": serializers.IntegerField(required=False, help_text="Prompt tokens read from the prefix cache.")},
    allow_null=True)
FinalTimings = shape("FinalTimings", {
    "queued_ms": serializers.FloatField(required=False), "adapter_ready_ms": serializers.FloatField(required=False),
    "first_token_ms": serializers.FloatField(required=False, allow_null=True, help_text="null when no token came."),
    "total_ms": serializers.FloatField(required=False)},
    allow_null=True, help_text="Milliseconds from the request's arrival on its node.")
RequestError = shape("InferenceError", {
    "code": serializers.CharField(), "message": serializers.CharField()}, allow_null=True)

HEAD_FIELDS = {
    "id": serializers.CharField(help_text="The request's id (GET /v1/requests/{id})."),
    "object": constant("inference"), "model": serializers.CharField(help_text="The base model."),
    "adapter": serializers.CharField(allow_null=True, help_text="The adapter version, name@vN; null for the base."),
    "tier": enum(*TIERS), "cost": Price,
}
FINAL_FIELDS = {
    "finish_reason": enum(*FINISH_REASONS, allow_null=True), "usage": FinalUsage,
    "timings": FinalTimings, "gpu_ms": serializers.FloatField(allow_null=True),
    "error": again(RequestError, required=False, help_text="The runtime's error, when it failed."),
}
# A generated token's logprob entry (gpu_runtime.logprobs), OpenAI's chat shape
TopLogprob = shape("TopLogprob", {
    "token": serializers.CharField(), "logprob": serializers.FloatField(),
    "bytes": serializers.ListField(child=serializers.IntegerField(), help_text="The token's UTF-8 bytes.")})
TokenLogprob = shape("TokenLogprob", {
    "token": serializers.CharField(), "logprob": serializers.FloatField(),
    "bytes": serializers.ListField(child=serializers.IntegerField()),
    "top_logprobs": again(TopLogprob, many=True, help_text="The most likely tokens, most likely first.")},
    help_text="The log-softmax of the logits the token was sampled from, after the request's options and before "
              "temperature, top-k and top-p.")
InferenceChoice = shape("InferenceChoice", {
    "index": serializers.IntegerField(), "text": serializers.CharField(),
    "finish_reason": enum(*FINISH_REASONS, allow_null=True),
    "logprobs": again(TokenLogprob, many=True, required=False)})
InferenceHead = shape("InferenceHead", HEAD_FIELDS)
InferenceOut = shape("Inference", {
    **HEAD_FIELDS, "text": serializers.CharField(help_text="The first choice's text."), **FINAL_FIELDS,
    "logprobs": again(TokenLogprob, many=True, required=False, help_text="With parameters.logprobs."),
    "choices": again(InferenceChoice, many=True, required=False, help_text="With parameters.n > 1.")},
    help_text="The answer; a request the runtime failed answers this shape too, with its error and the status it "
              "maps to (400, 422 or 502).")
InferenceDone = shape("InferenceDone", {**HEAD_FIELDS, **FINAL_FIELDS})
Delta = shape("InferenceDelta", {
    "text": serializers.CharField(), "attempt": serializers.IntegerField(required=False, help_text="After a retry."),
    "index": serializers.IntegerField(required=False, help_text="The choice, with parameters.n > 1 (0: left out)."),
    "logprobs": again(TokenLogprob, many=True, required=False,
                      help_text="With parameters.logprobs: the tokens this piece of text completes.")})
Retry = shape("InferenceRetry", {
    "attempt": serializers.IntegerField(), "node": serializers.CharField(), "reason": serializers.CharField()},
    help_text="The node answering was lost: the answer starts over from the next attempt's deltas.")
INFERENCE_STREAM = event_stream("InferenceEvent", {"request": InferenceHead, "delta": Delta, "retry": Retry,
                                                   "done": InferenceDone},
                                description="`request` first, `delta`s of the text, `retry` when the node "
                                            "answering was lost, `done` last; resumable with Last-Event-ID.")

# A refusal is the error shape; a request the runtime failed answers the Inference shape with its error, in the status
# its error code maps to (serving.dispatch.final_error_status).
FAILED_INFERENCE = OpenApiResponse(
    PolymorphicProxySerializer(component_name="InferenceRefusedOrFailed", serializers=[ErrorOut, InferenceOut],
                               resource_type_field_name=None),
    description="A refusal in the one error shape, or the answer of a request the runtime failed (its ``error``).")
LAST_EVENT_ID = OpenApiParameter("Last-Event-ID", str, OpenApiParameter.HEADER, description=(
    "Resume after this event id (the `id` of an event received); 0 or none: from the start."))

VersionsOut = listing("AdapterVersionList", shape("AdapterVersionItem", {
    "adapter": serializers.CharField(), "version": serializers.IntegerField(),
    "id": serializers.CharField(help_text="name@vN, as adapter_id and model take it."),
    "current": serializers.BooleanField(), "status": enum(*VERSION_STATUSES), "tier": enum(*TIERS),
    "rank": serializers.IntegerField(allow_null=True),
    "target_modules": serializers.ListField(child=serializers.CharField()),
    "sha256": serializers.CharField(), "size_bytes": serializers.IntegerField(),
    "created_at": serializers.DateTimeField()}), model=serializers.CharField())

REQUEST_FIELDS = {
    "id": serializers.CharField(), "status": enum(*REQUEST_STATUSES), "model": serializers.CharField(),
    "tier": enum(*TIERS), "adapter_version_id": serializers.IntegerField(allow_null=True),
    "node": serializers.CharField(allow_null=True), "finish_reason": serializers.CharField(allow_null=True),
    "error": RequestError,
    "usage": shape("InferenceRequestUsage", {
        "prompt_tokens": serializers.IntegerField(), "completion_tokens": serializers.IntegerField(),
        "cached_tokens": serializers.IntegerField()}),
    "timings": shape("InferenceRequestTimings", {
        name: serializers.FloatField(allow_null=True)
        for name in ("queued_ms", "adapter_ready_ms", "first_token_ms", "total_ms")}),
    "gpu_ms": serializers.FloatField(allow_null=True), "guarantee_broken": serializers.BooleanField(),
    "cost": Price, "created_at": serializers.DateTimeField(), "finished_at": serializers.DateTimeField(allow_null=True),
}
RequestOut = shape("InferenceRequest", REQUEST_FIELDS)
CancelOut = shape("InferenceRequestCancel", {**REQUEST_FIELDS,
                                                         "cancel_requested": serializers.BooleanField()})

# ---- the OpenAI-compatible API --------------------------------------------------------------------------------

OpenAIUsage = shape("CompletionUsage", {
    "prompt_tokens": serializers.IntegerField(), "completion_tokens": serializers.IntegerField(),
    "total_tokens": serializers.IntegerField(),
    "prompt_tokens_details": shape("PromptTokensDetails", {"cached_tokens": serializers.IntegerField()})})
VAJRA_FIELDS = {
    "request_id": serializers.CharField(), "base_model": serializers.CharField(),
    "adapter": serializers.CharField(allow_null=True, help_text="name@vN; null for the base model."),
    "tier": enum(*TIERS),
    "cost": Price, "timings": FinalTimings, "gpu_ms": serializers.FloatField(allow_null=True),
}
VajraExtension = shape("VajraExtension", VAJRA_FIELDS,
                                   help_text="VAJRA's own: the request, its adapter and tier, what it is billed, its "
                                             "timings.")
FINISH = {"finish_reason": enum("stop", "length", "tool_calls", allow_null=True),
          "logprobs": serializers.JSONField(allow_null=True, help_text=(
              "null unless the request asked for logprobs: chat's {content: [TokenLogprob], refusal}, completions' "
              "{tokens, token_logprobs, top_logprobs, text_offset}."))}
ANSWER_FIELDS = {"id": serializers.CharField(), "created": serializers.IntegerField(),
                 "model": serializers.CharField(help_text="The model as the request named it."),
                 "system_fingerprint": serializers.CharField(allow_null=True)}


def _completion(name, kind, choice_fields):
    return shape(name, {
        **ANSWER_FIELDS, "object": constant(kind),
        "choices": shape(f"{name}Choice", {"index": serializers.IntegerField(), **FINISH,
                                                       **choice_fields}, many=True),
        "usage": OpenAIUsage, "vajra": VajraExtension})


TOOL_CALL_FUNCTION = {"name": serializers.CharField(),
                      "arguments": serializers.CharField(help_text="JSON valid for the function's parameters.")}
ChatCompletionOut = _completion("ChatCompletion", "chat.completion", {"message": shape(
    "ChatCompletionMessage", {"role": constant("assistant"), "content": serializers.CharField(allow_null=True),
                              "refusal": serializers.CharField(allow_null=True),
                              "tool_calls": shape("ChatCompletionToolCall", {
                                  "id": serializers.CharField(help_text="call_..."), "type": constant("function"),
                                  "function": shape("ChatCompletionToolCallFunction", TOOL_CALL_FUNCTION)},
                                  many=True, required=False, help_text="When the answer is a tool call.")})})
CompletionOut = _completion("Completion", "text_completion", {"text": serializers.CharField()})


def _chunk(name, kind, choice_fields, help_text):
    return shape(name, {
        **ANSWER_FIELDS, "object": constant(kind),
        "choices": shape(f"{name}Choice", {"index": serializers.IntegerField(), **FINISH,
                                                       **choice_fields}, many=True),
        "usage": again(OpenAIUsage, required=False, allow_null=True,
                       help_text="With stream_options.include_usage: null on every chunk but the last."),
        "vajra": again(VajraExtension, required=False, help_text="On the chunk that ends the answer.")},
        help_text=help_text)


ChatCompletionChunk = _chunk("ChatCompletionChunk", "chat.completion.chunk", {"delta": shape(
    "ChatCompletionDelta", {"role": constant("assistant", required=False),
                            "content": serializers.CharField(required=False),
                            "tool_calls": shape("ChatCompletionToolCallDelta", {
                                "index": serializers.IntegerField(),
                                "id": serializers.CharField(required=False, help_text="On a call's first delta."),
                                "type": constant("function", required=False),
                                "function": shape("ChatCompletionToolCallFunctionDelta", {
                                    "name": serializers.CharField(required=False, help_text="On its first delta."),
                                    "arguments": serializers.CharField(required=False,
                                                                       help_text="The next piece of the JSON.")},
                                    required=False)},
                                many=True, required=False)})},
    "The first chunk gives the role, then a chunk per piece of text, then one with the finish_reason; with "
    "include_usage, a last one with no choices and the usage.")
CompletionChunk = _chunk("CompletionChunk", "text_completion", {"text": serializers.CharField()},
                         "A chunk per piece of text, then one with the finish_reason; with include_usage, a last one "
                         "with no choices and the usage.")


def openai_stream(name, chunk):
    return event_stream(name, {"chunk": chunk, "error": ErrorOut, "done": constant("[DONE]")},
                        data_only=True,
                        description="OpenAI's stream: blocks of `data:` alone, chunks, then `data: [DONE]`; a request "
                                    "that fails ends with an error body in place of the last chunk.")


CHAT_STREAM = openai_stream("ChatCompletionEvent", ChatCompletionChunk)
COMPLETION_STREAM = openai_stream("CompletionEvent", CompletionChunk)

MODEL_FIELDS = {"id": serializers.CharField(help_text="A base model, an adapter (its current version) or name@vN."),
                "object": constant("model"), "created": serializers.IntegerField(),
                "owned_by": serializers.CharField(help_text="vajra for a base model, the tenant for an adapter."),
                "parent": serializers.CharField(required=False, help_text="An adapter's base model.")}
ModelOut = shape("Model", MODEL_FIELDS)
ModelListOut = listing("ModelList", shape("ModelItem", MODEL_FIELDS))
