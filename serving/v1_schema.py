"""OpenAPI shapes of the /v1 inference answers (serving/v1.py, serving/openai_api.py), as those views build
them; the views carry their operations with ``vajra.schema.documented``."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

SSE = OpenApiResponse(OpenApiTypes.STR, description="text/event-stream: the request's events, resumable with "
                                                    "Last-Event-ID.")

Usage = inline_serializer("InferenceUsage", {
    "prompt_tokens": serializers.IntegerField(), "completion_tokens": serializers.IntegerField(),
    "cached_tokens": serializers.IntegerField()})
Timings = inline_serializer("InferenceTimings", {
    name: serializers.FloatField(allow_null=True)
    for name in ("queued_ms", "adapter_ready_ms", "first_token_ms", "total_ms")})
Cost = serializers.DictField(help_text="The query's price from the tenant's plan: units and micro-dollars.")

InferenceOut = inline_serializer("Inference", {
    "id": serializers.CharField(), "object": serializers.CharField(), "model": serializers.CharField(),
    "adapter": serializers.CharField(allow_null=True, help_text="name@vN"), "tier": serializers.CharField(),
    "cost": Cost, "text": serializers.CharField(), "finish_reason": serializers.CharField(allow_null=True),
    "usage": serializers.DictField(allow_null=True), "timings": serializers.DictField(allow_null=True),
    "gpu_ms": serializers.FloatField(allow_null=True),
    "error": serializers.DictField(required=False, help_text="The runtime's error, when it failed.")})

VersionsOut = inline_serializer("AdapterVersionList", {
    "object": serializers.CharField(), "model": serializers.CharField(),
    "data": inline_serializer("AdapterVersionItem", {
        "adapter": serializers.CharField(), "version": serializers.IntegerField(), "id": serializers.CharField(),
        "current": serializers.BooleanField(), "status": serializers.CharField(), "tier": serializers.CharField(),
        "rank": serializers.IntegerField(allow_null=True), "target_modules": serializers.JSONField(),
        "sha256": serializers.CharField(), "size_bytes": serializers.IntegerField(),
        "created_at": serializers.DateTimeField()}, many=True)})

REQUEST_FIELDS = {
    "id": serializers.CharField(), "status": serializers.CharField(), "model": serializers.CharField(),
    "tier": serializers.CharField(), "adapter_version_id": serializers.IntegerField(allow_null=True),
    "node": serializers.CharField(allow_null=True), "finish_reason": serializers.CharField(allow_null=True),
    "error": serializers.DictField(allow_null=True), "usage": Usage, "timings": Timings,
    "gpu_ms": serializers.FloatField(allow_null=True), "guarantee_broken": serializers.BooleanField(),
    "cost": Cost, "created_at": serializers.DateTimeField(), "finished_at": serializers.DateTimeField(allow_null=True),
}
RequestOut = inline_serializer("InferenceRequest", REQUEST_FIELDS)
CancelOut = inline_serializer("InferenceRequestCancel", {**REQUEST_FIELDS,
                                                         "cancel_requested": serializers.BooleanField()})

OpenAIUsage = inline_serializer("CompletionUsage", {
    "prompt_tokens": serializers.IntegerField(), "completion_tokens": serializers.IntegerField(),
    "total_tokens": serializers.IntegerField(), "prompt_tokens_details": serializers.DictField()})
VajraExtension = serializers.DictField(help_text="VAJRA's own: request_id, base_model, adapter, tier, cost, "
                                                 "timings, gpu_ms.")


def _completion(name, choice_fields):
    return inline_serializer(name, {
        "id": serializers.CharField(), "object": serializers.CharField(), "created": serializers.IntegerField(),
        "model": serializers.CharField(), "system_fingerprint": serializers.CharField(allow_null=True),
        "choices": inline_serializer(f"{name}Choice", {"index": serializers.IntegerField(),
                                                       "logprobs": serializers.JSONField(allow_null=True),
                                                       "finish_reason": serializers.CharField(allow_null=True),
                                                       **choice_fields}, many=True),
        "usage": OpenAIUsage, "vajra": VajraExtension})


ChatCompletionOut = _completion("ChatCompletion", {"message": inline_serializer("ChatCompletionMessage", {
    "role": serializers.CharField(), "content": serializers.CharField(allow_null=True),
    "refusal": serializers.CharField(allow_null=True),
    "tool_calls": inline_serializer("ChatCompletionToolCall", {
        "id": serializers.CharField(), "type": serializers.CharField(),
        "function": inline_serializer("ChatCompletionToolCallFunction", {
            "name": serializers.CharField(), "arguments": serializers.CharField()})}, many=True, required=False)})})
CompletionOut = _completion("Completion", {"text": serializers.CharField()})

MODEL_FIELDS = {"id": serializers.CharField(), "object": serializers.CharField(), "created": serializers.IntegerField(),
                "owned_by": serializers.CharField(),
                "parent": serializers.CharField(required=False, help_text="An adapter's base model.")}
ModelOut = inline_serializer("Model", MODEL_FIELDS)
ModelListOut = inline_serializer("ModelList", {"object": serializers.CharField(),
                                               "data": inline_serializer("ModelItem", MODEL_FIELDS, many=True)})
