"""Roles gate what a member may do; scopes gate what an API key may do. One table for both.

An action is allowed for a session when the member's role grants it, and for an API key when the key
carries the scope that grants it. Every member may create keys, but only with scopes that their own
role has, and may revoke their own keys; owners and admins may revoke anyone's. Keys and members are
managed from a signed-in session only: a leaked key must not be able to mint more keys.
"""

OWNER, ADMIN, DEVELOPER, BILLING_VIEWER = "owner", "admin", "developer", "billing-viewer"
ROLE_CHOICES = [
    (OWNER, "Owner"),
    (ADMIN, "Admin"),
    (DEVELOPER, "Developer"),
    (BILLING_VIEWER, "Billing viewer"),
]
ROLES = [value for value, _ in ROLE_CHOICES]

SCOPE_CHOICES = [
    ("infer", "Run inference"),
    ("train", "Start and manage fine-tuning jobs"),
    ("adapters:write", "Upload, version and re-tier adapters"),
    ("usage:read", "Read usage metrics"),
    ("billing:read", "Read invoices and billing state"),
]
SCOPES = [value for value, _ in SCOPE_CHOICES]
# What every key of the tenant may do, whatever its scopes: read what the platform offers everyone.
ANY_SCOPE = "*"

# action -> roles allowed, and the key scope that allows it (None: sessions only; ANY_SCOPE: every key)
ACTIONS = {
    # The base-model catalog is the platform's, the same for every tenant: nothing in it is a tenant's secret.
    "catalog.read": ({OWNER, ADMIN, DEVELOPER, BILLING_VIEWER}, ANY_SCOPE),
    "tenant.view": ({OWNER, ADMIN, DEVELOPER, BILLING_VIEWER}, None),
    "tenant.manage": ({OWNER}, None),
    "members.view": ({OWNER, ADMIN, DEVELOPER, BILLING_VIEWER}, None),
    "members.manage": ({OWNER, ADMIN}, None),
    "keys.view": ({OWNER, ADMIN, DEVELOPER, BILLING_VIEWER}, None),
    # Everyone may hold keys (limited to their own role's scopes); revoking others' keys needs this:
    "keys.manage_all": ({OWNER, ADMIN}, None),
    "infer": ({OWNER, ADMIN, DEVELOPER}, "infer"),
    "train": ({OWNER, ADMIN, DEVELOPER}, "train"),
    # Training data may hold customers' conversations: not for billing viewers. Keys use the train scope.
    "datasets.read": ({OWNER, ADMIN, DEVELOPER}, "train"),
    "datasets.write": ({OWNER, ADMIN, DEVELOPER}, "train"),
    "training.read": ({OWNER, ADMIN, DEVELOPER}, "train"),
    "training.write": ({OWNER, ADMIN, DEVELOPER}, "train"),
    "adapters.view": ({OWNER, ADMIN, DEVELOPER}, "adapters:write"),
    "adapters.write": ({OWNER, ADMIN, DEVELOPER}, "adapters:write"),
    "usage.read": ({OWNER, ADMIN, DEVELOPER, BILLING_VIEWER}, "usage:read"),
    "billing.read": ({OWNER, ADMIN, BILLING_VIEWER}, "billing:read"),
    "billing.manage": ({OWNER, ADMIN}, None),
    # Who did what (tenants/audit.py): owners and admins, signed in; a leaked key must not read it.
    "audit.read": ({OWNER, ADMIN}, None),
}


def role_allows(role, action):
    return role in ACTIONS[action][0]


def scope_for(action):
    return ACTIONS[action][1]


def scopes_for_role(role):
    """The key scopes a member may grant: none beyond what their own role can do."""
    return sorted({scope for roles, scope in ACTIONS.values() if scope in SCOPES and role in roles})


def can_grant_role(granter_role, role):
    """Owners grant any role; admins any but owner; nobody else manages members."""
    if granter_role == OWNER:
        return True
    return granter_role == ADMIN and role != OWNER
