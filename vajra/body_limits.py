"""Request bodies are bounded per route before anything parses them.

The upload routes (adapters and datasets, API and dashboard) take ``VAJRA_MAX_UPLOAD_BYTES``; every other route
``VAJRA_MAX_BODY_BYTES``. A body whose Content-Length is over its route's limit is answered 413 at once, in the one
error shape, without reading it; a body without Content-Length (chunked) is counted while it is read and refused
where it crosses the limit. ``BodyLimitMiddleware`` does this for any ASGI server; under daphne,
``vajra.daphne_compat`` applies the same limits while the body arrives, so an oversized body is neither spooled nor
queued.
"""

import json

from django.conf import settings

from .errors import error_body
from .middleware import _VALID, new_request_id

# Exact paths whose POST carries a file: the adapter and dataset uploads of the API (the OpenAI files API too) and
# of the dashboard.
UPLOAD_PATHS = frozenset({"/api/v1/adapters", "/adapters/", "/api/v1/datasets", "/v1/files", "/training/"})
CODE = "body_too_large"


def limit_for(path):
    """The most bytes a request body to ``path`` may have."""
    return settings.VAJRA_MAX_UPLOAD_BYTES if path in UPLOAD_PATHS else settings.VAJRA_MAX_BODY_BYTES


def declared_length(headers):
    """The Content-Length of raw ASGI headers: an int, None when absent, -1 when malformed."""
    values = [v for k, v in headers if k.lower() == b"content-length"]
    if not values:
        return None
    try:
        lengths = {int(v) for v in values}
    except ValueError:
        return -1
    return lengths.pop() if len(lengths) == 1 and min(lengths) >= 0 else -1


def request_id_of(headers):
    """The caller's well-formed X-Request-ID, else a new one (as vajra.middleware.RequestIdMiddleware decides)."""
    for key, value in headers:
        if key.lower() == b"x-request-id":
            text = value.decode("latin-1")
            if _VALID.match(text):
                return text
    return new_request_id()


def refusal(limit, request_id):
    """(status, headers, body) of the 413 for a body over ``limit`` bytes."""
    body = json.dumps(error_body(
        f"The request body is over the {limit} bytes this route accepts ({limit >> 20} MiB).",
        status_code=413, code=CODE)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"x-request-id", request_id.encode()), (b"connection", b"close")]
    return 413, headers, body


class BodyLimitMiddleware:
    """ASGI guard in front of Django: refuses from Content-Length before the app reads anything, and counts a body
    without one while the app reads it (past the limit the app sees a disconnect and the client gets the 413)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = limit_for(scope["path"])
        headers = scope.get("headers", [])
        length = declared_length(headers)
        if length is not None and length > limit:
            return await self._refuse(send, limit, headers)
        received = 0
        over = False
        started = False

        async def counted_receive():
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def watched_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted_receive, watched_send)
        if over and not started:
            await self._refuse(send, limit, headers)

    @staticmethod
    async def _refuse(send, limit, headers):
        status, response_headers, body = refusal(limit, request_id_of(headers))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})
