"""ASGI entry for daphne: HTTP through Django, websockets through Channels with VAJRA's auth."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vajra.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.sessions import CookieMiddleware, SessionMiddleware  # noqa: E402

from vajra.body_limits import BodyLimitMiddleware  # noqa: E402
from vajra.daphne_compat import bound_request_bodies, pass_close_reasons  # noqa: E402
from vajra.middleware import ContentTypeGuard  # noqa: E402
from vajra.page_middleware import KeyOnlyHandler, KeyOnlyRouter  # noqa: E402
from vajra.routing import websocket_urlpatterns  # noqa: E402

pass_close_reasons()
bound_request_bodies()

application = ProtocolTypeRouter(
    {
        # Bodies over their route's limit are refused before Django reads them (vajra.body_limits).
        # Views that take API keys alone skip the browser's middlewares (vajra.page_middleware).
        "http": ContentTypeGuard(BodyLimitMiddleware(KeyOnlyRouter(django_asgi_app, KeyOnlyHandler()))),
        # Session only: who the caller is (session user or API key) is decided in the consumer, so
        # that refusals close with a code and a reason instead of a bare HTTP 403.
        "websocket": CookieMiddleware(SessionMiddleware(URLRouter(websocket_urlpatterns))),
    }
)
