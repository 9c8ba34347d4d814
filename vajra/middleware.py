"""x-request-id on every response, and in every log line written while serving it; the request id and client IP
are also what the audit log records (tenants/audit.py), read from this context so services need no request."""

import contextvars
import ipaddress
import logging
import re
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

request_id_var = contextvars.ContextVar("request_id", default="-")
request_ip_var = contextvars.ContextVar("request_ip", default="")
_VALID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")


def new_request_id():
    return f"req_{uuid.uuid4().hex}"


def _client_ip(request):
    """REMOTE_ADDR (daphne puts the proxy's X-Forwarded-For there when started with --proxy-headers), if it is
    an address at all."""
    raw = request.META.get("REMOTE_ADDR", "")
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return ""


class RequestIdMiddleware:
    """Keeps a caller's well-formed X-Request-ID (so traces join up), else makes one. Sync and async, so
    streaming API views do not pay a thread hop for it."""

    sync_capable = async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def _begin(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request.request_id = incoming if _VALID.match(incoming) else new_request_id()
        return request_id_var.set(request.request_id), request_ip_var.set(_client_ip(request))

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


class RequestIdLogFilter(logging.Filter):
    def filter(self, record):
        # django.request logs 4xx/5xx responses after the middleware has returned, with the request.
        request = getattr(record, "request", None)
        record.request_id = getattr(request, "request_id", None) or request_id_var.get()
        return True

