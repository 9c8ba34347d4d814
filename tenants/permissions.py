"""Every API view names the action it performs; the principal's role or key scopes must allow it."""

from rest_framework.permissions import BasePermission

from .principal import Principal


class IsTenantPrincipal(BasePermission):
    """Authenticated for a tenant, and allowed ``view.required_action`` (or the per-method map)."""

    def has_permission(self, request, view):
        principal = request.auth
        if not isinstance(principal, Principal):
            return False  # DRF answers 401 NotAuthenticated: no credentials were sent
        action = getattr(view, "required_actions", {}).get(request.method) or getattr(view, "required_action",
                                                                                        None)
        if action:
            principal.require(action)
        return True


def require_session(request):
    """Refuse API keys on endpoints that manage keys and members."""
    from rest_framework.exceptions import PermissionDenied

    if request.auth.is_key:
        raise PermissionDenied(
            "API keys cannot manage keys, members or invites; sign in to the dashboard instead.",
            code="session_required",
        )
