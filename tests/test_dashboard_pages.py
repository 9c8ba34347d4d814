"""The server-rendered dashboard: pages render, refusals show why and write nothing, secrets show once."""

import re

import pytest
from django.urls import reverse

from tenants import services
from tenants.active import SESSION_KEY
from tenants.models import APIKey, Invite, Membership, Tenant, User
from tenants.principal import Principal
from tenants.roles import ADMIN, BILLING_VIEWER, DEVELOPER, OWNER
from tests.factories import PASSWORD, create_key, make_member, make_node, session_client

TENANT_PAGES = ["dashboard", "api-keys", "members", "adapters", "playground", "training", "usage", "billing"]
LOGIN_PAGES = [*TENANT_PAGES, "tenant-create", "nodes"]


@pytest.fixture
def alice_web(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def bob_web(client, bob):
    client.force_login(bob)
    return client


@pytest.mark.parametrize("name", [*TENANT_PAGES, "tenant-create"])
def test_pages_render_for_alice(alice_web, name):
    response = alice_web.get(reverse(name))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<html lang="en">' in html
    assert "alice@acme.test" in html and "Acme" in html  # the header: who and which tenant
    assert 'aria-current="page"' in html or name == "tenant-create"
    assert reverse("nodes") not in html  # alice is not staff


@pytest.mark.parametrize("name", LOGIN_PAGES)
def test_anonymous_is_sent_to_login(client, db, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response.url == f"{reverse('login')}?next={reverse(name)}"


@pytest.mark.parametrize("name", ["login", "signup"])
def test_sign_in_pages_render(client, db, name):
    response = client.get(reverse(name))
    assert response.status_code == 200
    assert b'<label for="id_email">' in response.content


def test_member_without_tenant_is_told_what_to_do(client, db):
    client.force_login(User.objects.create_user(email="dora@example.test", password=PASSWORD))
    response = client.get(reverse("dashboard"))
    assert response.status_code == 403
    assert b"create one or accept an invite" in response.content
    assert reverse("tenant-create").encode() in response.content


def test_suspended_tenant_is_refused(alice_web, acme):
    services.tenant_set_status(tenant_id=acme.pk, status=Tenant.SUSPENDED)
    response = alice_web.get(reverse("api-keys"))
    assert response.status_code == 403
    assert b"suspended" in response.content


# Nodes (staff only)

def test_nodes_refused_for_non_staff(alice_web):
    assert alice_web.get(reverse("nodes")).status_code == 403


def test_nodes_empty_for_staff(alice_web, alice):
    User.objects.filter(pk=alice.pk).update(is_staff=True)
    response = alice_web.get(reverse("nodes"))
    assert response.status_code == 200
    assert b"No runtime node has reported yet" in response.content


def test_nodes_lists_nodes_for_staff(alice_web, alice):
    User.objects.filter(pk=alice.pk).update(is_staff=True)
    make_node("gpu-a", device="cuda:0", base="smollm2-135m-instruct", state={"model_loaded": True})
    response = alice_web.get(reverse("nodes"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "gpu-a" in html and "cuda:0" in html and "smollm2-135m-instruct" in html
    assert "<td>yes</td>" in html
    assert f'href="{reverse("nodes")}"' in alice_web.get(reverse("dashboard")).content.decode()


# Signup

def signup_data(**overrides):
    return {"email": "erin@example.test", "name": "Erin", "password": PASSWORD, "tenant_name": "Erin Labs",
            "tenant_slug": "erin-labs", **overrides}


def test_signup_creates_user_tenant_and_owner(client, db):
    response = client.post(reverse("signup"), signup_data())
    assert response.status_code == 302 and response.url == reverse("dashboard")
    membership = Membership.objects.select_related("user", "tenant").get(user__email="erin@example.test")
    tenant = membership.tenant
    assert (tenant.slug, tenant.name, membership.role) == ("erin-labs", "Erin Labs", OWNER)
    assert membership.user.name == "Erin" and membership.user.check_password(PASSWORD)
    assert client.session[SESSION_KEY] == membership.tenant_id
    assert b"Erin Labs" in client.get(reverse("dashboard")).content


def test_signup_with_taken_slug_shows_the_conflict(client, alice, unchanged_db):
    with unchanged_db():
        response = client.post(reverse("signup"), signup_data(tenant_slug="acme"))
    assert response.status_code == 409
    assert b"The tenant slug &#x27;acme&#x27; is taken" in response.content
    assert "_auth_user_id" not in client.session


def test_signup_with_taken_email_shows_the_conflict(client, alice, unchanged_db):
    with unchanged_db():
        response = client.post(reverse("signup"), signup_data(email="Alice@Acme.test"))
    assert response.status_code == 409
    assert b"An account with the email alice@acme.test exists" in response.content


def test_signup_with_weak_password_shows_why(client, db, unchanged_db):
    with unchanged_db():
        response = client.post(reverse("signup"), signup_data(password="short"))
    assert response.status_code == 400
    assert b"too short" in response.content


# Sign in and out

def test_login_goes_to_a_safe_next(client, alice):
    response = client.post(reverse("login"), {"email": "ALICE@acme.test", "password": PASSWORD,
                                              "next": reverse("members")})
    assert response.status_code == 302 and response.url == reverse("members")


def test_login_ignores_an_offsite_next(client, alice):
    response = client.post(reverse("login"), {"email": "alice@acme.test", "password": PASSWORD,
                                              "next": "https://evil.example/"})
    assert response.url == reverse("dashboard")


def test_login_throttle_locks_out_even_the_right_password(client, alice, settings):
    wrong = {"email": "alice@acme.test", "password": "not the password"}
    for _ in range(settings.VAJRA_LOGIN_MAX_FAILURES):
        response = client.post(reverse("login"), wrong)
        assert response.status_code == 400
        assert b"The email or password is incorrect." in response.content
    response = client.post(reverse("login"), {"email": "alice@acme.test", "password": PASSWORD})
    assert response.status_code == 429
    assert 0 < int(response["Retry-After"]) <= settings.VAJRA_LOGIN_LOCKOUT_SECONDS
    assert b"Too many failed sign-in attempts; try again in" in response.content
    assert "_auth_user_id" not in client.session


def test_logout_needs_post(alice_web):
    assert alice_web.get(reverse("logout")).status_code == 405
    response = alice_web.post(reverse("logout"))
    assert response.status_code == 302 and response.url == reverse("login")
    assert alice_web.get(reverse("dashboard")).status_code == 302


# Tenants

def test_switch_to_a_tenant_of_hers(alice_web, alice, contoso):
    Membership.objects.create(user=alice, tenant=contoso, role=DEVELOPER)
    response = alice_web.post(reverse("tenant-switch"), {"slug": "contoso", "next": reverse("api-keys")})
    assert response.status_code == 302 and response.url == reverse("api-keys")
    assert alice_web.session[SESSION_KEY] == contoso.pk
    assert b"Contoso" in alice_web.get(reverse("dashboard")).content


def test_switch_to_someone_elses_tenant_is_404(alice_web, acme, charlie):
    alice_web.post(reverse("tenant-switch"), {"slug": "acme"})
    with_session = dict(alice_web.session)
    response = alice_web.post(reverse("tenant-switch"), {"slug": "contoso"})
    assert response.status_code == 404
    assert dict(alice_web.session) == with_session


@pytest.mark.parametrize("slug", ["ac\x00me", "", "x" * 200])
def test_switch_to_a_malformed_slug_is_400(alice_web, acme, slug):
    alice_web.post(reverse("tenant-switch"), {"slug": "acme"})
    with_session = dict(alice_web.session)
    response = alice_web.post(reverse("tenant-switch"), {"slug": slug})
    assert response.status_code == 400
    assert dict(alice_web.session) == with_session


def test_create_another_tenant(alice_web, alice):
    response = alice_web.post(reverse("tenant-create"), {"name": "Acme Research", "slug": "acme-research"})
    assert response.status_code == 302
    membership = Membership.objects.get(user=alice, tenant__slug="acme-research")
    assert membership.role == OWNER and alice_web.session[SESSION_KEY] == membership.tenant_id


def test_create_tenant_with_taken_slug(alice_web, charlie, unchanged_db):
    with unchanged_db():
        response = alice_web.post(reverse("tenant-create"), {"name": "Mine", "slug": "contoso"})
    assert response.status_code == 409 and b"is taken" in response.content


# API keys

def test_key_secret_is_shown_once(alice_web, alice):
    response = alice_web.post(reverse("api-keys"), {"name": "ci", "scopes": ["infer"]})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    secret = response.context["secret"]
    key = APIKey.objects.get(name="ci")
    assert key.is_valid(secret) and key.scopes == ["infer"] and key.created_by == alice
    assert f'<code id="new-key-secret" class="secret">{secret}</code>' in response.content.decode()
    assert secret not in str(dict(alice_web.session))
    again = alice_web.get(reverse("api-keys"))
    assert secret not in again.content.decode() and b"new-key-secret" not in again.content
    assert key.prefix.encode() in again.content


def test_key_form_offers_only_the_roles_scopes(bob_web):
    html = bob_web.get(reverse("api-keys")).content.decode()
    assert 'value="infer"' in html and 'value="billing:read"' not in html


def test_key_beyond_role_is_refused(bob_web, unchanged_db):
    with unchanged_db():
        response = bob_web.post(reverse("api-keys"), {"name": "x", "scopes": ["billing:read"]})
    assert response.status_code == 400


def test_key_expiry_in_the_past_is_refused(alice_web, unchanged_db):
    with unchanged_db():
        response = alice_web.post(reverse("api-keys"), {"name": "x", "scopes": ["infer"],
                                                         "expires_on": "2020-01-01"})
    assert response.status_code == 400 and b"must be in the future" in response.content


def test_alice_revokes_bobs_key(alice_web, bob, acme):
    key, _ = create_key(bob, acme)
    response = alice_web.post(reverse("api-key-revoke", args=[key.prefix]))
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked and key.revoked_at is not None


def test_bob_cannot_revoke_alices_key(bob_web, alice_key, unchanged_db):
    key, _ = alice_key
    with unchanged_db():
        response = bob_web.post(reverse("api-key-revoke", args=[key.prefix]))
    assert response.status_code == 403 and b"does not allow" in response.content


def test_charlie_cannot_revoke_acmes_key(client, charlie, alice_key, unchanged_db):
    client.force_login(charlie)
    with unchanged_db():
        response = client.post(reverse("api-key-revoke", args=[alice_key[0].prefix]))
    assert response.status_code == 404


# Members and invites

def test_bob_sees_members_but_no_manage_forms(bob_web):
    html = bob_web.get(reverse("members")).content.decode()
    assert "alice@acme.test" in html and "bob@acme.test" in html
    assert "Change role" not in html and "Send invite" not in html


def test_bob_cannot_change_roles(bob_web, alice, acme, unchanged_db):
    alice_membership = Membership.objects.get(user=alice, tenant=acme)
    with unchanged_db():
        response = bob_web.post(reverse("member-role", args=[alice_membership.pk]), {"role": DEVELOPER})
    assert response.status_code == 403
    assert b"does not allow &#x27;members.manage&#x27;" in response.content


def test_charlie_cannot_touch_acmes_members(client, charlie, bob, acme, unchanged_db):
    client.force_login(charlie)
    bob_id = Membership.objects.get(user=bob, tenant=acme).pk
    with unchanged_db():
        assert client.post(reverse("member-role", args=[bob_id]), {"role": OWNER}).status_code == 404
        assert client.post(reverse("member-remove", args=[bob_id])).status_code == 404


def test_alice_changes_bobs_role_and_removes_him(alice_web, bob, acme):
    membership = Membership.objects.get(user=bob, tenant=acme)
    key, _ = create_key(bob, acme)
    assert alice_web.post(reverse("member-role", args=[membership.pk]), {"role": ADMIN}).status_code == 302
    membership.refresh_from_db()
    assert membership.role == ADMIN
    assert alice_web.post(reverse("member-remove", args=[membership.pk])).status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    key.refresh_from_db()
    assert key.revoked


def test_last_owner_cannot_leave(alice_web, alice, acme, unchanged_db):
    membership = Membership.objects.get(user=alice, tenant=acme)
    with unchanged_db():
        response = alice_web.post(reverse("member-remove", args=[membership.pk]))
    assert response.status_code == 409 and b"at least one owner" in response.content


def test_alice_invites_and_revokes(alice_web, acme):
    response = alice_web.post(reverse("members"), {"email": "Dave@Example.test", "role": BILLING_VIEWER})
    assert response.status_code == 200
    invite = Invite.objects.get(tenant=acme)
    assert (invite.email, invite.role, invite.state) == ("dave@example.test", BILLING_VIEWER, "pending")
    assert b'id="invite-link"' in response.content
    assert alice_web.post(reverse("invite-revoke", args=[invite.pk])).status_code == 302
    invite.refresh_from_db()
    assert invite.state == "revoked"


def test_bob_cannot_invite(bob_web, unchanged_db):
    with unchanged_db():
        response = bob_web.post(reverse("members"), {"email": "eve@example.test", "role": DEVELOPER})
    assert response.status_code == 403


def invite(tenant, inviter, email="dave@example.test", role=DEVELOPER):
    principal = Principal(tenant=tenant, user=inviter, role=OWNER)
    _, token = services.invite_create(principal=principal, email=email, role=role,
                                      accept_url_for=lambda t: reverse("invite-accept", args=[t]))
    return token


def test_invite_accept_flow(client, alice, acme):
    token = invite(acme, alice)
    url = reverse("invite-accept", args=[token])
    anonymous = client.get(url).content.decode()
    assert "Acme" in anonymous and "developer" in anonymous
    assert f'{reverse("login")}?next={url}' in anonymous.replace("%2F", "/")
    dave = User.objects.create_user(email="dave@example.test", password=PASSWORD)
    response = client.post(reverse("login"), {"email": dave.email, "password": PASSWORD, "next": url})
    assert response.url == url
    assert b"Join Acme" in client.get(url).content
    response = client.post(url)
    assert response.status_code == 302 and response.url == reverse("dashboard")
    assert Membership.objects.get(user=dave, tenant=acme).role == DEVELOPER
    assert client.session[SESSION_KEY] == acme.pk


def test_invite_for_someone_else_is_refused(client, alice, acme, charlie, unchanged_db):
    token = invite(acme, alice)
    client.force_login(charlie)
    with unchanged_db():
        response = client.post(reverse("invite-accept", args=[token]))
    assert response.status_code == 403 and b"This invite is for dave@example.test" in response.content


def test_unknown_invite_link(client, db):
    response = client.get(reverse("invite-accept", args=["no-such-token"]))
    assert response.status_code == 404 and b"This invite link is not valid" in response.content


def test_anonymous_accept_goes_to_login(client, alice, acme):
    make_member("dave@example.test", Tenant.objects.create(name="Dave Co", slug="dave-co"), OWNER)
    url = reverse("invite-accept", args=[invite(acme, alice)])
    response = client.post(url)
    assert response.status_code == 302 and response.url.startswith(reverse("login"))


# Django admin (staff)

@pytest.fixture
def staff_web(client, db):
    client.force_login(User.objects.create_superuser(email="root@vajra.test", password=PASSWORD))
    return client


@pytest.mark.parametrize("model", ["user", "tenant", "membership", "invite", "apikey"])
def test_admin_pages_render(staff_web, alice, acme, alice_key, model):
    objects = {"user": alice, "tenant": acme, "membership": alice.memberships.get(), "apikey": alice_key[0],
               "invite": Invite.objects.get(token_hash=services._hash_token(invite(acme, alice)))}
    assert staff_web.get(reverse(f"admin:tenants_{model}_changelist")).status_code == 200
    response = staff_web.get(reverse(f"admin:tenants_{model}_change", args=[objects[model].pk]))
    assert response.status_code == 200
    assert b"token_hash" not in response.content


def test_admin_adds_a_user_by_email(staff_web):
    assert staff_web.get(reverse("admin:tenants_user_add")).status_code == 200
    response = staff_web.post(reverse("admin:tenants_user_add"), {
        "email": "Gina@Example.test", "name": "Gina", "usable_password": "true",
        "password1": PASSWORD, "password2": PASSWORD,
    })
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert User.objects.get(email="gina@example.test").check_password(PASSWORD)


def test_admin_suspends_and_reactivates_a_tenant(staff_web, acme):
    url = reverse("admin:tenants_tenant_changelist")
    staff_web.post(url, {"action": "suspend", "_selected_action": [acme.pk]})
    acme.refresh_from_db()
    assert acme.status == Tenant.SUSPENDED
    staff_web.post(url, {"action": "reactivate", "_selected_action": [acme.pk]})
    acme.refresh_from_db()
    assert acme.status == Tenant.ACTIVE


def test_admin_cannot_add_keys_and_revokes_them(staff_web, alice_key):
    key, _ = alice_key
    assert staff_web.get(reverse("admin:tenants_apikey_add")).status_code == 403
    url = reverse("admin:tenants_apikey_changelist")
    staff_web.post(url, {"action": "revoke", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.revoked and key.revoked_at is not None


def test_overview_shows_spend_adapters_requests_and_the_rate_limit_as_numbers(alice, acme, settings):
    from adapters.models import Adapter, BaseModel
    from serving.models import InferenceRequest

    base = BaseModel.objects.create(name="tiny-llama")
    Adapter.objects.create(tenant=acme, base_model=base, name="support-bot", tier=Adapter.WARM)
    InferenceRequest.objects.create(id="req_overview_1", tenant=acme, base_model=base, tier="cold", max_tokens=8,
                                    completion_tokens=12345, status="succeeded")
    settings.VAJRA_RATE_LIMIT_PER_TENANT = 3000
    html = session_client(alice).get(reverse("dashboard")).content.decode()
    assert '<span class="stat-value" data-rate-limit>3,000</span>' in html and ">default<" not in html
    assert "data-overview-spend>$0" in html
    assert 'href="/adapters/support-bot/"' in html and "badge--tier-warm" in html
    assert "12,345 tokens" in html and "req_overview_1" in html
    acme.rate_limit_per_minute = 120
    acme.save()
    assert '<span class="stat-value" data-rate-limit>120</span>' in session_client(alice).get(
        reverse("dashboard")).content.decode()


def test_the_overview_snippet_uses_the_variables_demo_env_exports(alice_web, tmp_path):
    from django.core.management import call_command

    from tenants.management.commands.demo_tenant import read_env_file

    call_command("demo_tenant", env_file=str(tmp_path / "demo.env"), verbosity=0)
    exported = set(read_env_file(tmp_path / "demo.env"))
    html = alice_web.get(reverse("dashboard")).content.decode()
    used = set(re.findall(r"\$([A-Z_]+)", html))
    assert used and used <= exported, (used, exported)
