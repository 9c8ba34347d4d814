"""Members, roles, invites, tenants and signup over /api/v1/."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.exceptions import PermissionDenied
from rest_framework.test import APIClient

from tenants import services
from tenants.keys import principal_from_membership
from tenants.models import APIKey, Invite, Membership, Tenant, User
from tenants.roles import ADMIN, BILLING_VIEWER, DEVELOPER, OWNER
from tests.factories import PASSWORD, create_key, make_member, session_client
from tests.helpers import assert_error
from vajra.errors import Conflict, InvalidRequest


def member_of(user, tenant):
    return Membership.objects.get(user=user, tenant=tenant)


def set_role(client, membership, role):
    return client.patch(f"/api/v1/members/{membership.pk}", {"role": role}, format="json")


def invite(client, email="dave@example.test", role=DEVELOPER):
    return client.post("/api/v1/invites", {"email": email, "role": role}, format="json")


# Members


def test_list_members(alice_client, alice, bob, acme, charlie):
    response = alice_client.get("/api/v1/members")

    assert response.status_code == 200, response.content
    rows = response.json()["data"]
    assert [(m["id"], m["email"], m["role"]) for m in rows] == [
        (member_of(alice, acme).pk, "alice@acme.test", OWNER),
        (member_of(bob, acme).pk, "bob@acme.test", DEVELOPER),
    ]
    assert all(m["joined_at"] for m in rows)


def test_any_member_may_list_members(bob_client, bob, acme):
    assert len(bob_client.get("/api/v1/members").json()["data"]) == 2
    member = bob_client.get(f"/api/v1/members/{member_of(bob, acme).pk}")
    assert member.status_code == 200 and member.json()["email"] == "bob@acme.test"


def test_owner_changes_a_role(alice_client, bob, acme):
    member = member_of(bob, acme)

    response = alice_client.patch(f"/api/v1/members/{member.pk}", {"role": ADMIN}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["role"] == ADMIN
    member.refresh_from_db()
    assert member.role == ADMIN


def test_admin_changes_roles_below_owner(acme, alice, bob, unchanged_db):
    admin = session_client(make_member("ada@acme.test", acme, ADMIN))
    bob_member, alice_member = member_of(bob, acme), member_of(alice, acme)

    assert set_role(admin, bob_member, BILLING_VIEWER).status_code == 200
    with unchanged_db():
        assert_error(set_role(admin, bob_member, OWNER), 403, code="role_forbidden")
        assert_error(set_role(admin, alice_member, ADMIN), 403, code="role_forbidden")
        assert_error(admin.delete(f"/api/v1/members/{alice_member.pk}"), 403, code="role_forbidden")


@pytest.mark.parametrize("role", [DEVELOPER, BILLING_VIEWER])
def test_only_owners_and_admins_change_roles(acme, alice, role, unchanged_db):
    client = session_client(make_member(f"{role}@acme.test", acme, role))
    target = member_of(alice, acme)
    with unchanged_db():
        error = assert_error(set_role(client, target, DEVELOPER), 403, code="role_forbidden")
    assert "members.manage" in error["message"]


def test_unknown_role_is_400_listing_the_roles(alice_client, bob, acme, unchanged_db):
    with unchanged_db():
        error = assert_error(alice_client.patch(f"/api/v1/members/{member_of(bob, acme).pk}", {"role": "god"},
                                                format="json"), 400, param="role")
    assert "billing-viewer" in error["message"]


def test_last_owner_cannot_be_demoted(alice_client, alice, acme, unchanged_db):
    with unchanged_db():
        error = assert_error(set_role(alice_client, member_of(alice, acme), ADMIN), 409, code="last_owner")
    assert error["type"] == "conflict_error" and "owner" in error["message"]


def test_last_owner_cannot_be_removed_or_leave(alice_client, alice, bob, acme, unchanged_db):
    with unchanged_db():
        response = alice_client.delete(f"/api/v1/members/{member_of(alice, acme).pk}")
    assert_error(response, 409, code="last_owner")


def test_an_owner_may_step_down_once_there_is_another(alice_client, alice, acme):
    make_member("olga@acme.test", acme, OWNER)
    response = set_role(alice_client, member_of(alice, acme), ADMIN)
    assert response.status_code == 200, response.content
    assert member_of(alice, acme).role == ADMIN


def test_removing_a_member_revokes_their_keys_in_that_tenant_only(alice_client, alice, bob, acme, contoso):
    bob_key, _ = create_key(bob, acme)
    Membership.objects.create(user=bob, tenant=contoso, role=DEVELOPER)
    bob_contoso_key, _ = create_key(bob, contoso)
    alice_key, _ = create_key(alice, acme)

    response = alice_client.delete(f"/api/v1/members/{member_of(bob, acme).pk}")

    assert response.status_code == 204, response.content
    assert not Membership.objects.filter(user=bob, tenant=acme).exists()
    assert User.objects.filter(pk=bob.pk).exists()
    bob_key.refresh_from_db()
    assert bob_key.revoked and bob_key.revoked_at is not None
    assert not APIKey.objects.get(pk=bob_contoso_key.pk).revoked
    assert not APIKey.objects.get(pk=alice_key.pk).revoked


def test_a_member_may_leave(bob_client, bob, acme):
    assert bob_client.delete(f"/api/v1/members/{member_of(bob, acme).pk}").status_code == 204
    assert not Membership.objects.filter(user=bob, tenant=acme).exists()


def test_a_developer_cannot_remove_others(bob_client, alice, acme, unchanged_db):
    with unchanged_db():
        response = bob_client.delete(f"/api/v1/members/{member_of(alice, acme).pk}")
    assert_error(response, 403, code="role_forbidden")


# Invites


def test_invite_is_created_and_mailed_on_commit(alice_client, acme, mailoutbox,
                                                django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = invite(alice_client, email="Dave@Example.test", role=ADMIN)

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["email"], body["role"], body["state"]) == ("dave@example.test", ADMIN, "pending")
    stored = Invite.objects.get(pk=body["id"])
    assert stored.tenant == acme and stored.invited_by.email == "alice@acme.test"
    assert len(mailoutbox) == 1
    mail = mailoutbox[0]
    assert mail.to == ["dave@example.test"] and "Acme" in mail.subject
    token = re.search(r"/invites/([^/\s]+)/accept/", mail.body).group(1)
    assert stored.token_hash != token and token not in str(Invite.objects.values())
    assert "alice@acme.test" in mail.body and ADMIN in mail.body


def test_no_mail_when_the_invite_is_refused(alice_client, mailoutbox, django_capture_on_commit_callbacks):
    invite(alice_client)
    with django_capture_on_commit_callbacks(execute=True):
        assert_error(invite(alice_client), 409)
    assert mailoutbox == []


def test_duplicate_open_invite_is_409(alice_client, unchanged_db):
    assert invite(alice_client, email="dave@example.test").status_code == 201
    with unchanged_db():
        error = assert_error(invite(alice_client, email="DAVE@example.test"), 409, code="invite_pending",
                             param="email")
    assert "revoke" in error["message"]


def test_inviting_a_member_is_409(alice_client, bob, unchanged_db):
    with unchanged_db():
        assert_error(invite(alice_client, email="Bob@Acme.test"), 409, code="already_member", param="email")


def test_an_expired_invite_does_not_block_a_new_one(alice_client, acme):
    old = invite(alice_client).json()["id"]
    Invite.objects.filter(pk=old).update(expires_at=timezone.now() - timedelta(minutes=1))

    response = invite(alice_client)

    assert response.status_code == 201, response.content
    assert Invite.objects.filter(tenant=acme, email="dave@example.test").count() == 2
    assert Invite.objects.get(pk=old).state in {"expired", "revoked"}


def test_admin_cannot_invite_an_owner(acme, unchanged_db):
    admin = session_client(make_member("ada@acme.test", acme, ADMIN))
    with unchanged_db():
        assert_error(invite(admin, role=OWNER), 403, code="role_forbidden")
    assert invite(admin, role=ADMIN).status_code == 201


def test_list_and_revoke_invites(alice_client, acme):
    invite_id = invite(alice_client).json()["id"]
    assert [i["id"] for i in alice_client.get("/api/v1/invites").json()["data"]] == [invite_id]

    response = alice_client.delete(f"/api/v1/invites/{invite_id}")

    assert response.status_code == 200, response.content
    assert response.json()["state"] == "revoked"
    assert Invite.objects.get(pk=invite_id).revoked_at is not None
    assert alice_client.get("/api/v1/invites").json()["data"][0]["state"] == "revoked"


def test_revoking_a_revoked_invite_is_409(alice_client, unchanged_db):
    invite_id = invite(alice_client).json()["id"]
    alice_client.delete(f"/api/v1/invites/{invite_id}")
    with unchanged_db():
        assert_error(alice_client.delete(f"/api/v1/invites/{invite_id}"), 409, code="invite_not_pending")


def test_a_revoked_invite_frees_the_email_for_a_new_one(alice_client):
    invite_id = invite(alice_client).json()["id"]
    alice_client.delete(f"/api/v1/invites/{invite_id}")
    assert invite(alice_client).status_code == 201


# Accepting an invite (the dashboard's accept page calls this service)


def _invite_token(alice, acme, email="dave@example.test", role=DEVELOPER):
    principal = principal_from_membership(member_of(alice, acme))
    _, token = services.invite_create(principal=principal, email=email, role=role,
                                      accept_url_for=lambda t: f"http://testserver/invites/{t}/accept/")
    return token


def test_invite_accept_makes_a_member_with_the_role(alice, acme):
    token = _invite_token(alice, acme, role=ADMIN)
    dave = User.objects.create_user(email="dave@example.test", password=PASSWORD)

    membership = services.invite_accept(user=dave, token=token)

    assert (membership.tenant, membership.user, membership.role) == (acme, dave, ADMIN)
    stored = Invite.objects.get(tenant=acme)
    assert stored.state == "accepted" and stored.accepted_by == dave
    assert session_client(dave).get("/api/v1/me").json()["tenant"]["slug"] == "acme"


def test_invite_accept_for_another_email_is_403(alice, acme, charlie, unchanged_db):
    token = _invite_token(alice, acme)
    with unchanged_db(), pytest.raises(PermissionDenied) as refused:
        services.invite_accept(user=charlie, token=token)
    assert refused.value.status_code == 403 and refused.value.get_codes() == "invite_other_email"


def test_expired_invite_accept_is_400(alice, acme, unchanged_db):
    token = _invite_token(alice, acme)
    Invite.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    dave = User.objects.create_user(email="dave@example.test", password=PASSWORD)
    with unchanged_db(), pytest.raises(InvalidRequest) as refused:
        services.invite_accept(user=dave, token=token)
    assert refused.value.status_code == 400 and refused.value.get_codes() == "invite_expired"


def test_used_invite_accept_is_409(alice, acme, unchanged_db):
    token = _invite_token(alice, acme)
    dave = User.objects.create_user(email="dave@example.test", password=PASSWORD)
    services.invite_accept(user=dave, token=token)
    with unchanged_db(), pytest.raises(Conflict) as refused:
        services.invite_accept(user=dave, token=token)
    assert refused.value.status_code == 409 and refused.value.get_codes() == "invite_used"


@pytest.mark.parametrize("revoked", [True, False])
def test_revoked_or_unknown_invite_token_is_400(alice, acme, unchanged_db, revoked):
    token = _invite_token(alice, acme)
    if revoked:
        Invite.objects.update(revoked_at=timezone.now())
    else:
        token = "not-a-token"
    dave = User.objects.create_user(email="dave@example.test", password=PASSWORD)
    with unchanged_db(), pytest.raises(InvalidRequest) as refused:
        services.invite_accept(user=dave, token=token)
    assert refused.value.get_codes() == "invite_invalid"


# Tenants


def test_create_another_tenant(alice_client, alice):
    response = alice_client.post("/api/v1/tenants", {"name": "Acme Labs", "slug": "acme-labs"}, format="json")

    assert response.status_code == 201, response.content
    assert response.json() == {"slug": "acme-labs", "name": "Acme Labs", "status": "active", "role": OWNER}
    assert member_of(alice, Tenant.objects.get(slug="acme-labs")).role == OWNER


def test_tenant_slug_taken_is_409(alice_client, contoso, unchanged_db):
    with unchanged_db():
        response = alice_client.post("/api/v1/tenants", {"name": "Mine", "slug": "contoso"}, format="json")
    error = assert_error(response, 409, code="slug_taken", param="slug")
    assert "contoso" in error["message"]


@pytest.mark.parametrize("slug", ["Upper", "-edge", "edge-", "under_score", "a" * 41, ""])
def test_tenant_slug_must_be_a_slug(alice_client, unchanged_db, slug):
    with unchanged_db():
        assert_error(alice_client.post("/api/v1/tenants", {"name": "X", "slug": slug}, format="json"), 400,
                     param="slug")


def test_list_tenants(alice_client, alice, charlie, contoso):
    Membership.objects.create(user=alice, tenant=contoso, role=BILLING_VIEWER)

    response = alice_client.get("/api/v1/tenants")

    assert response.status_code == 200, response.content
    assert response.json()["data"] == [
        {"slug": "acme", "name": "Acme", "status": "active", "role": OWNER},
        {"slug": "contoso", "name": "Contoso", "status": "active", "role": BILLING_VIEWER},
    ]


# Signup

SIGNUP = {"email": "erin@example.test", "password": PASSWORD, "name": "Erin", "tenant_name": "Erin's Lab",
          "tenant_slug": "erins-lab"}


def signup(**changes):
    client = APIClient()
    return client, client.post("/api/v1/signup", dict(SIGNUP, **changes), format="json")


def test_signup_creates_person_tenant_owner_membership_and_session(db):
    client, response = signup(email=" Erin@Example.test ")

    assert response.status_code == 201, response.content
    assert response.json() == {"tenant": {"slug": "erins-lab", "name": "Erin's Lab", "status": "active"},
                               "user": "erin@example.test", "role": OWNER}
    user = User.objects.get(email="erin@example.test")
    assert user.name == "Erin" and user.check_password(PASSWORD)
    assert member_of(user, Tenant.objects.get(slug="erins-lab")).role == OWNER
    assert "sessionid" in response.cookies
    me = client.get("/api/v1/me")
    assert me.status_code == 200 and me.json()["user"] == "erin@example.test" and me.json()["role"] == OWNER


def test_signup_email_taken_is_409(alice, unchanged_db):
    with unchanged_db():
        error = assert_error(signup(email="ALICE@acme.test")[1], 409, code="email_taken", param="email")
    assert "sign in" in error["message"]


def test_signup_slug_taken_is_409(acme, unchanged_db):
    with unchanged_db():
        assert_error(signup(tenant_slug="acme")[1], 409, code="slug_taken", param="tenant_slug")


@pytest.mark.parametrize("password", ["short", "1234567890123", "password123", "erin@example.test"])
def test_signup_weak_password_is_400(db, unchanged_db, password):
    with unchanged_db():
        error = assert_error(signup(password=password)[1], 400, code="weak_password", param="password")
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("missing", ["email", "password", "tenant_name", "tenant_slug"])
def test_signup_requires_its_fields(db, unchanged_db, missing):
    body = {k: v for k, v in SIGNUP.items() if k != missing}
    with unchanged_db():
        error = assert_error(APIClient().post("/api/v1/signup", body, format="json"), 400, param=missing)
    assert "required" in error["message"]


def test_a_person_with_no_tenant_may_list_and_create_tenants(bob_client, bob, acme):
    """Told "create one or accept an invite", a person who left their only tenant must be able to."""
    assert bob_client.delete(f"/api/v1/members/{member_of(bob, acme).pk}").status_code == 204
    error = assert_error(bob_client.get("/api/v1/me"), 403, code="no_tenant")
    assert "create one" in error["message"]

    assert bob_client.get("/api/v1/tenants").json() == {"data": []}
    response = bob_client.post("/api/v1/tenants", {"name": "Bob's", "slug": "bobs"}, format="json")

    assert response.status_code == 201, response.content
    assert bob_client.get("/api/v1/me").json()["tenant"]["slug"] == "bobs"


def test_tenants_need_a_signed_in_person(db):
    assert_error(APIClient().get("/api/v1/tenants"), 401, code="not_authenticated")
    assert_error(APIClient().post("/api/v1/tenants", {"name": "X", "slug": "x"}, format="json"), 401)
