"""The signed-in member's active tenant: the one they last switched to, else their first."""

from .access import user_memberships

SESSION_KEY = "vajra_tenant_id"
_CACHE = "_vajra_active_membership"


def active_membership(request):
    """Computed once per request, only when something asks."""
    if not hasattr(request, _CACHE):
        setattr(request, _CACHE, _lookup(request))
    return getattr(request, _CACHE)


def _lookup(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    memberships = list(user_memberships(user=user))
    wanted = request.session.get(SESSION_KEY)
    for membership in memberships:
        if membership.tenant_id == wanted:
            return membership
    return memberships[0] if memberships else None
