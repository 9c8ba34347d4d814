"""Websocket authentication and tenant events, through the real ASGI application, Redis channel layer and DB."""

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from tenants import services, ws
from tenants.models import Tenant
from tests.factories import create_key
from tests.ws_helpers import as_member, expect_refusal, key_protocols, open_socket, run, session_headers

pytestmark = pytest.mark.django_db(transaction=True)

def welcome(**socket):
    """Opens a socket that must be welcomed, and returns the welcome."""

    async def go():
        communicator, _ = await open_socket(**socket)
        message = await communicator.receive_json_from()
        await communicator.disconnect()
        return message

    return run(go)


def refused(close_code, code, *, send=None, **socket):
    async def go():
        communicator, _ = await open_socket(**socket)
        if send is not None:
            await communicator.send_to(text_data=send)
        return await expect_refusal(communicator, close_code, code)

    return run(go)


# API keys


def test_key_in_subprotocol_is_welcomed(alice, acme):
    key, secret = create_key(alice, acme, scopes=["infer", "usage:read"])

    async def go():
        communicator, subprotocol = await open_socket(subprotocols=key_protocols(secret))
        welcome = await communicator.receive_json_from()
        await communicator.send_json_to({"type": "ping"})
        pong = await communicator.receive_json_from()
        await communicator.disconnect()
        return subprotocol, welcome, pong

    subprotocol, welcome, pong = run(go)
    assert subprotocol == "vajra.v1", "the key itself must never be echoed back as the chosen subprotocol"
    assert welcome == {"type": "welcome", "tenant": "acme", "role": None, "api_key": key.prefix,
                       "scopes": ["infer", "usage:read"], "events": ["tenant.status"]}
    assert pong == {"type": "pong"}
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_key_in_first_message_is_welcomed(alice, acme):
    key, secret = create_key(alice, acme)

    async def go():
        communicator, subprotocol = await open_socket(subprotocols=["vajra.v1"])
        assert await communicator.receive_nothing(timeout=0.1)
        await communicator.send_json_to({"type": "auth", "api_key": secret})
        welcome = await communicator.receive_json_from()
        await communicator.disconnect()
        return subprotocol, welcome

    subprotocol, welcome = run(go)
    assert subprotocol == "vajra.v1"
    assert welcome["type"] == "welcome" and welcome["api_key"] == key.prefix and welcome["tenant"] == "acme"


def test_key_works_from_any_origin(alice, acme):
    _, secret = create_key(alice, acme)
    socket = {"subprotocols": key_protocols(secret), "headers": [(b"origin", b"https://elsewhere.example")]}
    assert welcome(**socket)["type"] == "welcome"


@pytest.mark.parametrize("how", ["subprotocol", "message"])
def test_wrong_key_is_4401(alice_key, unchanged_db, how):
    key, _ = alice_key
    wrong = f"{key.prefix}.{'x' * 32}"
    with unchanged_db():
        if how == "subprotocol":
            error, close = refused(4401, "invalid_api_key", subprotocols=key_protocols(wrong))
        else:
            error, close = refused(4401, "invalid_api_key", send=f'{{"type": "auth", "api_key": "{wrong}"}}')
    assert error["type"] == "authentication_error"
    assert "Incorrect API key" in close["reason"]


def test_a_key_with_a_nul_is_an_invalid_key(alice_key, unchanged_db):
    # PostgreSQL refuses NUL in text, so the key must be refused before any lookup
    with unchanged_db():
        error, _ = refused(4401, "invalid_api_key", send='{"type": "auth", "api_key": "ab\\u0000cd.x"}')
    assert error["type"] == "authentication_error"


def test_revoked_key_is_4401(alice, acme):
    _, secret = create_key(alice, acme, revoked=True)
    error, _ = refused(4401, "api_key_revoked", subprotocols=key_protocols(secret))
    assert "revoked" in error["message"]


def test_expired_key_is_4401(alice, acme):
    _, secret = create_key(alice, acme, expiry_date=timezone.now() - timedelta(minutes=1))
    refused(4401, "api_key_expired", subprotocols=key_protocols(secret))


def test_suspended_tenant_is_4403_for_keys_and_sessions(alice, alice_key, acme):
    services.tenant_set_status(tenant_id=acme.pk, status=Tenant.SUSPENDED)
    error, _ = refused(4403, "tenant_suspended", subprotocols=key_protocols(alice_key[1]))
    assert error["type"] == "permission_error"
    refused(4403, "tenant_suspended", headers=session_headers(alice))


def test_key_rate_limit_is_4429(settings, alice, acme):
    settings.VAJRA_RATE_LIMIT_PER_KEY = 1
    _, secret = create_key(alice, acme)

    assert welcome(subprotocols=key_protocols(secret))["type"] == "welcome"
    error, _ = refused(4429, "rate_limited", subprotocols=key_protocols(secret))
    assert error["type"] == "rate_limit_error"


# Sessions


def test_session_from_the_same_origin_is_welcomed(alice, acme):
    assert welcome(headers=session_headers(alice)) == {
        "type": "welcome", "tenant": "acme", "role": "owner", "api_key": None,
        "scopes": ["adapters:write", "billing:read", "infer", "train", "usage:read"],
        "events": ["api_key.created", "api_key.revoked", "api_key.scopes", "invite.created", "member.joined",
                   "member.removed", "member.role", "tenant.status"]}


def test_session_from_a_configured_origin_is_welcomed(settings, bob):
    settings.WEBSOCKET_ALLOWED_ORIGINS = ["https://app.vajra.example"]

    assert welcome(headers=session_headers(bob, origin="https://app.vajra.example"))["role"] == "developer"


@pytest.mark.parametrize("origin", ["https://evil.example", "http://testserver.evil.example", "null",
                                    "http://testserver:8443"])
def test_session_from_a_foreign_origin_is_4403(alice, origin):
    error, _ = refused(4403, "origin_not_allowed", headers=session_headers(alice, origin=origin))
    assert "API key" in error["message"]


def test_session_without_origin_is_4403(alice):
    refused(4403, "origin_not_allowed", headers=session_headers(alice, origin=None))


def test_session_of_a_member_of_another_tenant_is_4404(charlie, acme):
    refused(4404, "not_found", headers=session_headers(charlie))


# Messages before and after authenticating


@pytest.mark.parametrize("message", ['{"type": "ping"}', '{"type": "auth"}',
                                     '{"type": "auth", "api_key": 42}'])
def test_anything_but_auth_first_is_4401(db, message):
    error, _ = refused(4401, "auth_required", send=message)
    assert '"type": "auth"' in error["message"]


@pytest.mark.parametrize("message", ["not json", "{", '["auth"]', '"auth"', "   "])
def test_invalid_json_is_4400(db, message):
    error, _ = refused(4400, "invalid_json", send=message)
    assert "JSON" in error["message"]


def test_unknown_message_after_auth_is_4400(alice_key):
    async def go():
        communicator, _ = await open_socket(subprotocols=key_protocols(alice_key[1]))
        await communicator.receive_json_from()
        await communicator.send_json_to({"type": "subscribe", "tenant": "contoso"})
        return await expect_refusal(communicator, 4400, "unknown_message")

    run(go)


def test_no_credentials_in_time_is_4408(monkeypatch, db):
    monkeypatch.setattr(ws, "AUTH_TIMEOUT", 0.2)

    async def go():
        communicator, _ = await open_socket()
        return await expect_refusal(communicator, 4408, "auth_timeout")

    run(go)


def test_auth_after_a_refusal_does_not_authenticate(alice_key):
    """A socket refused for a bad key stays refused, whatever arrives before it has closed."""
    _, secret = alice_key

    async def go():
        communicator, _ = await open_socket(subprotocols=key_protocols("nope.nope"))
        await communicator.receive_json_from()
        assert (await communicator.receive_output())["code"] == 4401
        await communicator.send_json_to({"type": "auth", "api_key": secret})
        late = await communicator.receive_nothing(timeout=0.3)
        await communicator.disconnect()
        return late

    assert run(go), "no welcome after a refusal"


# Tenant events


def _create_key_as(user, tenant, name):
    key, _ = services.api_key_create(principal=as_member(user, tenant), name=name, scopes=["infer"])
    return key


def test_tenant_events_are_delivered(alice, acme):
    headers = session_headers(alice)

    async def go():
        communicator, _ = await open_socket(headers=headers)
        await communicator.receive_json_from()
        key = await database_sync_to_async(_create_key_as)(alice, acme, "deploy bot")
        event = await communicator.receive_json_from(timeout=3)
        await communicator.disconnect()
        return key, event

    key, event = run(go)
    assert event == {"type": "event", "event": "api_key.created",
                     "data": {"prefix": key.prefix, "name": "deploy bot"}}


def _make_admin(owner, member, tenant):
    membership = member.memberships.get(tenant=tenant)
    return services.membership_set_role(principal=as_member(owner, tenant), membership_id=membership.pk,
                                        role="admin")


def test_a_sessions_socket_gets_member_events(alice, bob, acme):
    headers = session_headers(alice)  # outside the event loop: it writes a session row

    async def go():
        communicator, _ = await open_socket(headers=headers)
        await communicator.receive_json_from()
        membership = await database_sync_to_async(_make_admin)(alice, bob, acme)
        event = await communicator.receive_json_from(timeout=3)
        await communicator.disconnect()
        return membership, event

    membership, event = run(go)
    assert event == {"type": "event", "event": "member.role", "data": {"id": membership.pk, "role": "admin"}}


def test_events_of_one_tenant_never_reach_another(alice, acme, charlie_key):
    async def go():
        charlies, _ = await open_socket("/ws/v1/tenants/contoso/events/",
                                        subprotocols=key_protocols(charlie_key[1]))
        welcome = await charlies.receive_json_from()
        await database_sync_to_async(_create_key_as)(alice, acme, "acme only")
        nothing = await charlies.receive_nothing(timeout=0.5)
        await charlies.disconnect()
        return welcome, nothing

    welcome, nothing = run(go)
    assert welcome["tenant"] == "contoso"
    assert nothing, "charlie must not hear of acme's keys"


# Credentials withdrawn while a socket is open end that socket, not just the next one.


def _withdrawn_while_open(change, *, close_code, code, **socket):
    async def go():
        communicator, _ = await open_socket(**socket)
        assert (await communicator.receive_json_from())["type"] == "welcome"
        await database_sync_to_async(change)()
        return await expect_refusal(communicator, close_code, code)

    return run(go)


def test_revoking_the_key_closes_its_socket(alice, alice_key, acme):
    key, secret = alice_key

    def revoke():
        services.api_key_revoke(principal=as_member(alice, acme), prefix=key.prefix)

    _withdrawn_while_open(revoke, close_code=4401, code="api_key_revoked", subprotocols=key_protocols(secret))


def test_revoking_another_key_leaves_the_socket_open(alice, alice_key, acme):
    other, _ = create_key(alice, acme)

    async def go():
        communicator, _ = await open_socket(subprotocols=key_protocols(alice_key[1]))
        await communicator.receive_json_from()
        await database_sync_to_async(lambda: services.api_key_revoke(principal=as_member(alice, acme),
                                                                     prefix=other.prefix))()
        quiet = await communicator.receive_nothing(timeout=0.5)  # keys are not for keys to read (session only)
        await communicator.send_json_to({"type": "ping"})
        pong = await communicator.receive_json_from()
        await communicator.disconnect()
        return quiet, pong

    quiet, pong = run(go)
    assert quiet
    assert pong == {"type": "pong"}


@pytest.mark.parametrize("how", ["key", "session"])
def test_suspending_the_tenant_closes_its_sockets(alice, alice_key, acme, how):
    socket = ({"subprotocols": key_protocols(alice_key[1])} if how == "key"
              else {"headers": session_headers(alice)})

    def suspend():
        services.tenant_set_status(tenant_id=acme.pk, status=Tenant.SUSPENDED)

    _withdrawn_while_open(suspend, close_code=4403, code="tenant_suspended", **socket)


def test_removing_a_member_closes_their_sockets_only(alice, bob, acme):
    _, bob_secret = create_key(bob, acme, scopes=["infer"])
    bob_session, alice_session = session_headers(bob), session_headers(alice)

    def remove_bob():
        services.membership_remove(principal=as_member(alice, acme),
                                   membership_id=bob.memberships.get(tenant=acme).pk)

    async def go():
        by_key, _ = await open_socket(subprotocols=key_protocols(bob_secret))
        by_session, _ = await open_socket(headers=bob_session)
        alices, _ = await open_socket(headers=alice_session)
        for communicator in (by_key, by_session, alices):
            assert (await communicator.receive_json_from())["type"] == "welcome"
        await database_sync_to_async(remove_bob)()
        await expect_refusal(by_key, 4401, "api_key_revoked")
        await expect_refusal(by_session, 4403, "member_removed")
        event = await alices.receive_json_from(timeout=3)
        await alices.disconnect()
        return event

    assert run(go) == {"type": "event", "event": "member.removed", "data": {"user": "bob@acme.test"}}
