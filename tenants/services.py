"""Writes for tenants, people, invites and API keys: keyword-only, atomic, named <entity>_<action>.

Each service is its unit of work: it opens its own transaction and locks the rows it changes (SELECT ... FOR UPDATE,
through the access functions) inside it. Callers pass ids, never rows they locked themselves."""

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.exceptions import PermissionDenied

from vajra.errors import Conflict, InvalidRequest

from . import access
from .audit import audit_record
from .events import publish_tenant_event
from .models import APIKey, Invite, Membership, Tenant, User
from .roles import OWNER, can_grant_role, scopes_for_role


def _check_password(password, *, email):
    try:
        validate_password(password, user=User(email=email))
    except DjangoValidationError as exc:
        raise InvalidRequest(" ".join(exc.messages), param="password", code="weak_password") from None


def _email_taken(email):
    return User.objects.filter(email__iexact=email).exists()


def _slug_taken(slug):
    return Tenant.objects.filter(slug=slug).exists()


def _slug_conflict(slug, param):
    return Conflict(f"The tenant slug '{slug}' is taken; choose another.", code="slug_taken", param=param)


@transaction.atomic
def tenant_signup(*, email, password, name, tenant_name, tenant_slug):
    """A new person and their new tenant, with them as its owner."""
    email = email.strip().lower()
    if _email_taken(email):
        raise Conflict(f"An account with the email {email} exists; sign in instead.", code="email_taken",
                       param="email")
    if _slug_taken(tenant_slug):
        raise _slug_conflict(tenant_slug, "tenant_slug")
    _check_password(password, email=email)
    try:
        with transaction.atomic():
            user = User.objects.create_user(email=email, password=password, name=name)
            tenant = Tenant.objects.create(name=tenant_name, slug=tenant_slug)
    except IntegrityError:  # lost a race with a concurrent signup
        raise Conflict("That email or tenant slug was just taken; choose another.", code="conflict") from None
    membership = Membership.objects.create(tenant=tenant, user=user, role=OWNER)
    return membership


@transaction.atomic
def tenant_create(*, user, name, slug):
    """Another tenant for an existing person, who becomes its owner."""
    if _slug_taken(slug):
        raise _slug_conflict(slug, "slug")
    try:
        with transaction.atomic():
            tenant = Tenant.objects.create(name=name, slug=slug)
    except IntegrityError:
        raise _slug_conflict(slug, "slug") from None
    return Membership.objects.create(tenant=tenant, user=user, role=OWNER)


@transaction.atomic
def tenant_set_status(*, tenant_id, status):
    """Suspend or reactivate (staff, from Django admin or a support tool)."""
    if status not in {Tenant.ACTIVE, Tenant.SUSPENDED}:
        raise InvalidRequest(f"Unknown tenant status '{status}'.", param="status")
    Tenant.objects.filter(pk=tenant_id).update(status=status)
    publish_tenant_event(tenant_id, "tenant.status", {"status": status})


def _hash_token(token):
    return hashlib.sha256(token.encode()).hexdigest()


@transaction.atomic
def invite_create(*, principal, email, role, accept_url_for):
    """Invites an email to the tenant; mails the link after commit. Returns (invite, token)."""
    principal.require("members.manage")
    if not can_grant_role(principal.role, role):
        raise PermissionDenied(f"A {principal.role} cannot invite an {role}.", code="role_forbidden")
    email = email.strip().lower()
    tenant = principal.tenant
    if Membership.objects.filter(tenant=tenant, user__email__iexact=email).exists():
        raise Conflict(f"{email} is already a member of {tenant.slug}.", code="already_member", param="email")
    open_invites = Invite.objects.filter(tenant=tenant, email__iexact=email, accepted_at=None,
                                         revoked_at=None)
    # An expired invite can no longer be revoked (only pending ones can); retire it so it does not block.
    open_invites.filter(expires_at__lte=timezone.now()).update(revoked_at=timezone.now())
    if open_invites.exists():
        raise Conflict(f"{email} already has an open invite; revoke it to send a new one.",
                       code="invite_pending", param="email")
    token = secrets.token_urlsafe(32)
    invite = Invite.objects.create(
        tenant=tenant, email=email, role=role, token_hash=_hash_token(token), invited_by=principal.user,
        expires_at=timezone.now() + timedelta(hours=settings.VAJRA_INVITE_TTL_HOURS),
    )
    link = accept_url_for(token)
    inviter = principal.user.email if principal.user else "a member"
    transaction.on_commit(lambda: send_mail(
        subject=f"You are invited to {tenant.name} on VAJRA",
        message=f"{inviter} invited you to join {tenant.name} as {role}.\n\nAccept: {link}\n\n"
                f"The link expires at {invite.expires_at:%Y-%m-%d %H:%M} UTC.",
        from_email=None, recipient_list=[email],
    ))
    publish_tenant_event(tenant.pk, "invite.created", {"id": invite.pk, "email": email, "role": role})
    return invite, token


@transaction.atomic
def invite_accept(*, user, token):
    """The signed-in person joins the invite's tenant; the invite must be theirs, open and unexpired."""
    invite = Invite.objects.select_for_update().filter(token_hash=_hash_token(token)).first()
    if invite is None or invite.state == "revoked":
        raise InvalidRequest("This invite link is not valid; ask for a new invite.", param="token",
                             code="invite_invalid")
    if invite.state == "accepted":
        raise Conflict("This invite was already accepted.", code="invite_used", param="token")
    if invite.state == "expired":
        raise InvalidRequest("This invite has expired; ask for a new one.", param="token", code="invite_expired")
    if invite.email.lower() != user.email.lower():
        raise PermissionDenied(f"This invite is for {invite.email}; sign in with that email to accept it.",
                               code="invite_other_email")
    if Membership.objects.filter(tenant=invite.tenant, user=user).exists():
        raise Conflict(f"You are already a member of {invite.tenant.slug}.", code="already_member")
    invite.accepted_at = timezone.now()
    invite.accepted_by = user
    invite.save(update_fields=["accepted_at", "accepted_by"])
    membership = Membership.objects.create(tenant=invite.tenant, user=user, role=invite.role)
    publish_tenant_event(invite.tenant_id, "member.joined", {"id": membership.pk, "email": user.email})
    return membership


@transaction.atomic
def invite_revoke(*, principal, invite_id):
    """Revokes a pending invite of the principal's tenant (its link stops working); 409 for any other."""
    invite = access.access_invite(tenant=principal.tenant, invite_id=invite_id, lock=True)
    principal.require("members.manage")
    if invite.state != "pending":
        raise Conflict(f"This invite is {invite.state}; only pending invites can be revoked.",
                       code="invite_not_pending")
    invite.revoked_at = timezone.now()
    invite.save(update_fields=["revoked_at"])
    return invite


def _other_owners(membership):
    return Membership.objects.filter(tenant_id=membership.tenant_id, role=OWNER).exclude(pk=membership.pk)


@transaction.atomic
def membership_set_role(*, principal, membership_id, role):
    """Gives a member of the principal's tenant another role and narrows the keys they created to it."""
    membership = access.access_membership(tenant=principal.tenant, membership_id=membership_id, lock=True)
    principal.require("members.manage")
    if not (can_grant_role(principal.role, role) and can_grant_role(principal.role, membership.role)):
        raise PermissionDenied(f"A {principal.role} cannot change a {membership.role} to {role}.",
                               code="role_forbidden")
    if membership.role == OWNER and role != OWNER and not _other_owners(membership).exists():
        raise Conflict("A tenant needs at least one owner; make someone else owner first.", code="last_owner")
    old = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    if old != role:  # setting the role it has is harmless and not worth an entry
        narrowed, revoked = _narrow_member_keys(membership, role)
        audit_record(tenant=membership.tenant_id, principal=principal, action="member.role_changed",
                     target_type="membership", target_id=membership.pk,
                     details={"email": membership.user.email, "old": old, "new": role,
                              "narrowed_keys": narrowed, "revoked_keys": revoked})
    publish_tenant_event(membership.tenant_id, "member.role", {"id": membership.pk, "role": role})
    return membership


def _narrow_member_keys(membership, role):
    """A key can do no more than its creator's role allows: after a role change, each of the member's live keys in
    this tenant keeps only the scopes the new role has, and a key left with none is revoked. A wider role widens
    no key. Returns ({prefix: scopes kept}, [prefixes revoked])."""
    allowed = set(scopes_for_role(role))
    keys = APIKey.objects.select_for_update().filter(tenant_id=membership.tenant_id, created_by_id=membership.user_id,
                                                     revoked=False).order_by("prefix")
    narrowed, revoked = {}, []
    for key in keys:
        kept = sorted(set(key.scopes) & allowed)
        if kept == sorted(key.scopes):
            continue
        if kept:
            key.scopes = kept
            key.save(update_fields=["scopes"])
            narrowed[key.prefix] = kept
            publish_tenant_event(membership.tenant_id, "api_key.scopes", {"prefix": key.prefix, "scopes": kept})
        else:
            key.revoked, key.revoked_at = True, timezone.now()
            key.save(update_fields=["revoked", "revoked_at"])
            revoked.append(key.prefix)
            publish_tenant_event(membership.tenant_id, "api_key.revoked", {"prefix": key.prefix})
    return narrowed, revoked


@transaction.atomic
def membership_remove(*, principal, membership_id):
    """Removes a member (or lets a member leave); revokes the keys they created in this tenant. Returns the removed
    membership (no longer in the database)."""
    membership = access.access_membership(tenant=principal.tenant, membership_id=membership_id, lock=True)
    leaving = principal.user is not None and membership.user_id == principal.user.pk
    if not leaving:
        principal.require("members.manage")
        if not can_grant_role(principal.role, membership.role):
            raise PermissionDenied(f"A {principal.role} cannot remove a {membership.role}.",
                                   code="role_forbidden")
    if membership.role == OWNER and not _other_owners(membership).exists():
        raise Conflict("A tenant needs at least one owner; make someone else owner first.", code="last_owner")
    now = timezone.now()
    keys = APIKey.objects.filter(tenant_id=membership.tenant_id, created_by_id=membership.user_id, revoked=False)
    revoked = sorted(keys.values_list("prefix", flat=True))
    keys.update(revoked=True, revoked_at=now)
    audit_record(tenant=membership.tenant_id, principal=principal, action="member.removed",
                 target_type="membership", target_id=membership.pk,
                 details={"email": membership.user.email, "role": membership.role, "left": leaving,
                          "revoked_keys": revoked})
    membership.delete()
    publish_tenant_event(membership.tenant_id, "member.removed", {"user": membership.user.email})
    for prefix in revoked:
        publish_tenant_event(membership.tenant_id, "api_key.revoked", {"prefix": prefix})
    return membership


@transaction.atomic
def api_key_create(*, principal, name, scopes, expires_at=None):
    """A new key for the principal's tenant. Returns (key, secret); the secret is never stored or shown again."""
    principal.require("keys.view")
    allowed = scopes_for_role(principal.role)
    beyond = sorted(set(scopes) - set(allowed))
    if beyond:
        raise PermissionDenied(
            f"Your role '{principal.role}' cannot grant {', '.join(beyond)}; choose from {', '.join(allowed)}.",
            code="scope_forbidden",
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidRequest("expires_at must be in the future.", param="expires_at", code="expiry_in_past")
    key, secret = APIKey.objects.create_key(
        name=name, tenant=principal.tenant, created_by=principal.user, scopes=sorted(set(scopes)),
        expiry_date=expires_at,
    )
    audit_record(tenant=principal.tenant, principal=principal, action="api_key.created", target_type="api_key",
                 target_id=key.prefix, details={"name": key.name, "scopes": key.scopes,
                                                "expires_at": expires_at.isoformat() if expires_at else None})
    publish_tenant_event(principal.tenant.pk, "api_key.created", {"prefix": key.prefix, "name": key.name})
    return key, secret


@transaction.atomic
def api_key_revoke(*, principal, prefix):
    """Revokes the tenant's key ``prefix`` (it stays listed, marked revoked); a key someone else created needs
    keys.manage_all. Revoking twice is harmless."""
    api_key = access.access_api_key(tenant=principal.tenant, prefix=prefix, lock=True)
    if api_key.created_by_id != getattr(principal.user, "pk", None):
        principal.require("keys.manage_all")
    if api_key.revoked:
        return api_key  # revoking twice is harmless and leaves the first revocation time
    api_key.revoked = True
    api_key.revoked_at = timezone.now()
    api_key.save(update_fields=["revoked", "revoked_at"])
    audit_record(tenant=principal.tenant, principal=principal, action="api_key.revoked", target_type="api_key",
                 target_id=api_key.prefix, details={"name": api_key.name})
    publish_tenant_event(principal.tenant.pk, "api_key.revoked", {"prefix": api_key.prefix})
    return api_key
