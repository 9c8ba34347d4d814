"""Websocket authentication for every VAJRA consumer.

A client proves who it is in one of two ways, never in the URL (URLs end up in logs):
- an API key, offered as the subprotocol ``bearer.<key>`` next to ``vajra.v1``
  (``new WebSocket(url, ["vajra.v1", "bearer." + key])``), or sent as the first message
  ``{"type": "auth", "api_key": "<key>"}`` within AUTH_TIMEOUT seconds;
- the browser's session cookie, accepted only from an allowed Origin (cross-site websocket hijacking).

Refusals accept the socket first, send ``{"type": "error", "error": {...}}`` and close with a code in the
4000 range and a reason, because a refusal before accept reaches the client as a bare HTTP 403.
"""

import asyncio
from urllib.parse import urlparse

from channels.auth import get_user
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.http import Http404
from rest_framework.exceptions import APIException

from vajra import parsers
from vajra.errors import error_body

from .keys import principal_from_key, principal_from_key_again, principal_from_membership
from .limits import hit

PROTOCOL = "vajra.v1"
KEY_PROTOCOL_PREFIX = "bearer."
AUTH_TIMEOUT = 10

CLOSE_BAD_MESSAGE = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_RATE_LIMITED = 4429

_STATUS_TO_CLOSE = {401: CLOSE_UNAUTHENTICATED, 403: CLOSE_FORBIDDEN, 404: CLOSE_NOT_FOUND,
                    429: CLOSE_RATE_LIMITED}


def origin_allowed(scope):
    headers = dict(scope.get("headers", []))
    origin = headers.get(b"origin", b"").decode("latin-1")
    if not origin:
        return False
    allowed = set(settings.WEBSOCKET_ALLOWED_ORIGINS) | set(settings.CSRF_TRUSTED_ORIGINS)
    if origin in allowed:
        return True
    host = headers.get(b"host", b"").decode("latin-1")
    return bool(host) and urlparse(origin).netloc == host  # same origin as the page that opened it


class TenantConsumer(AsyncJsonWebsocketConsumer):
    """Authenticates, then calls ``authorized(principal)``; subclasses resolve their resource there
    through the access functions (Http404 closes with 4404) and join their groups."""

    required_action = "tenant.view"
    principal = None
    closed = False  # set on refusal: whatever still arrives before the client sees the close is ignored
    _auth_timer = None

    async def connect(self):
        offered = self.scope.get("subprotocols", [])
        await self.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)
        key = next((p[len(KEY_PROTOCOL_PREFIX):] for p in offered if p.startswith(KEY_PROTOCOL_PREFIX)), None)
        if key:
            await self._authenticate(key=key)
            return
        user = await get_user(self.scope)
        if user.is_authenticated:
            if not origin_allowed(self.scope):
                await self.refuse(CLOSE_FORBIDDEN, "origin_not_allowed",
                                  "This Origin may not open a session websocket; use an API key instead.")
                return
            await self._authenticate(user=user)
            return
        self._auth_timer = asyncio.get_running_loop().call_later(AUTH_TIMEOUT, self._auth_timed_out)

    def _auth_timed_out(self):
        if self.principal is None and not self.closed:
            asyncio.ensure_future(self.refuse(
                CLOSE_AUTH_TIMEOUT, "auth_timeout",
                f"No credentials within {AUTH_TIMEOUT} s; send {{\"type\": \"auth\", \"api_key\": ...}} first."))

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if self.closed:
            return
        try:
            content = parsers.loads(text_data or "")
        except parsers.MalformedJSON as exc:
            code = "json_too_deep" if exc.get_codes() == "json_too_deep" else "invalid_json"
            await self.refuse(CLOSE_BAD_MESSAGE, code, f"Messages must be JSON objects ({exc.detail}).")
            return
        if not isinstance(content, dict):
            await self.refuse(CLOSE_BAD_MESSAGE, "invalid_json", "Messages must be JSON objects.")
            return
        if self.principal is None:
            if content.get("type") != "auth" or not isinstance(content.get("api_key"), str):
                await self.refuse(CLOSE_UNAUTHENTICATED, "auth_required",
                                  'Authenticate first: {"type": "auth", "api_key": "<key>"}.')
                return
            self._cancel_auth_timer()
            await self._authenticate(key=content["api_key"])
            return
        if await self.recheck():
            await self.receive_json(content)

    async def recheck(self):
        """Reads the socket's credentials again, as a new request would: a key revoked or narrowed, a member
        removed or given another role, a tenant suspended since the socket opened acts with what it has now, or
        the socket is closed. Runs before each client message. False when the socket was closed."""
        try:
            self.principal = await self._reload_principal()
        except Http404:
            await self.refuse(CLOSE_FORBIDDEN, "member_removed", "You are no longer a member of this tenant.")
        except APIException as exc:
            await self._refuse_for(exc)
        return not self.closed

    @database_sync_to_async
    def _reload_principal(self):
        principal = self.principal
        if principal.is_key:
            return principal_from_key_again(principal.api_key)
        from .access import access_tenant_membership

        return principal_from_membership(access_tenant_membership(user=principal.user, slug=principal.tenant.slug))

    async def _authenticate(self, *, key=None, user=None):
        try:
            self.principal = await self._resolve_principal(key, user)
            if self.principal.is_key:
                wait = await database_sync_to_async(hit)(f"key:{self.principal.api_key.prefix}",
                                                         settings.VAJRA_RATE_LIMIT_PER_KEY)
                if wait:
                    await self.refuse(CLOSE_RATE_LIMITED, "rate_limited", f"Rate limit exceeded. Retry after {wait} s.")
                    return
            await self.authorized(self.principal)
        except Http404 as exc:
            await self.refuse(CLOSE_NOT_FOUND, "not_found", str(exc) or "Not found.")
        except APIException as exc:
            await self._refuse_for(exc)

    async def _refuse_for(self, exc):
        code = getattr(exc, "override_code", None) or exc.get_codes()
        await self.refuse(_STATUS_TO_CLOSE.get(exc.status_code, CLOSE_FORBIDDEN),
                          code if isinstance(code, str) else "refused", str(exc.detail))

    @database_sync_to_async
    def _resolve_principal(self, key, user):
        if key is not None:
            return principal_from_key(key)
        from .access import access_tenant_membership, user_memberships

        slug = self.scope["url_route"]["kwargs"].get("tenant_slug")
        if slug:
            membership = access_tenant_membership(user=user, slug=slug)
        else:
            membership = user_memberships(user=user).first()
        return principal_from_membership(membership)

    async def refuse(self, close_code, code, message):
        self.closed = True
        self._cancel_auth_timer()
        status = {v: k for k, v in _STATUS_TO_CLOSE.items()}.get(close_code, 400)
        await self.send_json(dict(type="error", **error_body(message, status_code=status, code=code)))
        # The close reason must fit in a control frame (123 bytes).
        await self.close(code=close_code, reason=message.encode()[:120].decode(errors="ignore"))

    def _cancel_auth_timer(self):
        if self._auth_timer is not None:
            self._auth_timer.cancel()

    async def websocket_disconnect(self, message):
        self._cancel_auth_timer()  # a client that left must not be refused 10 s later
        await super().websocket_disconnect(message)

    async def authorized(self, principal):
        """Subclasses: resolve resources with access functions, join groups, send a welcome."""
        raise NotImplementedError
