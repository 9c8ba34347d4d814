"""Resolving a presented API key: shared by REST authentication and websocket consumers."""

from datetime import timedelta

from django.utils import timezone
from rest_framework.exceptions import AuthenticationFailed, PermissionDenied

from .models import APIKey
from .principal import Principal

# last_used_at is written at most once per this interval per key, so a busy key does not turn every
# request into a row update.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def _refused(message, code):
    exc = AuthenticationFailed(message, code=code)
    exc.override_code = code
    return exc


def principal_from_key(raw_key):
    """The Principal for a presented key, or AuthenticationFailed (401) / PermissionDenied (403)."""
    prefix, dot, _secret = raw_key.partition(".")
    key = None
    if dot and prefix and "\x00" not in raw_key:  # no key has a NUL, and the database cannot look one up
        key = APIKey.objects.select_related("tenant", "created_by").filter(prefix=prefix).first()
    if key is None or not key.is_valid(raw_key):
        raise _refused("Incorrect API key provided. Check the key, or create one on the API keys page.",
                       "invalid_api_key")
    _check_usable(key)
    now = timezone.now()
    if key.last_used_at is None or key.last_used_at < now - LAST_USED_RESOLUTION:
        APIKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return Principal(tenant=key.tenant, user=key.created_by, api_key=key)


def principal_from_key_again(api_key):
    """The principal of a key this connection already verified, read again: revoked, expired, narrowed or its
    tenant suspended since, it answers as ``principal_from_key`` would now."""
    key = APIKey.objects.select_related("tenant", "created_by").filter(pk=api_key.pk).first()
    if key is None:
        raise _refused("This API key was revoked. Create a new key on the API keys page.", "api_key_revoked")
    _check_usable(key)
    return Principal(tenant=key.tenant, user=key.created_by, api_key=key)


def _check_usable(key):
    if key.revoked:
        raise _refused("This API key was revoked. Create a new key on the API keys page.", "api_key_revoked")
    if key.is_expired:
        raise _refused(
            f"This API key expired at {key.expiry_date.isoformat()}. Create a new key on the API keys page.",
            "api_key_expired",
        )
    if not key.tenant.is_active:
        exc = PermissionDenied(
            f"Tenant '{key.tenant.slug}' is suspended; contact support to reactivate it.",
            code="tenant_suspended",
        )
        exc.override_code = "tenant_suspended"
        raise exc


def principal_from_membership(membership):
    if membership is None:
        exc = PermissionDenied("You belong to no tenant yet: create one or accept an invite.", code="no_tenant")
        exc.override_code = "no_tenant"
        raise exc
    if not membership.tenant.is_active:
        exc = PermissionDenied(
            f"Tenant '{membership.tenant.slug}' is suspended; contact support to reactivate it.",
            code="tenant_suspended",
        )
        exc.override_code = "tenant_suspended"
        raise exc
    return Principal(tenant=membership.tenant, user=membership.user, role=membership.role)
