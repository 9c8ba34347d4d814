"""Rate limits counted in Redis: per key, per tenant (over all its keys and members), signups per address."""

import time

import pytest
from rest_framework.test import APIClient

from tenants.limits import WINDOW_SECONDS
from tests.factories import PASSWORD, create_key, key_client
from tests.helpers import assert_error


@pytest.fixture(autouse=True)
def _whole_window():
    """Counters live in fixed windows; start each test well inside one so that it cannot straddle two."""
    if time.time() % WINDOW_SECONDS > WINDOW_SECONDS - 5:
        time.sleep(WINDOW_SECONDS - time.time() % WINDOW_SECONDS + 0.05)


def assert_limited(response):
    error = assert_error(response, 429, code="throttled")
    assert error["type"] == "rate_limit_error"
    retry_after = response["Retry-After"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= WINDOW_SECONDS, retry_after
    assert f"Retry after {retry_after} seconds" in error["message"]
    return error


def test_per_key_limit(settings, alice, acme):
    settings.VAJRA_RATE_LIMIT_PER_KEY = 3
    _, secret = create_key(alice, acme)
    client = key_client(secret)

    assert [client.get("/api/v1/me").status_code for _ in range(3)] == [200, 200, 200]
    assert_limited(client.get("/api/v1/me"))
    assert_limited(client.get("/api/v1/me"))


def test_per_key_limit_does_not_touch_other_keys(settings, alice, acme, charlie_key):
    settings.VAJRA_RATE_LIMIT_PER_KEY = 2
    _, first = create_key(alice, acme)
    _, second = create_key(alice, acme)
    for _ in range(3):
        key_client(first).get("/api/v1/me")

    assert key_client(second).get("/api/v1/me").status_code == 200
    assert key_client(charlie_key[1]).get("/api/v1/me").status_code == 200


def test_refused_requests_count_too(settings, alice, acme):
    """A client hammering past the limit gets no further by hammering more."""
    settings.VAJRA_RATE_LIMIT_PER_KEY = 1
    _, secret = create_key(alice, acme)
    client = key_client(secret)
    client.get("/api/v1/me")
    for _ in range(3):
        assert client.get("/api/v1/me").status_code == 429


def test_per_tenant_limit_spans_its_keys_and_not_other_tenants(alice, acme, charlie_key):
    acme.rate_limit_per_minute = 2
    acme.save()
    _, first = create_key(alice, acme)
    _, second = create_key(alice, acme)

    assert key_client(first).get("/api/v1/me").status_code == 200
    assert key_client(second).get("/api/v1/me").status_code == 200
    assert_limited(key_client(first).get("/api/v1/me"))
    assert_limited(key_client(second).get("/api/v1/me"))
    assert key_client(charlie_key[1]).get("/api/v1/me").status_code == 200


def test_per_tenant_limit_counts_sessions_too(alice_client, alice, acme):
    acme.rate_limit_per_minute = 2
    acme.save()
    _, secret = create_key(alice, acme)

    assert alice_client.get("/api/v1/me").status_code == 200
    assert key_client(secret).get("/api/v1/me").status_code == 200
    assert_limited(alice_client.get("/api/v1/keys"))


def test_platform_default_tenant_limit(settings, alice, acme, charlie_key):
    settings.VAJRA_RATE_LIMIT_PER_TENANT = 2
    _, secret = create_key(alice, acme)
    key_client(secret).get("/api/v1/me")
    key_client(secret).get("/api/v1/me")
    assert_limited(key_client(secret).get("/api/v1/me"))

    acme.rate_limit_per_minute = 10  # the tenant's own limit overrides the default
    acme.save()
    assert key_client(secret).get("/api/v1/me").status_code == 200


def test_unauthenticated_requests_are_not_counted_against_a_tenant(settings, alice, acme):
    acme.rate_limit_per_minute = 1
    acme.save()
    for _ in range(3):
        assert_error(key_client("nope.nope").get("/api/v1/me"), 401)
    _, secret = create_key(alice, acme)
    assert key_client(secret).get("/api/v1/me").status_code == 200


def _signup(address, n):
    body = {"email": f"person{n}@example.test", "password": PASSWORD, "tenant_name": f"T{n}",
            "tenant_slug": f"t{n}"}
    return APIClient(REMOTE_ADDR=address).post("/api/v1/signup", body, format="json")


def test_signup_is_limited_per_address(db, unchanged_db):
    first = _signup("203.0.113.7", 0)
    assert first.status_code == 201, first.content
    # Refused signups count as well: the limit is on attempts.
    for _ in range(19):
        client = APIClient(REMOTE_ADDR="203.0.113.7")
        assert client.post("/api/v1/signup", {"email": "bad"}, format="json").status_code == 400

    with unchanged_db():
        error = assert_error(_signup("203.0.113.7", 99), 429, code="throttled")
    assert error["type"] == "rate_limit_error"
    assert 1 <= int(_signup("203.0.113.7", 99)["Retry-After"]) <= 3600

    assert _signup("198.51.100.4", 1).status_code == 201
