"""The OpenAPI schema of every API route (/api/v1 and /v1), for drf-spectacular: the one error shape, the error
statuses and API-key scope of each operation, server-sent event streams, and the plain async views.

One pattern documents an endpoint, whatever kind of view serves it:

- its answer is a serializer of exactly the fields the view returns (the view's own output serializer, or one in the
  app's ``*_schema.py`` beside the code that builds the dict), given as ``responses`` of ``extend_schema`` on a DRF
  view's method, or of ``@documented(post={...})`` on a plain view (which gets a schema-only DRF view class);
- a stream is ``event_stream("Name", {"delta": DeltaOut, ...})`` as the (status, "text/event-stream") response;
- the error responses (401 and 403 where credentials are needed, 404 with a path id, 400/413/415 with a body, 400
  with query parameters, 429 with a throttle, 503 always), the security (API key or session) and the key scope
  come from the view's own ``required_action(s)``, authentication, permission and throttle classes
  (``VajraAutoSchema``); statuses peculiar to one operation (402, 409, 502, ...) are listed with ``errors(...)``.

``tests/test_openapi_schema.py`` fails for a route without an operation; ``tests/helpers.assert_documented``
validates a real answer against its operation's response.
"""

import json

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import (
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import permissions, serializers
from rest_framework.views import APIView


def shape(name, fields, **kwargs):
    """A response's shape: drf-spectacular's ``inline_serializer`` over a copy of ``fields`` (DRF's serializer
    metaclass takes the fields out of the dict it is given, so a dict of fields shared by two shapes would leave the
    second one empty)."""
    return inline_serializer(name, dict(fields), **kwargs)


@extend_schema_field({
    "type": "object", "additionalProperties": True, "required": ["message", "type", "param", "code"],
    "properties": {
        "message": {"type": "string", "description": "What went wrong and how to fix it."},
        "type": {"type": "string", "description": "invalid_request_error, authentication_error, permission_error, "
                                                  "not_found_error, conflict_error, rate_limit_error or api_error."},
        "param": {"type": "string", "nullable": True, "description": "The parameter at fault."},
        "code": {"type": "string", "nullable": True, "description": "A machine-readable reason."}},
    "description": "Some errors add fields of their own (a dataset's bad ``lines``, ...)."})
class ErrorDetailField(serializers.JSONField):
    pass


ErrorOut = shape("Error", {"error": ErrorDetailField()})

ERROR = OpenApiResponse(ErrorOut, description="The one error shape (OpenAI's); the x-request-id header names the "
                                              "request.")


def errors(*statuses):
    """``responses`` entries in the error shape for these statuses (those peculiar to an operation: the common ones
    come from the view, ``VajraAutoSchema.error_statuses``)."""
    return {status: ERROR for status in statuses}


def enum(*values, **kwargs):
    """A string field of these values (``allow_null``: or null), its enum kept inline under ``allOf``, where
    drf-spectacular's enum hook does not make it a component named after the field (``object``, ``status``: one name
    for many sets of values)."""
    field_class = type("EnumField", (serializers.CharField,), {})
    nullable = bool(kwargs.get("allow_null"))
    kwargs.setdefault("help_text", f"Always {json.dumps(values[0])}." if len(values) == 1 else  # keeps the allOf
                      f"One of {', '.join(map(json.dumps, values))}{' or null' if nullable else ''}.")
    schema = {"type": "string", "enum": [*values, *([None] if nullable else [])], **({"nullable": True} if nullable
                                                                                     else {})}
    return extend_schema_field({"allOf": [schema]})(field_class)(**kwargs)


def constant(value, **kwargs):
    """A string field that always holds ``value`` (an answer's ``object``, a stream event's name)."""
    return enum(value, **kwargs)


def again(serializer, **kwargs):
    """Another instance of an inline serializer (one component), e.g. optional where the first is required."""
    return serializer.__class__(**kwargs)


def listing(name, item, **fields):
    """``{"object": "list", "data": [item, ...], **fields}``: the answer of the /v1 list endpoints."""
    serializer = shape(name, {"object": constant("list"), "data": item.__class__(many=True), **fields})
    serializer.is_listing = True  # its GET operation is named ..._list
    return serializer


def data_list(item, **fields):
    """``{"data": [item, ...], **fields}``: the answer of the /api/v1 list endpoints (``item`` a serializer class)."""
    serializer = shape(f"{item.__name__.removesuffix('Out')}List", {"data": item(many=True), **fields})
    serializer.is_listing = True
    return serializer


def event_stream(name, events, *, data_only=False, description=""):
    """A text/event-stream response of these events (event name -> serializer of its ``data`` JSON). Each event is
    documented as the fields of its SSE block: ``event`` (the name), ``id`` (resume after it with Last-Event-ID) and
    ``data``. ``data_only``: OpenAI's streams, whose blocks carry ``data`` alone (the names are for the docs)."""
    shapes = []
    for event, data in events.items():
        fields = {"data": data} if data_only else {"event": constant(event), "id": serializers.CharField(
            required=False, help_text="The event's id, for Last-Event-ID."), "data": data}
        shapes.append(shape(f"{name}{event.title().replace('_', '')}", fields))
    listed = ", ".join(f"`{event}`" for event in events)
    return OpenApiResponse(
        PolymorphicProxySerializer(component_name=name, serializers=shapes, resource_type_field_name=None),
        description=f"Server-sent events ({listed}), each shown as the fields of its block with ``data`` parsed as "
                    f"JSON; ``: keep-alive`` comments come between them. {description}".strip())


# The API reference's sections: the module that serves an operation names its section (the first match).
TAGS = (("serving.openai_api", "OpenAI-compatible"), ("serving", "Inference"), ("training", "Training"),
        ("billing", "Usage and billing"), ("adapters.model_import_api", "Base models"), ("adapters", "Adapters"),
        ("fleet", "Base models"), ("tenants", "Tenants, people and keys"))


class VajraAutoSchema(AutoSchema):
    """drf-spectacular's AutoSchema with what every VAJRA operation shares, read from the view itself: its error
    responses, and the API-key scope it needs (the security is the session alone for an action no key may do)."""

    def required_action(self):
        view = self.view
        return getattr(view, "required_actions", {}).get(self.method) or getattr(view, "required_action", None)

    def key_scope(self):
        """(action, the key scope that allows it: a scope, ``*`` for every key, None for sessions only), or None for
        a view that names no action."""
        from tenants.roles import scope_for

        action = self.required_action()
        return (action, scope_for(action)) if action else None

    def get_operation_id(self):
        """drf-spectacular's, with ``_list`` for a GET that answers a list in an object (``listing``, ``data_list``),
        where it would say ``_retrieve`` (its own test for a list is a response of ``many=True``)."""
        operation_id = super().get_operation_id()
        answers = self.get_response_serializers()
        answer = answers.get(200) if isinstance(answers, dict) else answers
        if self.method == "GET" and getattr(answer, "is_listing", False):
            operation_id = operation_id.removesuffix("_retrieve") + "_list"
        return operation_id

    def error_statuses(self):
        statuses = {503}  # a restarting database or Redis, on every route
        if not any(isinstance(p, permissions.AllowAny) for p in self.view.get_permissions()):
            statuses |= {401, 403}
        if self.view.get_throttles():
            statuses.add(429)
        if "{" in self.path:
            statuses.add(404)
        if self.method in ("POST", "PUT", "PATCH"):
            statuses |= {400, 413, 415}  # a body refused, over its route's size limit, or not the media type taken
        if any(p.get("in") == "query" for p in self._get_parameters()):
            statuses.add(400)
        return statuses

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for status in sorted(self.error_statuses()):
            if str(status) not in responses:
                responses[str(status)] = self._get_response_for_code(ERROR, str(status), ["application/json"],
                                                                     direction)
        return dict(sorted(responses.items()))

    def get_tags(self):
        module = type(self.view).__module__
        for prefix, tag in TAGS:
            if module == prefix or module.startswith(prefix + "."):
                return [tag]
        return super().get_tags()

    def get_auth(self):
        auth = super().get_auth()
        scoped = self.key_scope()
        if scoped and scoped[1] is None:  # sessions only: no key may do it
            auth = [requirement for requirement in auth if "apiKey" not in requirement]
        return auth

    def get_operation(self, *args, **kwargs):
        """The operation with the action it needs and the key scope that allows it, in its description and as
        ``x-required-action`` / ``x-api-key-scope`` (after ``extend_schema``'s own description and extensions)."""
        operation = super().get_operation(*args, **kwargs)
        scoped = self.key_scope()
        if operation is None or not scoped:
            return operation
        action, scope = scoped
        member = f"a signed-in member whose role allows `{action}`"
        if scope is None:
            who = f"{member} (API keys may not)"
        else:
            who = "any API key of the tenant" if scope == "*" else f"an API key with the `{scope}` scope"
            if any("session" in requirement for requirement in operation.get("security", [])):
                who += f", or {member}"
        operation["description"] = f"{operation.get('description', '')}\n\nNeeds {who}.".strip()
        operation["x-required-action"], operation["x-api-key-scope"] = action, scope
        return operation


def documented(*, action, **operations):
    """Documents a plain (async) view: ``operations`` maps a method to its ``extend_schema`` keyword arguments, and
    ``action`` is what it requires of the API key (tenants.roles.ACTIONS), as the view itself checks. The view gets a
    schema-only DRF view class, which drf-spectacular reads; the view itself still serves."""

    def decorate(view):
        from tenants.auth import APIKeyAuthentication
        from tenants.limits import TenantRateThrottle

        attributes = {"authentication_classes": [APIKeyAuthentication], "throttle_classes": [TenantRateThrottle],
                      "required_action": action, "__doc__": view.__doc__, "__module__": view.__module__}
        for method, spec in operations.items():
            def operation(self, request, *args, **kwargs):
                raise NotImplementedError("schema only: the documented view serves this route")

            attributes[method] = extend_schema(**spec)(operation)
        view.cls = type(f"{view.__name__}_schema", (APIView,), attributes)
        view.initkwargs = {}
        return view

    return decorate
