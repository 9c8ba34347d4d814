"""The browser's middlewares (static files, sessions, CSRF, the signed-in user, messages, framing), and the Django
handler that leaves them out for the views that take API keys alone.

Those views (``serving.v1.api_view``: inference, the OpenAI-compatible API) read a bearer key, JSON and SSE, and use
none of them. Each costs a request a trip from the event loop to a thread and back (Django runs their hooks on a
thread in an async chain), so serving such a request without them is ~3 ms sooner to its first SSE event
(bench/platform_overhead.py, 14 -> 11 ms). Every other view, the API's session-authenticated ones included, keeps
the whole chain. MIDDLEWARE names these subclasses; the order and the other middlewares are the same in both chains.
"""

import contextvars

from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.core.exceptions import MiddlewareNotUsed
from django.core.handlers.asgi import ASGIHandler
from django.middleware import clickjacking, common, csrf
from django.urls import Resolver404, resolve
from whitenoise import middleware as whitenoise

_building_key_only = contextvars.ContextVar("building_key_only", default=False)


class PagesOnly:
    """A middleware of the browser's: left out of ``KeyOnlyHandler``'s chain (Django skips a middleware whose
    factory raises MiddlewareNotUsed)."""

    def __init__(self, get_response, *args, **kwargs):
        if _building_key_only.get():
            raise MiddlewareNotUsed
        super().__init__(get_response, *args, **kwargs)


class WhiteNoiseMiddleware(PagesOnly, whitenoise.WhiteNoiseMiddleware):
    pass


class SessionMiddleware(PagesOnly, sessions.SessionMiddleware):
    pass


class CommonMiddleware(PagesOnly, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(PagesOnly, csrf.CsrfViewMiddleware):
    pass


class AuthenticationMiddleware(PagesOnly, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(PagesOnly, messages.MessageMiddleware):
    pass


class XFrameOptionsMiddleware(PagesOnly, clickjacking.XFrameOptionsMiddleware):
    pass


class KeyOnlyHandler(ASGIHandler):
    """Django's ASGI handler with MIDDLEWARE less the ``PagesOnly`` ones."""

    def load_middleware(self, is_async=False):
        token = _building_key_only.set(True)
        try:
            super().load_middleware(is_async)
        finally:
            _building_key_only.reset(token)


def takes_keys_only(path):
    """Whether ``path`` resolves to a view marked ``key_only`` (it authenticates API keys and nothing else)."""
    try:
        return getattr(resolve(path).func, "key_only", False)
    except Resolver404:
        return False


class KeyOnlyRouter:
    """ASGI: HTTP requests for a key-only view go to ``key_only`` (a KeyOnlyHandler), everything else to ``pages``."""

    def __init__(self, pages, key_only):
        self.pages = pages
        self.key_only = key_only

    async def __call__(self, scope, receive, send):
        app = self.pages
        if scope["type"] == "http":
            path = scope["path"].removeprefix(scope.get("root_path", ""))
            if takes_keys_only(path):
                app = self.key_only
        await app(scope, receive, send)
