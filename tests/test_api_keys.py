"""API keys: created for a tenant from a session, shown once, stored hashed, scoped, expiring, revocable."""

from datetime import timedelta

import pytest
from django.utils import timezone

from adapters.models import BaseModel
from tenants import services
from tenants.keys import LAST_USED_RESOLUTION
from tenants.models import APIKey, Tenant
from tenants.roles import BILLING_VIEWER, SCOPES
from tests.factories import create_key, key_client, make_member, session_client
from tests.helpers import assert_error, db_snapshot


def create(client, **body):
    body.setdefault("name", "ci")
    body.setdefault("scopes", ["infer"])
    return client.post("/api/v1/keys", body, format="json")


# Creating, listing, hashing


def test_create_shows_the_secret_once_and_stores_only_its_hash(alice_client, alice, acme):
    response = create(alice_client, name="ci", scopes=["usage:read", "infer"])

    assert response.status_code == 201, response.content
    body = response.json()
    secret, prefix = body["key"], body["prefix"]
    assert secret.startswith(f"{prefix}.") and len(secret) > len(prefix) + 20
    assert body["scopes"] == ["infer", "usage:read"]
    assert (body["name"], body["state"], body["created_by"]) == ("ci", "active", "alice@acme.test")
    assert body["expires_at"] is None and body["last_used_at"] is None and body["revoked_at"] is None

    key = APIKey.objects.get(prefix=prefix)
    assert (key.tenant, key.created_by, key.scopes) == (acme, alice, ["infer", "usage:read"])
    assert key.hashed_key != secret and key.is_valid(secret)
    assert secret.partition(".")[2] not in str(db_snapshot()), "the secret must not be stored anywhere"

    for read in (alice_client.get("/api/v1/keys"), alice_client.get(f"/api/v1/keys/{prefix}")):
        assert read.status_code == 200
        assert secret.partition(".")[2] not in read.content.decode()
    listed = alice_client.get("/api/v1/keys").json()["data"]
    assert [k["prefix"] for k in listed] == [prefix]
    assert "key" not in listed[0] and "hashed_key" not in listed[0]
    assert "key" not in alice_client.get(f"/api/v1/keys/{prefix}").json()


def test_the_new_key_authenticates_as_its_tenant_with_its_scopes(alice_client):
    secret = create(alice_client, scopes=["train", "infer"]).json()["key"]

    me = key_client(secret).get("/api/v1/me")

    assert me.status_code == 200, me.content
    assert me.json() == {"tenant": {"slug": "acme", "name": "Acme", "status": "active"},
                         "user": "alice@acme.test", "role": None, "api_key": secret.partition(".")[0],
                         "scopes": ["infer", "train"]}


@pytest.mark.parametrize("scope", SCOPES)
def test_an_owner_may_grant_every_scope(alice_client, scope):
    response = create(alice_client, scopes=[scope])
    assert response.status_code == 201, response.content
    assert APIKey.objects.get(prefix=response.json()["prefix"]).scopes == [scope]


def test_list_is_newest_first_and_includes_revoked_keys(alice_client, alice, acme):
    old, _ = create_key(alice, acme)
    new = create(alice_client).json()["prefix"]
    alice_client.delete(f"/api/v1/keys/{old.prefix}")

    listed = alice_client.get("/api/v1/keys").json()["data"]

    assert [(k["prefix"], k["state"]) for k in listed] == [(new, "active"), (old.prefix, "revoked")]


@pytest.mark.parametrize("scopes, param", [
    (["infer", "everything"], "scopes.1"),
    ([], "scopes"),
    ("infer", "scopes"),
])
def test_bad_scopes_are_refused(alice_client, unchanged_db, scopes, param):
    with unchanged_db():
        error = assert_error(create(alice_client, scopes=scopes), 400, param=param)
    assert error["type"] == "invalid_request_error"


def test_unknown_scope_message_lists_the_valid_ones(alice_client, unchanged_db):
    with unchanged_db():
        error = assert_error(create(alice_client, scopes=["everything"]), 400, param="scopes.0")
    assert "everything" in error["message"]
    assert all(scope in error["message"] for scope in SCOPES), error["message"]


# Expiry


def test_optional_expiry_is_kept_and_enforced(alice_client):
    expires = timezone.now() + timedelta(hours=1)
    response = create(alice_client, expires_at=expires.isoformat())
    assert response.status_code == 201, response.content
    key = APIKey.objects.get(prefix=response.json()["prefix"])
    assert abs(key.expiry_date - expires) < timedelta(seconds=1)
    assert key_client(response.json()["key"]).get("/api/v1/me").status_code == 200

    APIKey.objects.filter(pk=key.pk).update(expiry_date=timezone.now() - timedelta(seconds=1))

    error = assert_error(key_client(response.json()["key"]).get("/api/v1/me"), 401, code="api_key_expired")
    assert "expired" in error["message"] and "Create a new key" in error["message"]
    assert alice_client.get(f"/api/v1/keys/{key.prefix}").json()["state"] == "expired"


def test_expiry_in_the_past_is_refused(alice_client, unchanged_db):
    past = (timezone.now() - timedelta(minutes=1)).isoformat()
    with unchanged_db():
        assert_error(create(alice_client, expires_at=past), 400, code="expiry_in_past", param="expires_at")


# Revoking


def test_revoke_keeps_the_key_listed_and_refuses_it_from_then_on(alice_client, alice, acme):
    key, secret = create_key(alice, acme)
    assert key_client(secret).get("/api/v1/me").status_code == 200

    response = alice_client.delete(f"/api/v1/keys/{key.prefix}")

    assert response.status_code == 200, response.content
    assert response.json()["state"] == "revoked" and response.json()["revoked_at"]
    key.refresh_from_db()
    assert key.revoked and key.revoked_at is not None
    error = assert_error(key_client(secret).get("/api/v1/me"), 401, code="api_key_revoked")
    assert "revoked" in error["message"]


def test_revoking_twice_keeps_the_first_revocation_time(alice_client, alice, acme):
    key, _ = create_key(alice, acme)
    alice_client.delete(f"/api/v1/keys/{key.prefix}")
    first = APIKey.objects.get(pk=key.pk).revoked_at

    again = alice_client.delete(f"/api/v1/keys/{key.prefix}")

    assert again.status_code == 200
    assert APIKey.objects.get(pk=key.pk).revoked_at == first


def test_unknown_prefix_is_404(alice_client, unchanged_db):
    with unchanged_db():
        assert_error(alice_client.get("/api/v1/keys/nosuchkey"), 404, code="not_found")
        assert_error(alice_client.delete("/api/v1/keys/nosuchkey"), 404, code="not_found")


# last_used_at


def test_last_used_at_is_recorded_on_use(alice_key):
    key, secret = alice_key
    assert key.last_used_at is None

    key_client(secret).get("/api/v1/me")

    key.refresh_from_db()
    assert key.last_used_at is not None and timezone.now() - key.last_used_at < timedelta(seconds=5)


def test_last_used_at_is_written_at_most_once_per_resolution(alice_key):
    key, secret = alice_key
    recent = timezone.now() - LAST_USED_RESOLUTION / 2
    APIKey.objects.filter(pk=key.pk).update(last_used_at=recent)
    key_client(secret).get("/api/v1/me")
    assert APIKey.objects.get(pk=key.pk).last_used_at == recent

    stale = timezone.now() - LAST_USED_RESOLUTION * 2
    APIKey.objects.filter(pk=key.pk).update(last_used_at=stale)
    key_client(secret).get("/api/v1/me")
    assert APIKey.objects.get(pk=key.pk).last_used_at > stale


def test_last_used_at_is_shown_in_the_listing(alice_client, alice_key):
    key, secret = alice_key
    key_client(secret).get("/api/v1/me")
    assert alice_client.get(f"/api/v1/keys/{key.prefix}").json()["last_used_at"] is not None


# Presenting a key


def test_bearer_scheme_is_case_insensitive(alice_key):
    _, secret = alice_key
    client = key_client(secret)
    client.credentials(HTTP_AUTHORIZATION=f"bearer {secret}")
    assert client.get("/api/v1/me").status_code == 200


@pytest.mark.parametrize("presented", ["wrong-secret", "nosuchprefix.abc", "no-dot-at-all", ".", "ab\x00cd.x",
                                       "abc.d\x00ef"])
def test_wrong_key_is_401_invalid_api_key(alice_key, unchanged_db, presented):
    key, _ = alice_key
    raw = f"{key.prefix}.{'x' * 32}" if presented == "wrong-secret" else presented
    with unchanged_db():
        response = key_client(raw).get("/api/v1/me")
    error = assert_error(response, 401, code="invalid_api_key")
    assert error["type"] == "authentication_error"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert APIKey.objects.get(pk=key.pk).last_used_at is None


@pytest.mark.parametrize("header", ["Token abc.def", "Bearer", "Bearer    ", "Basic Zm9vOmJhcg==", "abc.def"])
def test_malformed_authorization_header_is_401(alice_key, unchanged_db, header):
    client = key_client("unused")
    client.credentials(HTTP_AUTHORIZATION=header)
    with unchanged_db():
        error = assert_error(client.get("/api/v1/me"), 401, code="invalid_authorization_header")
    assert "Authorization: Bearer" in error["message"]


def test_no_credentials_is_401(db, client):
    error = assert_error(client.get("/api/v1/me"), 401, code="not_authenticated")
    assert "Bearer" in error["message"]


def test_revoked_key_of_another_tenant_is_still_just_revoked(charlie, contoso, unchanged_db):
    key, secret = create_key(charlie, contoso, revoked=True)
    with unchanged_db():
        assert_error(key_client(secret).get("/api/v1/me"), 401, code="api_key_revoked")


def test_expired_key_is_401(alice, acme, unchanged_db):
    _, secret = create_key(alice, acme, expiry_date=timezone.now() - timedelta(days=1))
    with unchanged_db():
        assert_error(key_client(secret).get("/api/v1/me"), 401, code="api_key_expired")


# Scopes gate actions (test views in tests/urls_scopes.py)

ACTION_SCOPES = [("infer", "infer"), ("train", "train"), ("adapters.write", "adapters:write"),
                 ("usage.read", "usage:read"), ("billing.read", "billing:read")]


@pytest.mark.urls("tests.urls_scopes")
@pytest.mark.parametrize("action, scope", ACTION_SCOPES)
def test_a_key_with_the_scope_may_act(alice, acme, action, scope):
    key, secret = create_key(alice, acme, scopes=[scope])
    response = key_client(secret).get(f"/api/v1/test/{action}")
    assert response.status_code == 200, response.content
    assert response.json() == {"tenant": "acme", "api_key": key.prefix}


@pytest.mark.urls("tests.urls_scopes")
@pytest.mark.parametrize("action, scope", ACTION_SCOPES)
def test_a_key_without_the_scope_is_403_missing_scope(alice, acme, unchanged_db, action, scope):
    _, secret = create_key(alice, acme, scopes=[s for s in SCOPES if s != scope])
    with unchanged_db():
        error = assert_error(key_client(secret).post(f"/api/v1/test/{action}"), 403, code="missing_scope")
    assert f"'{scope}'" in error["message"] and error["type"] == "permission_error"


@pytest.mark.urls("tests.urls_scopes")
def test_per_method_actions(alice, acme):
    _, reader = create_key(alice, acme, scopes=["usage:read"])
    _, writer = create_key(alice, acme, scopes=["adapters:write"])

    assert key_client(reader).get("/api/v1/test/per-method").status_code == 200
    assert_error(key_client(reader).post("/api/v1/test/per-method"), 403, code="missing_scope")
    assert key_client(writer).post("/api/v1/test/per-method").status_code == 200
    assert_error(key_client(writer).get("/api/v1/test/per-method"), 403, code="missing_scope")


@pytest.mark.urls("tests.urls_scopes")
@pytest.mark.parametrize("role, action, allowed", [
    ("owner", "billing.read", True),
    ("developer", "infer", True),
    ("developer", "billing.read", False),
    ("billing-viewer", "billing.read", True),
    ("billing-viewer", "usage.read", True),
    ("billing-viewer", "infer", False),
    ("billing-viewer", "train", False),
])
def test_sessions_act_by_role(acme, unchanged_db, role, action, allowed):
    client = session_client(make_member(f"{role}@acme.test", acme, role))
    if allowed:
        assert client.get(f"/api/v1/test/{action}").status_code == 200
        return
    with unchanged_db():
        error = assert_error(client.get(f"/api/v1/test/{action}"), 403, code="role_forbidden")
    assert role in error["message"] and action in error["message"]


# Keys cannot manage keys, members or invites

def _management_requests(acme_key, member, invite):
    return [
        ("get", "/api/v1/keys", None),
        ("post", "/api/v1/keys", {"name": "minted", "scopes": ["infer"]}),
        ("get", f"/api/v1/keys/{acme_key.prefix}", None),
        ("delete", f"/api/v1/keys/{acme_key.prefix}", None),
        ("get", "/api/v1/members", None),
        ("get", f"/api/v1/members/{member.pk}", None),
        ("patch", f"/api/v1/members/{member.pk}", {"role": "admin"}),
        ("delete", f"/api/v1/members/{member.pk}", None),
        ("get", "/api/v1/invites", None),
        ("post", "/api/v1/invites", {"email": "eve@acme.test", "role": "owner"}),
        ("delete", f"/api/v1/invites/{invite.pk}", None),
        ("get", "/api/v1/tenants", None),
        ("post", "/api/v1/tenants", {"name": "Minted", "slug": "minted"}),
    ]


@pytest.mark.parametrize("index", range(13))
def test_an_api_key_cannot_manage_keys_members_or_invites(alice, bob, acme, unchanged_db, index):
    key, secret = create_key(alice, acme)  # every scope there is
    member = bob.memberships.get()
    invite = acme.invites.create(email="dave@acme.test", role="developer", token_hash="x" * 64,
                                 invited_by=alice, expires_at=timezone.now() + timedelta(days=1))
    method, path, body = _management_requests(key, member, invite)[index]

    with unchanged_db():
        response = getattr(key_client(secret), method)(path, body, format="json")

    error = assert_error(response, 403, code="session_required")
    assert "sign in" in error["message"]


# Suspended tenants


def test_suspended_tenant_is_refused_for_keys_and_sessions(alice_client, alice_key, acme, unchanged_db):
    _, secret = alice_key
    services.tenant_set_status(tenant_id=acme.pk, status=Tenant.SUSPENDED)

    with unchanged_db():
        error = assert_error(key_client(secret).get("/api/v1/me"), 403, code="tenant_suspended")
        assert "suspended" in error["message"]
        assert_error(alice_client.get("/api/v1/me"), 403, code="tenant_suspended")
        assert_error(create(alice_client), 403, code="tenant_suspended")

    services.tenant_set_status(tenant_id=acme.pk, status=Tenant.ACTIVE)
    assert key_client(secret).get("/api/v1/me").status_code == 200
    assert alice_client.get("/api/v1/me").status_code == 200


def test_suspending_one_tenant_leaves_others_alone(alice_key, charlie_key, acme):
    services.tenant_set_status(tenant_id=acme.pk, status=Tenant.SUSPENDED)
    assert key_client(charlie_key[1]).get("/api/v1/me").status_code == 200


# A member's role limits the scopes they can grant and the keys they can revoke


def test_developer_cannot_grant_billing_read(bob_client, unchanged_db):
    with unchanged_db():
        response = create(bob_client, scopes=["infer", "billing:read"])
    error = assert_error(response, 403, code="scope_forbidden")
    assert "billing:read" in error["message"]


def test_developer_may_grant_the_scopes_of_their_role(bob_client, bob):
    response = create(bob_client, scopes=["infer", "train", "adapters:write", "usage:read"])
    assert response.status_code == 201, response.content
    assert APIKey.objects.get(prefix=response.json()["prefix"]).created_by == bob


def test_billing_viewer_may_grant_only_billing_and_usage(acme, alice, unchanged_db):
    client = session_client(make_member("bea@acme.test", acme, BILLING_VIEWER))
    assert create(client, scopes=["billing:read", "usage:read"]).status_code == 201
    with unchanged_db():
        assert_error(create(client, scopes=["infer"]), 403, code="scope_forbidden")


def test_developer_may_revoke_their_own_key(bob_client, bob, acme):
    key, _ = create_key(bob, acme, scopes=["infer"])
    response = bob_client.delete(f"/api/v1/keys/{key.prefix}")
    assert response.status_code == 200, response.content
    assert APIKey.objects.get(pk=key.pk).revoked


def test_developer_cannot_revoke_someone_elses_key(bob_client, alice_key, unchanged_db):
    key, secret = alice_key
    with unchanged_db():
        assert_error(bob_client.delete(f"/api/v1/keys/{key.prefix}"), 403, code="role_forbidden")
    assert key_client(secret).get("/api/v1/me").status_code == 200


def test_developer_may_still_see_every_key_of_the_tenant(bob_client, alice_key):
    assert [k["prefix"] for k in bob_client.get("/api/v1/keys").json()["data"]] == [alice_key[0].prefix]


def test_owner_may_revoke_a_developers_key(alice_client, bob, acme):
    key, _ = create_key(bob, acme, scopes=["infer"])
    assert alice_client.delete(f"/api/v1/keys/{key.prefix}").status_code == 200
    assert APIKey.objects.get(pk=key.pk).revoked


@pytest.mark.parametrize("scope", SCOPES)
def test_the_base_model_catalog_is_readable_with_a_key_of_any_scope(alice, acme, scope):
    BaseModel.objects.create(name="test-base", architecture={"layers": 2}, context_length=64)
    _, secret = create_key(alice, acme, scopes=[scope])
    response = key_client(secret).get("/api/v1/base-models")
    assert response.status_code == 200, response.content
    assert [model["id"] for model in response.json()["data"]] == ["test-base"]


def test_the_base_model_catalog_refuses_revoked_and_unknown_keys(alice_client, alice, acme, unchanged_db):
    key, secret = create_key(alice, acme, scopes=["usage:read"])
    alice_client.delete(f"/api/v1/keys/{key.prefix}")
    with unchanged_db():
        assert_error(key_client(secret).get("/api/v1/base-models"), 401, code="api_key_revoked")
        assert_error(key_client(f"{key.prefix}.wrong").get("/api/v1/base-models"), 401)
