"""The client's address comes from trusted proxies only (vajra/client_ip.py): a client that sends its own
X-Forwarded-For gets around no limit and forges no audit entry, while behind a trusted proxy the address that
proxy saw is the one counted and recorded. The login lockout also counts per account, across addresses."""

import ipaddress

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse
from rest_framework.test import APIClient

from tenants.models import AuditEntry
from tests.factories import PASSWORD
from tests.helpers import assert_error, run_django
from vajra.client_ip import client_address
from vajra.settings.env import env_networks

PROXY = "10.1.2.3"


@pytest.fixture
def behind_proxy(settings):
    settings.VAJRA_TRUSTED_PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))


# ---- the one function -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("peer, forwarded_for, expected", [
    ("203.0.113.7", "", "203.0.113.7"),
    ("203.0.113.7", "198.51.100.1", "203.0.113.7"),  # an untrusted peer's header is ignored
    ("203.0.113.7", "10.1.2.3", "203.0.113.7"),
    ("unix-socket", "198.51.100.1", ""),
])
def test_with_no_trusted_proxy_the_peer_is_the_client(settings, peer, forwarded_for, expected):
    settings.VAJRA_TRUSTED_PROXIES = ()
    assert client_address(peer, forwarded_for) == expected


@pytest.mark.parametrize("peer, forwarded_for, expected", [
    (PROXY, "198.51.100.1", "198.51.100.1"),
    (PROXY, "192.0.2.66, 198.51.100.1", "198.51.100.1"),  # the left entry is the client's own claim
    (PROXY, "192.0.2.66, 198.51.100.1, 10.9.9.9", "198.51.100.1"),  # past every trusted hop
    (PROXY, "10.4.4.4, 10.9.9.9", "10.4.4.4"),  # only proxies: the farthest one
    (PROXY, "", PROXY),  # the proxy's own request
    (PROXY, "not-an-address, 10.9.9.9", "10.9.9.9"),  # garbage is never the answer
    (PROXY, "198.51.100.1:4431", "198.51.100.1"),
    ("2001:db8::5", "[2001:db8::9]:443, 2a00::1", "2a00::1"),
    ("::ffff:10.1.2.3", "198.51.100.1", "198.51.100.1"),  # an IPv4 proxy seen on a dual-stack socket
    ("203.0.113.7", "198.51.100.1", "203.0.113.7"),  # the untrusted peer still wins over its header
])
def test_behind_a_trusted_proxy_the_right_most_untrusted_address_is_the_client(behind_proxy, peer, forwarded_for,
                                                                                 expected):
    assert client_address(peer, forwarded_for) == expected


@pytest.mark.parametrize("value", ["10.0.0.0/33", "proxy.example", "10.0.0.1,nope", "::g"])
def test_a_bad_trusted_proxies_setting_stops_the_start(monkeypatch, value):
    monkeypatch.setenv("VAJRA_TRUSTED_PROXIES", value)
    with pytest.raises(ImproperlyConfigured, match="VAJRA_TRUSTED_PROXIES"):
        env_networks("VAJRA_TRUSTED_PROXIES", [])


def test_trusted_proxies_setting_parses_addresses_and_networks(monkeypatch):
    monkeypatch.setenv("VAJRA_TRUSTED_PROXIES", " 10.0.0.0/8, 192.0.2.7 ,2001:db8::/32")
    assert env_networks("VAJRA_TRUSTED_PROXIES", []) == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.7/32"), ipaddress.ip_network("2001:db8::/32"))
    monkeypatch.delenv("VAJRA_TRUSTED_PROXIES")
    assert env_networks("VAJRA_TRUSTED_PROXIES", []) == ()


# ---- signup limit ---------------------------------------------------------------------------------------------

def _signup(n, **meta):
    body = {"email": f"person{n}@example.test", "password": PASSWORD, "tenant_name": f"T{n}", "tenant_slug": f"t{n}"}
    return APIClient(**meta).post("/api/v1/signup", body, format="json")


def test_rotating_a_spoofed_forwarded_for_does_not_get_around_the_signup_limit(settings, db, unchanged_db):
    settings.VAJRA_SIGNUPS_PER_IP_PER_HOUR = 2
    for n in range(2):
        assert _signup(n, REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR=f"198.51.100.{n}").status_code == 201
    with unchanged_db():
        assert_error(_signup(9, REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="198.51.100.9"), 429,
                     code="throttled")


def test_behind_a_trusted_proxy_each_client_has_its_own_signup_limit(settings, behind_proxy, db, unchanged_db):
    settings.VAJRA_SIGNUPS_PER_IP_PER_HOUR = 1
    assert _signup(0, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="198.51.100.1").status_code == 201
    assert _signup(1, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="198.51.100.2").status_code == 201
    with unchanged_db():  # the same client again, whatever it puts left of the proxy's entry
        assert_error(_signup(2, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="192.0.2.9, 198.51.100.1"), 429,
                     code="throttled")


# ---- login lockout --------------------------------------------------------------------------------------------

WRONG = {"email": "alice@acme.test", "password": "not the password"}
RIGHT = {"email": "alice@acme.test", "password": PASSWORD}


def _login(client, data, **meta):
    return client.post(reverse("login"), data, **meta)


def test_rotating_a_spoofed_forwarded_for_does_not_get_around_the_login_lockout(client, alice, settings):
    for n in range(settings.VAJRA_LOGIN_MAX_FAILURES):
        response = _login(client, WRONG, REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR=f"198.51.100.{n}")
        assert response.status_code == 400
    response = _login(client, RIGHT, REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="198.51.100.99")
    assert response.status_code == 429
    assert b"Too many failed sign-in attempts" in response.content


def test_lockout_counts_per_account_across_rotating_addresses(client, alice, bob, settings, behind_proxy):
    settings.VAJRA_LOGIN_MAX_FAILURES = 3
    settings.VAJRA_LOGIN_MAX_FAILURES_PER_ACCOUNT = 6
    for n in range(6):  # two failures from each of three addresses: no address reaches its own limit
        assert _login(client, WRONG, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=f"198.51.100.{n // 2}").status_code == 400
    fresh = {"REMOTE_ADDR": PROXY, "HTTP_X_FORWARDED_FOR": "192.0.2.200"}
    response = _login(client, RIGHT, **fresh)
    assert response.status_code == 429  # the account is locked, even from a new address with the right password
    assert 0 < int(response["Retry-After"]) <= settings.VAJRA_LOGIN_LOCKOUT_SECONDS
    # another account from that address signs in: the lock is on alice's account, not on the address
    assert _login(client, {"email": "bob@acme.test", "password": PASSWORD}, **fresh).status_code == 302


def test_lockout_counts_per_address_across_accounts(client, alice, settings, behind_proxy):
    settings.VAJRA_LOGIN_MAX_FAILURES_PER_ADDRESS = 4
    address = {"REMOTE_ADDR": PROXY, "HTTP_X_FORWARDED_FOR": "198.51.100.50"}
    for n in range(4):
        assert _login(client, {"email": f"guess{n}@acme.test", "password": "x"}, **address).status_code == 400
    assert _login(client, RIGHT, **address).status_code == 429
    assert _login(client, RIGHT, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="198.51.100.51").status_code == 302


def test_the_right_password_clears_the_accounts_count(client, alice, settings):
    settings.VAJRA_LOGIN_MAX_FAILURES_PER_ACCOUNT = 3
    for _ in range(2):
        _login(client, WRONG, REMOTE_ADDR="203.0.113.7")
    assert _login(client, RIGHT, REMOTE_ADDR="203.0.113.7").status_code == 302
    client.logout()
    for _ in range(2):
        assert _login(client, WRONG, REMOTE_ADDR="198.51.100.7").status_code == 400
    assert _login(client, RIGHT, REMOTE_ADDR="198.51.100.7").status_code == 302


# ---- audit log ------------------------------------------------------------------------------------------------

def _create_key(alice, **meta):
    client = APIClient(**meta)
    client.force_login(alice)
    response = client.post("/api/v1/keys", {"name": "ci", "scopes": ["infer"]}, format="json")
    assert response.status_code == 201, response.content
    return AuditEntry.objects.get(action="api_key.created", target_id=response.json()["prefix"])


def test_the_audit_log_records_the_peer_not_a_spoofed_forwarded_for(alice, acme):
    entry = _create_key(alice, REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert entry.ip == "203.0.113.7"


def test_the_audit_log_records_the_client_a_trusted_proxy_names(alice, acme, behind_proxy):
    entry = _create_key(alice, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="192.0.2.66, 198.51.100.1")
    assert entry.ip == "198.51.100.1"


# ---- the admin's sign-in: the same lockout, on the same counters ---------------------------------------------------

def _admin_login(client, email, password, **meta):
    return client.post("/admin/login/?next=/admin/", {"username": email, "password": password}, **meta)


@pytest.fixture
def staff_alice(alice):
    alice.is_staff = True
    alice.save(update_fields=["is_staff"])
    return alice


def test_the_admins_sign_in_locks_out_like_the_dashboards(client, staff_alice, settings):
    for _ in range(settings.VAJRA_LOGIN_MAX_FAILURES):
        response = _admin_login(client, "alice@acme.test", "not the password", REMOTE_ADDR="203.0.113.7")
        assert response.status_code == 200 and b"errornote" in response.content  # the admin's own refusal
    response = _admin_login(client, "Alice@acme.test ", PASSWORD, REMOTE_ADDR="203.0.113.7")
    assert response.status_code == 429  # the right password too, and the email's case and spaces do not matter
    assert 0 < int(response["Retry-After"]) <= settings.VAJRA_LOGIN_LOCKOUT_SECONDS
    assert b"Too many failed sign-in attempts" in response.content
    assert "_auth_user_id" not in client.session
    # the dashboard's door is locked for that account and address too: the two share the counters
    assert _login(client, RIGHT, REMOTE_ADDR="203.0.113.7").status_code == 429
    # another address signs in to the admin, and that clears the account's count
    response = _admin_login(client, "alice@acme.test", PASSWORD, REMOTE_ADDR="203.0.113.8")
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.session["_auth_user_id"] == str(staff_alice.pk)


def test_failures_at_the_dashboard_count_at_the_admin(client, staff_alice, settings):
    for _ in range(settings.VAJRA_LOGIN_MAX_FAILURES):
        assert _login(client, WRONG, REMOTE_ADDR="203.0.113.7").status_code == 400
    assert _admin_login(client, "alice@acme.test", PASSWORD, REMOTE_ADDR="203.0.113.7").status_code == 429


def test_a_non_staff_account_is_a_failed_admin_sign_in(client, alice, settings):
    settings.VAJRA_LOGIN_MAX_FAILURES = 2
    for _ in range(2):  # the right password of an account that may not use the admin: the admin refuses it
        assert _admin_login(client, "alice@acme.test", PASSWORD, REMOTE_ADDR="203.0.113.7").status_code == 200
    assert _admin_login(client, "alice@acme.test", PASSWORD, REMOTE_ADDR="203.0.113.7").status_code == 429


# ---- X-Forwarded-Proto: said by a trusted proxy only ---------------------------------------------------------------

@pytest.mark.parametrize("peer, redirected", [(PROXY, False), ("203.0.113.7", True)])
def test_only_a_trusted_proxy_may_say_the_client_came_over_https(client, settings, behind_proxy, peer, redirected):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    response = client.get(reverse("login"), REMOTE_ADDR=peer, HTTP_X_FORWARDED_PROTO="https")
    if redirected:  # a client that reaches web directly is on plain http whatever it claims: sent to https
        assert response.status_code == 301 and response["Location"].startswith("https://")
    else:
        assert response.status_code == 200


def test_behind_a_proxy_with_no_trusted_proxy_named_stops_at_start():
    result = run_django("print('started')", DJANGO_BEHIND_PROXY="true")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "VAJRA_TRUSTED_PROXIES" in result.stderr
    result = run_django("print('started')", DJANGO_BEHIND_PROXY="true", VAJRA_TRUSTED_PROXIES="10.0.0.0/8")
    assert result.returncode == 0, result.stderr
