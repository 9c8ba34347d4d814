"""Every API view names the action it performs; the principal's role or key scopes must allow it."""

from rest_framework.permissions import BasePermission

from .keys import principal_from_membership
from .principal import Principal


class IsTenantPrincipal(BasePermission):
    """Authenticated for a tenant, and allowed ``view.required_action`` (or the per-method map)."""

    def has_permission(self, request, view):
        principal = request.auth
        if not isinstance(principal, Principal):
            if request.user.is_authenticated:
                principal_from_membership(None)  # signed in but in no tenant: refused with no_tenant
            return False  # DRF answers 401 NotAuthenticated: no credentials were sent
        action = getattr(view, "required_actions", {}).get(request.method) or getattr(view, "required_action",
                                                                                        None)
        if action:
            principal.require(action)
        return True


class IsPerson(BasePermission):
    """A signed-in person, with or without a tenant; never an API key."""

    def has_permission(self, request, view):
        require_session(request)
        return request.user.is_authenticated


def require_session(request):
    """Refuse API keys on endpoints that manage keys and members."""
    from rest_framework.exceptions import PermissionDenied

    if isinstance(request.auth, Principal) and request.auth.is_key:
        raise PermissionDenied(
            "API keys cannot manage keys, members or invites; sign in to the dashboard instead.",
            code="session_required",
        )
