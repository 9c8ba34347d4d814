"""DRF authentication: ``Authorization: Bearer <key>`` for programs, the session for the browser."""

from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication

from .active import active_membership
from .keys import _refused, principal_from_key, principal_from_membership


class APIKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        scheme, _, raw_key = header.partition(" ")
        if scheme.lower() != "bearer" or not raw_key.strip():
            raise _refused("Malformed Authorization header; send 'Authorization: Bearer <api key>'.",
                           "invalid_authorization_header")
        principal = principal_from_key(raw_key.strip())
        return (principal.user or AnonymousUser(), principal)

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class SessionAuthentication(authentication.SessionAuthentication):
    """Django's session plus CSRF; the tenant is the one the member last switched to."""

    def authenticate(self, request):
        result = super().authenticate(request)
        if result is None:
            return None
        user, _ = result
        # No tenant yet: still this person (who may create one); IsTenantPrincipal refuses the rest.
        membership = active_membership(request._request)
        return (user, membership and principal_from_membership(membership))
