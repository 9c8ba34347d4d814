"""The Django handler for the views that take API keys alone, built without the browser's middlewares.

Those views (``serving.v1.api_view``: inference, the OpenAI-compatible API, models, request events) read a bearer
key, JSON and SSE, and use none of static files, sessions, CSRF, the signed-in user, messages or framing. In an async
chain Django runs each of those middlewares' hooks on a thread, a trip from the event loop and back per hook, so such
a request reaches its view sooner without them (p50: ASGI entry to the view 2.4 -> 1.2 ms, traced in daphne; the
first streamed token 15.8 -> 13.1 ms after the engine's in bench/platform_overhead.py). Every other view, the API's
session-authenticated ones included, keeps the whole chain; the order and every other middleware are the same in both,
Django's SecurityMiddleware running in the shorter one with its hooks inline (the same headers, no trip).
"""

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import resolve

PAGES_ONLY = frozenset({
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",  # its Content-Length: vajra.middleware.ContentLengthMiddleware
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
})
# Django's middlewares the chain runs in a form whose hooks take no thread trip, the same hooks inline.
INLINE = {"django.middleware.security.SecurityMiddleware": "vajra.middleware.SecurityHeadersMiddleware"}


class KeyOnlyHandler(ASGIHandler):
    """Django's ASGI handler with MIDDLEWARE less ``PAGES_ONLY`` (and ``INLINE``'s forms in place of those it names).
    Django builds a handler's chain from the setting alone, so it holds the shorter list while this handler is built:
    once, when the ASGI application is made, before any request (MIDDLEWARE keeps naming Django's classes, which its
    deploy checks look for by name)."""

    def load_middleware(self, is_async=False):
        every = settings.MIDDLEWARE
        settings.MIDDLEWARE = [INLINE.get(path, path) for path in every if path not in PAGES_ONLY]
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = every


class KeyOnlyRouter:
    """ASGI: an HTTP request whose path resolves to a view marked ``key_only`` goes to ``key_only`` (a
    KeyOnlyHandler), every other request to ``pages``. The path is taken as Django takes it (less the script
    prefix); anything that does not resolve cleanly goes to ``pages``, where Django answers it as before."""

    def __init__(self, pages, key_only):
        self.pages = pages
        self.key_only = key_only

    @staticmethod
    def takes_keys_only(scope):
        path_info = scope["path"].removeprefix(get_script_prefix(scope))  # as django.core.handlers.asgi has it
        try:
            return getattr(resolve(path_info).func, "key_only", False)
        except Exception:  # Resolver404, or a converter's or urlconf's error: Django's own handling answers it
            return False

    async def __call__(self, scope, receive, send):
        app = self.key_only if scope["type"] == "http" and self.takes_keys_only(scope) else self.pages
        await app(scope, receive, send)
