"""One error shape for every API error: {"error": {"message", "type", "param", "code"}} (OpenAI's).

DRF exceptions come through ``api_exception_handler``; Django's own 400/403/404/500 under /api/ and
/v1/ come through the ``handler*`` views, so a client never has to parse an HTML error page.
"""

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rest_framework import exceptions, status
from rest_framework.views import exception_handler

log = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "This conflicts with an existing resource."
    default_code = "conflict"

    def __init__(self, detail=None, code=None, param=None):
        super().__init__(detail, code)
        self.param = param


class InvalidRequest(exceptions.APIException):
    """A 400 that names the parameter at fault. ``extra`` adds machine-readable fields to the error object
    (e.g. a dataset's bad ``lines``); it never replaces the four standard ones."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid_request"

    def __init__(self, detail, *, param=None, code=None, extra=None):
        super().__init__(detail, code)
        self.param = param
        self.extra = extra or {}


class ServiceUnavailable(exceptions.APIException):
    """503: the database or Redis does not answer (a restart); the request may be retried as it is."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "service_unavailable"

    def __init__(self, detail, *, code, wait=2):
        super().__init__(detail, code)
        self.wait = wait


# What a restarting database or Redis raises; each becomes a 503 saying which, never a 500.
DATABASE_DOWN = (OperationalError, InterfaceError)
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, BrokerError)
INFRASTRUCTURE_DOWN = DATABASE_DOWN + REDIS_DOWN


def redis_unavailable():
    return ServiceUnavailable("Redis is not answering (it may be restarting); retry in a few seconds.",
                              code="redis_unavailable")


def unavailable(exc):
    """The 503 for a database or Redis that did not answer; what failed is logged (the answer does not say)."""
    log.warning("answering 503: %s: %s", type(exc).__name__, exc)
    if isinstance(exc, DATABASE_DOWN):
        return ServiceUnavailable("The database is not answering (it may be restarting); retry in a few seconds.",
                                  code="database_unavailable")
    return redis_unavailable()


def error_body(message, *, status_code, code=None, param=None, error_type=None, extra=None):
    standard = {
        "message": message,
        "type": error_type or ERROR_TYPES.get(status_code, "api_error" if status_code >= 500 else
                                              "invalid_request_error"),
        "param": param,
        "code": code,
    }
    return {"error": {**standard, **{k: v for k, v in (extra or {}).items() if k not in standard}}}


def _first_validation_error(detail, prefix=""):
    """Flattens DRF's nested ValidationError detail to (param, message, code) of the first problem."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = prefix if key == "non_field_errors" else (f"{prefix}.{key}" if prefix else str(key))
            return _first_validation_error(value, name)
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], prefix)
    code = getattr(detail, "code", None)
    return (prefix or None), str(detail), code


def _message_for(exc):
    if isinstance(exc, exceptions.ValidationError):
        param, message, code = _first_validation_error(exc.detail)
        if param and not message.lower().startswith(param.split(".")[-1].lower()):
            message = f"{param}: {message}"
        return param, message, code or "invalid"
    detail = exc.detail
    if isinstance(detail, (list, dict)):
        param, message, code = _first_validation_error(detail)
        return param, message, code
    return getattr(exc, "param", None), str(detail), getattr(detail, "code", None)


_FIXES = {
    exceptions.ParseError: " Send a valid JSON object in the request body.",
    exceptions.UnsupportedMediaType: " Send the body as JSON with 'Content-Type: application/json'.",
    exceptions.NotAuthenticated: " Send 'Authorization: Bearer <api key>' or sign in.",
}


def _fix_for(exc, view):
    """How to fix it; a 415 names what the endpoint does take (multipart for uploads, else JSON)."""
    if isinstance(exc, exceptions.UnsupportedMediaType):
        media = [parser.media_type for parser in getattr(view, "parser_classes", ())]
        if media and "application/json" not in media:
            return f" Send the body as {' or '.join(media)}."
    if isinstance(exc, exceptions.ParseError) and getattr(view, "parser_classes", None):
        media = [parser.media_type for parser in view.parser_classes]
        if "application/json" not in media:
            return f" Send a well-formed {' or '.join(media)} body."
    return _fix_of(exc)


def _fix_of(exc):
    return next((fix for kind, fix in _FIXES.items() if isinstance(exc, kind)), "")


def api_exception_handler(exc, context):
    # Django's own exceptions (the access functions raise Http404) become DRF's, keeping their message.
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    if isinstance(exc, INFRASTRUCTURE_DOWN):
        exc = unavailable(exc)
    response = exception_handler(exc, context)
    if response is None:
        return None  # Django turns it into a 500 through handler500
    param, message, code = _message_for(exc)
    message += _fix_for(exc, context.get("view"))
    if isinstance(exc, ServiceUnavailable):
        response["Retry-After"] = str(exc.wait)
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        response["Retry-After"] = str(max(1, int(exc.wait + 0.999)))
        message = f"Rate limit exceeded. Retry after {response['Retry-After']} seconds."
    code = getattr(exc, "override_code", None) or code
    response.data = error_body(message, status_code=response.status_code, code=code, param=param,
                               extra=getattr(exc, "extra", None))
    return response


def _json_error(request, status_code, message, code):
    return JsonResponse(error_body(message, status_code=status_code, code=code), status=status_code)


def _is_api(request):
    return request.path.startswith(("/api/", "/v1/"))


def handler400(request, exception=None):
    if _is_api(request):
        return _json_error(request, 400, "Bad request.", "bad_request")
    from django.views.defaults import bad_request

    return bad_request(request, exception)


def handler403(request, exception=None):
    if _is_api(request):
        return _json_error(request, 403, "Forbidden.", "forbidden")
    from django.views.defaults import permission_denied

    return permission_denied(request, exception)


def api_route_not_found(request, *args, **kwargs):
    return _json_error(request, 404, f"No API route {request.path}. See /api/docs/.", "unknown_route")


def handler404(request, exception=None):
    if _is_api(request):
        return api_route_not_found(request)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler500(request):
    if _is_api(request):
        return _json_error(request, 500, "Internal server error; quote the x-request-id when reporting it.",
                           "server_error")
    from django.views.defaults import server_error

    return server_error(request)


def error_response(exc, *, key_only=False):
    """The API error response for an exception raised outside DRF (the async /v1 views, the websocket consumers).
    ``key_only``: the endpoint takes API keys alone, so a 401 says to send one, not to sign in."""
    from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
    from django.http import Http404

    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    param, message, code = _message_for(exc)
    if key_only and isinstance(exc, exceptions.NotAuthenticated):
        message += " Send 'Authorization: Bearer <api key>'."
    else:
        message += _fix_of(exc)
    code = getattr(exc, "override_code", None) or code
    response = JsonResponse(error_body(message, status_code=exc.status_code, code=code, param=param,
                                       extra=getattr(exc, "extra", None)), status=exc.status_code)
    wait = getattr(exc, "wait", None)
    if wait:
        response["Retry-After"] = str(max(1, int(wait + 0.999)))
    if exc.status_code == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response
