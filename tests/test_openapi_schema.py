"""The OpenAPI schema documents every /api and /v1 route of the URL conf, and drf-spectacular builds it without a
warning (a warning is a part of the schema it had to guess)."""

import re

from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator

UNDOCUMENTED = {"/api/schema/", "/api/docs/"}  # the schema itself and its viewer


def api_routes(patterns=None, prefix=""):
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from api_routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern) and route.startswith(("api/", "v1/")) and "^" not in route:
            yield "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


def test_every_api_route_is_documented(db):
    GENERATOR_STATS.reset()
    with GENERATOR_STATS.silence():
        schema = SchemaGenerator().get_schema(request=None, public=True)
    routes = set(api_routes()) - UNDOCUMENTED
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model_id}/infer",
            "/v1/requests/{request_id}/cancel", "/v1/usage/{tenant_id}/metrics"} <= routes
    assert routes - set(schema["paths"]) == set()
    assert not GENERATOR_STATS, "drf-spectacular warned or erred building the schema"


def test_the_inference_api_is_documented_as_it_answers(db):
    schema = SchemaGenerator().get_schema(request=None, public=True)
    infer = schema["paths"]["/v1/models/{model_id}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/InferInRequest")
    assert set(infer["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert infer["responses"]["503"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    assert infer["security"] == [{"apiKey": []}]
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatInRequest")
    models = schema["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert models["$ref"].endswith("/ModelList")
