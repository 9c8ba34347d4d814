"""Who is acting, for which tenant: a signed-in member (role) or an API key (scopes)."""

from dataclasses import dataclass

from rest_framework.exceptions import PermissionDenied

from .roles import ANY_SCOPE, role_allows, scope_for, scopes_for_role


@dataclass(frozen=True)
class Principal:
    tenant: object
    user: object = None
    role: str | None = None  # set for sessions
    api_key: object = None  # set for API keys

    @property
    def is_key(self):
        return self.api_key is not None

    @property
    def scopes(self):
        return list(self.api_key.scopes) if self.is_key else scopes_for_role(self.role)

    def can(self, action):
        if self.is_key:
            scope = scope_for(action)
            return scope == ANY_SCOPE or (scope is not None and self.api_key.has_scope(scope))
        return role_allows(self.role, action)

    def require(self, action):
        if self.can(action):
            return
        if self.is_key:
            scope = scope_for(action)
            if scope is None:
                raise PermissionDenied(
                    f"API keys cannot do '{action}'; sign in to the dashboard as a member with that right.",
                    code="session_required",
                )
            raise PermissionDenied(
                f"This API key lacks the '{scope}' scope. Create a key with that scope.", code="missing_scope"
            )
        raise PermissionDenied(
            f"Your role '{self.role}' in tenant '{self.tenant.slug}' does not allow '{action}'.",
            code="role_forbidden",
        )
