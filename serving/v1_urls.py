from django.urls import path

from . import openai_api, v1

urlpatterns = [
    path("models/<str:model_id>/infer", v1.infer, name="v1-infer"),
    path("models/<str:model_id>/versions", v1.versions, name="v1-versions"),
    path("requests/<str:request_id>", v1.request_detail, name="v1-request"),
    path("requests/<str:request_id>/events", v1.request_events, name="v1-request-events"),
    path("requests/<str:request_id>/cancel", v1.request_cancel, name="v1-request-cancel"),
    # OpenAI-compatible (serving/openai_api.py); <str:> stops at "/", so models/<id> never shadows /infer
    path("chat/completions", openai_api.chat_completions, name="v1-chat-completions"),
    path("completions", openai_api.completions, name="v1-completions"),
    path("models", openai_api.models_list, name="v1-models"),
    path("models/<str:model_id>", openai_api.model_detail, name="v1-model"),
]
