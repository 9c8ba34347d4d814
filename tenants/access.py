"""The one way to reach each tenant-owned resource: every view, consumer and task goes through these.

Each takes the tenant explicitly and raises Http404 (never 403) for another tenant's resource, so that
a caller cannot even learn that it exists.
"""

from django.http import Http404

from .models import APIKey, AuditEntry, Invite, Membership


def access_tenant_membership(*, user, slug):
    """The user's membership in the tenant with this slug."""
    membership = Membership.objects.select_related("tenant").filter(user=user, tenant__slug=slug).first()
    if membership is None:
        raise Http404(f"No tenant '{slug}' among your tenants.")
    return membership


def access_api_key(*, tenant, prefix, lock=False):
    qs = APIKey.objects.filter(tenant=tenant, prefix=prefix)
    key = (qs.select_for_update() if lock else qs).first()
    if key is None:
        raise Http404(f"No API key '{prefix}' in this tenant.")
    return key


def access_membership(*, tenant, membership_id, lock=False):
    qs = Membership.objects.select_related("user").filter(tenant=tenant, id=membership_id)
    membership = (qs.select_for_update(of=("self",)) if lock else qs).first()
    if membership is None:
        raise Http404(f"No member {membership_id} in this tenant.")
    return membership


def access_invite(*, tenant, invite_id, lock=False):
    qs = Invite.objects.filter(tenant=tenant, id=invite_id)
    invite = (qs.select_for_update() if lock else qs).first()
    if invite is None:
        raise Http404(f"No invite {invite_id} in this tenant.")
    return invite


def tenant_api_keys(*, tenant):
    return APIKey.objects.filter(tenant=tenant).select_related("created_by").order_by("-created")


def tenant_members(*, tenant):
    return Membership.objects.filter(tenant=tenant).select_related("user").order_by("created_at")


def tenant_invites(*, tenant):
    return Invite.objects.filter(tenant=tenant).order_by("-created_at")


def user_memberships(*, user):
    return Membership.objects.filter(user=user).select_related("tenant").order_by("tenant__name")


def tenant_audit_log(*, tenant, action=None, before=None):
    """The tenant's audit entries, newest first; ``before`` (an entry id) pages back through them."""
    qs = AuditEntry.objects.filter(tenant=tenant).order_by("-id")
    if action:
        qs = qs.filter(action=action)
    if before is not None:
        qs = qs.filter(id__lt=before)
    return qs
