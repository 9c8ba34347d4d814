"""x-request-id on every response, and in every log line written while serving it; the request id and client IP
are also what the audit log records (tenants/audit.py), read from this context so services need no request."""

import contextvars
import json
import logging
import re
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.middleware.security import SecurityMiddleware
from django.utils.http import parse_header_parameters

from .client_ip import client_ip, is_trusted_proxy, parse_ip

request_id_var = contextvars.ContextVar("request_id", default="-")
request_ip_var = contextvars.ContextVar("request_ip", default="")
_VALID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")


def new_request_id():
    return f"req_{uuid.uuid4().hex}"


class SyncAndAsyncMiddleware:
    """A middleware that runs in whichever mode the rest of the chain runs: async views pay no thread hop for it."""

    sync_capable = async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)


class InlineHooks:
    """Runs a MiddlewareMixin middleware's request and response hooks inline, in either mode. In an async chain
    Django runs each such hook on a thread, a trip from the event loop and back per hook; for ``hooks_class``es whose
    hooks only read the request and set headers or in-memory counters, that trip is all it would add. Their view,
    exception and template-response hooks are not run: a subclass that needs one says so."""

    sync_capable = async_capable = True
    hooks_class = None

    def __init__(self, get_response):
        self.get_response = get_response
        self.hooks = self.hooks_class(get_response)
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        response = self.hooks.process_request(request) or self.get_response(request)
        return self.hooks.process_response(request, response)

    async def __acall__(self, request):
        response = self.hooks.process_request(request) or await self.get_response(request)
        return self.hooks.process_response(request, response)


class SecurityHeadersMiddleware(InlineHooks):
    """Django's SecurityMiddleware (the https redirect, HSTS, nosniff, the referrer and cross-origin opener policies)
    with its hooks inline: the chain of the views that take API keys alone uses it in its place
    (vajra.page_middleware). MIDDLEWARE keeps naming Django's class, which its deploy checks look for."""

    hooks_class = SecurityMiddleware


class RequestIdMiddleware(SyncAndAsyncMiddleware):
    """Keeps a caller's well-formed X-Request-ID (so traces join up), else makes one."""

    def _begin(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request.request_id = incoming if _VALID.match(incoming) else new_request_id()
        return request_id_var.set(request.request_id), request_ip_var.set(client_ip(request))

    @staticmethod
    def _end(tokens):
        request_id_var.reset(tokens[0])
        request_ip_var.reset(tokens[1])

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        tokens = self._begin(request)
        try:
            response = self.get_response(request)
        finally:
            self._end(tokens)
        response["x-request-id"] = request.request_id
        return response

    async def __acall__(self, request):
        tokens = self._begin(request)
        try:
            response = await self.get_response(request)
        finally:
            self._end(tokens)
        response["x-request-id"] = request.request_id
        return response


class ContentLengthMiddleware(SyncAndAsyncMiddleware):
    """A whole (not streamed) body's Content-Length on every response, as Django's CommonMiddleware sets it: the
    views that take API keys alone run without that one (vajra.page_middleware)."""

    @staticmethod
    def _measure(response):
        if not response.streaming and not response.has_header("Content-Length"):
            response["Content-Length"] = str(len(response.content))
        return response

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return self._measure(self.get_response(request))

    async def __acall__(self, request):
        return self._measure(await self.get_response(request))


class NullCharacterMiddleware(SyncAndAsyncMiddleware):
    """Refuses a path or query parameter holding a NUL character (%00) with a 400: PostgreSQL cannot store or
    compare text holding one, so a lookup by it would be a 500, and no id or parameter VAJRA takes holds one.
    (JSON bodies reach the serializers, whose string fields refuse it, naming the field.)"""

    @staticmethod
    def _refusal(request):
        if "\x00" not in request.path and not any(
                "\x00" in key or "\x00" in value for key, values in request.GET.lists() for value in values):
            return None
        from django.http import JsonResponse

        from vajra import errors

        if not request.path.startswith(("/api/", "/v1/")):
            return errors.handler400(request)  # a page: Django's 400 page
        return JsonResponse(errors.error_body("The path or query string holds a NUL character (%00); remove it.",
                                              status_code=400, code="null_character"), status=400)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return self._refusal(request) or self.get_response(request)

    async def __acall__(self, request):
        return self._refusal(request) or await self.get_response(request)


class ForwardedProtoMiddleware(SyncAndAsyncMiddleware):
    """Drops X-Forwarded-Proto unless the peer is one of VAJRA_TRUSTED_PROXIES, before SecurityMiddleware and
    anything else asks ``request.is_secure()``: behind a proxy (SECURE_PROXY_SSL_HEADER) only the proxy may say
    the client came over https; a client that reaches web directly would otherwise claim it with the header."""

    @staticmethod
    def _strip(request):
        if "HTTP_X_FORWARDED_PROTO" in request.META:
            peer = parse_ip(request.META.get("REMOTE_ADDR") or "")
            if peer is None or not is_trusted_proxy(peer):
                del request.META["HTTP_X_FORWARDED_PROTO"]

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        self._strip(request)
        return self.get_response(request)

    async def __acall__(self, request):
        self._strip(request)
        return await self.get_response(request)


class RequestIdLogFilter(logging.Filter):
    def filter(self, record):
        # django.request logs 4xx/5xx responses after the middleware has returned, with the request.
        request = getattr(record, "request", None)
        record.request_id = getattr(request, "request_id", None) or request_id_var.get()
        return True


# Content-Security-Policy on every HTML response: scripts and styles only from our own static files (no inline
# code, so an injected <script> or style attribute does nothing), websockets only back to this host, never framed.
CSP_BASE = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],  # the usage charts and the admin's icons are data: SVGs
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "frame-ancestors": ["'none'"],
}


def csp_header(request):
    policy = {name: list(values) for name, values in CSP_BASE.items()}
    # The playground and training pages open ws(s)://<this host>; older browsers do not count that as 'self'.
    ws = f"{'wss' if request.is_secure() else 'ws'}://{request.get_host()}"
    policy["connect-src"] = [*policy["connect-src"], ws]
    return "; ".join(f"{name} {' '.join(values)}" for name, values in policy.items())


class ContentSecurityPolicyMiddleware(SyncAndAsyncMiddleware):
    @staticmethod
    def _add(request, response):
        if response.get("Content-Type", "").startswith("text/html") and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = csp_header(request)
        return response

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return self._add(request, self.get_response(request))

    async def __acall__(self, request):
        return self._add(request, await self.get_response(request))


class ContentTypeGuard:
    """ASGI: answers a request whose Content-Type Django cannot parse (an RFC 2231 parameter naming an unknown
    charset, ``boundary*=bogus''x``, raises LookupError while Django builds the request, before any middleware
    could answer it) with a 400 in the API's error shape and an x-request-id."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name.lower() == b"content-type" and not _parses(value.decode("latin1")):
                    await self._refuse(send)
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(send):
        from vajra.errors import error_body

        body = json.dumps(error_body("The Content-Type header cannot be parsed; send e.g. 'application/json' or "
                                     "'multipart/form-data; boundary=...'.", status_code=400,
                                     code="invalid_content_type", param="Content-Type")).encode()
        await send({"type": "http.response.start", "status": 400, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"x-request-id", new_request_id().encode())]})
        await send({"type": "http.response.body", "body": body})


def _parses(content_type):
    try:
        parse_header_parameters(content_type)
    except (LookupError, ValueError):
        return False
    return True
