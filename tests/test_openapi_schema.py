"""The OpenAPI schema documents every method of every /api/v1 and /v1 route of the URL conf (and nothing the URL conf
does not serve), drf-spectacular builds it without a warning (a warning is a part of the schema it had to guess),
and it is a valid OpenAPI 3 document. Each operation lists its errors in the one error shape, its security, and the
API-key scope it needs; streams are text/event-stream with their events."""

import re

import pytest
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.drainage import GENERATOR_STATS
from openapi_spec_validator import validate

from tenants.roles import ACTIONS, SCOPES
from tests.helpers import api_schema

UNDOCUMENTED = {"/api/schema/", "/api/docs/"}  # the schema itself and its viewer
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def served_methods(callback):
    """The methods a route's view serves: an async /v1 view says so (serving.v1.api_view), a DRF view has one
    handler per method."""
    if getattr(callback, "methods", None):
        return {method.lower() for method in callback.methods}
    view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
    assert view_class is not None, f"{callback} is neither an async API view nor a DRF view"
    return {method for method in HTTP_METHODS if hasattr(view_class, method)}


def api_operations(patterns=None, prefix=""):
    """(path as the schema spells it, method) for every API route of the URL conf."""
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from api_operations(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern) and route.startswith(("api/", "v1/")) and "^" not in route:
            path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
            if path not in UNDOCUMENTED:
                yield from ((path, method) for method in served_methods(pattern.callback))


@pytest.fixture(scope="module")
def schema(django_db_blocker):
    with django_db_blocker.unblock():
        GENERATOR_STATS.reset()
        with GENERATOR_STATS.silence():
            built = api_schema()
        assert not GENERATOR_STATS, "drf-spectacular warned or erred building the schema"
    return built


def operations(schema):
    return {(path, method): operation for path, item in schema["paths"].items()
            for method, operation in item.items() if method in HTTP_METHODS}


def test_every_method_of_every_api_route_is_documented_and_nothing_else(schema):
    served = set(api_operations())
    assert {("/v1/chat/completions", "post"), ("/v1/completions", "post"), ("/v1/models", "get"),
            ("/v1/models/{model_id}/infer", "post"), ("/v1/requests/{request_id}/events", "get"),
            ("/v1/requests/{request_id}/cancel", "post"), ("/v1/training/jobs", "get"),
            ("/v1/usage/{tenant_id}/metrics", "get"), ("/api/v1/adapters/{name}", "patch")} <= served
    assert len(served) > 50
    documented = set(operations(schema))
    assert served - documented == set(), "routes without an operation in the schema"
    assert documented - served == set(), "operations the URL conf does not serve"


def test_the_schema_is_valid_openapi_3(schema, tmp_path):
    validate(schema)  # openapi-spec-validator: the OpenAPI 3.0 specification's own schema
    # drf-spectacular's own check, as `manage.py spectacular --validate --fail-on-warn` runs it
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert (tmp_path / "schema.yaml").read_text().startswith("openapi: 3.0")


def error_refs(schema, shape):
    """The components an error response's schema names: itself, or those of its oneOf."""
    ref = shape.get("$ref", "")
    one_of = schema["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {}).get("oneOf", [])
    return {ref, *(option.get("$ref") for option in one_of)}


def test_every_operation_documents_its_errors_security_and_scope(schema):
    for (path, method), operation in operations(schema).items():
        where = f"{method.upper()} {path}"
        responses = operation["responses"]
        assert any(status < "300" for status in responses), where
        assert "503" in responses, where  # a restarting database or Redis
        if "{" in path:
            assert "404" in responses, where
        if method in ("post", "put", "patch"):
            assert {"400", "413", "415"} <= set(responses), where
        for status, response in responses.items():
            if status >= "400":
                shape = response["content"]["application/json"]["schema"]
                assert "#/components/schemas/Error" in error_refs(schema, shape), (where, status, shape)
        if path == "/api/v1/signup":  # the only way in without credentials
            assert "401" not in responses and operation["security"] == [{}], where
            continue
        assert {"401", "403"} <= set(responses) and operation["security"], where
        action, scope = operation.get("x-required-action"), operation.get("x-api-key-scope")
        if action:
            assert action in ACTIONS and scope == ACTIONS[action][1], where
            assert (scope is None) == all("apiKey" not in requirement for requirement in operation["security"]), \
                where  # an action no key may do is documented for sessions alone
            assert scope is None or scope == "*" or scope in SCOPES, where
            assert "429" in responses, where  # the tenant's rate limit


def test_the_v1_api_is_documented_as_it_answers(schema):
    ops = operations(schema)
    infer = ops["/v1/models/{model_id}/infer", "post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/InferInRequest")
    assert set(infer["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert infer["security"] == [{"apiKey": []}] and infer["x-api-key-scope"] == "infer"
    assert {"402", "422", "502"} <= set(infer["responses"])
    stream = infer["responses"]["200"]["content"]["text/event-stream"]["schema"]["$ref"].rsplit("/", 1)[-1]
    components = schema["components"]["schemas"]
    events = {components[ref["$ref"].rsplit("/", 1)[-1]]["properties"]["event"]["allOf"][0]["enum"][0]
              for ref in components[stream]["oneOf"]}
    assert events == {"request", "delta", "retry", "done"}
    chat = ops["/v1/chat/completions", "post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatInRequest")
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    models = ops["/v1/models", "get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert models["$ref"].endswith("/ModelList")
    train = ops["/v1/models/{model_id}/train", "post"]
    assert train["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/TrainingJob")
    assert train["x-api-key-scope"] == "train"
    keys = ops["/api/v1/keys", "post"]
    assert keys["x-api-key-scope"] is None and keys["security"] == [{"session": []}]
