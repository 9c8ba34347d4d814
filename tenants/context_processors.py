from .access import user_memberships
from .active import active_membership


def tenancy(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"active_membership": active_membership(request), "memberships": user_memberships(user=user)}
