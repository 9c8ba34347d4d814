"""The tenant events socket tells each principal only what it could read over REST (tenants/events.py), and a
member's keys follow the member: a demotion narrows them to the new role's scopes (revoking a key left with
none), a removal revokes them, over REST and on open sockets alike.

Real ASGI application, Redis channel layer and database, as in tests/test_ws.py.
"""

import pytest
from channels.db import database_sync_to_async

from serving.models import InferenceRequest
from tenants import services
from tenants.events import EVENT_READ_ACTIONS
from tenants.keys import principal_from_membership
from tenants.models import APIKey, AuditEntry, Membership, Tenant, User
from tenants.roles import ADMIN, BILLING_VIEWER, DEVELOPER, OWNER, SCOPES
from tests.factories import PASSWORD, create_key, key_client, make_member, session_client
from tests.helpers import assert_error
from tests.ws_helpers import (
    as_member,
    chat,
    expect_refusal,
    key_protocols,
    open_playground,
    open_socket,
    run,
    session_headers,
)

pytestmark = pytest.mark.django_db(transaction=True)

# Where REST shows what each event tells.
REST_READ = {
    "tenant.status": "/api/v1/me",
    "invite.created": "/api/v1/invites",
    "member.joined": "/api/v1/members",
    "member.role": "/api/v1/members",
    "member.removed": "/api/v1/members",
    "api_key.created": "/api/v1/keys",
    "api_key.scopes": "/api/v1/keys",
    "api_key.revoked": "/api/v1/keys",
}
# The order in which every_event() causes them.
EVERY_EVENT = ["invite.created", "member.joined", "api_key.created", "api_key.scopes", "member.role",
               "member.removed", "api_key.revoked", "tenant.status"]


def test_every_event_type_says_who_may_see_it():
    assert set(EVENT_READ_ACTIONS) == set(REST_READ) == set(EVERY_EVENT)


def every_event(alice, acme):
    """Each event type once, caused by the owner around a newcomer, erin."""
    owner = as_member(alice, acme)
    _, token = services.invite_create(principal=owner, email="erin@acme.test", role=DEVELOPER,
                                      accept_url_for=lambda token: f"http://testserver/invites/{token}")
    erin = User.objects.create_user(email="erin@acme.test", password=PASSWORD)
    membership = services.invite_accept(user=erin, token=token)
    services.api_key_create(principal=principal_from_membership(membership), name="erin's",
                            scopes=["infer", "usage:read"])
    membership = Membership.objects.select_related("user").get(pk=membership.pk)
    services.membership_set_role(principal=owner, membership_id=membership.pk, role=BILLING_VIEWER)  # narrows her key
    services.membership_remove(principal=owner, membership_id=membership.pk)  # revokes it
    services.tenant_set_status(tenant_id=acme.pk, status=Tenant.ACTIVE)


SESSIONS = [OWNER, ADMIN, DEVELOPER, BILLING_VIEWER]
KEYS = [[scope] for scope in SCOPES] + [list(SCOPES)]


@pytest.mark.parametrize("who", [f"session:{role}" for role in SESSIONS] + [f"key:{'+'.join(s)}" for s in KEYS])
def test_a_socket_hears_exactly_the_events_its_credentials_can_read_over_rest(alice, acme, who):
    kind, _, what = who.partition(":")
    if kind == "session":
        person = alice if what == OWNER else make_member(f"{what}@acme.test", acme, what)
        rest, socket = session_client(person), {"headers": session_headers(person)}
    else:
        _, secret = create_key(alice, acme, scopes=what.split("+"))
        rest, socket = key_client(secret), {"subprotocols": key_protocols(secret)}
    readable = {path: rest.get(path).status_code for path in set(REST_READ.values())}
    assert set(readable.values()) <= {200, 403}, readable
    expected = [event for event in EVERY_EVENT if readable[REST_READ[event]] == 200]

    async def go():
        communicator, _ = await open_socket(**socket)
        welcome = await communicator.receive_json_from()
        await database_sync_to_async(every_event)(alice, acme)
        heard = []
        while not heard or heard[-1] != "tenant.status":  # everyone may read it, and it comes last
            message = await communicator.receive_json_from(timeout=5)
            assert message["type"] == "event", message
            heard.append(message["event"])
        quiet = await communicator.receive_nothing(timeout=0.2)
        await communicator.disconnect()
        return welcome, heard, quiet

    welcome, heard, quiet = run(go)
    assert heard == expected
    assert welcome["events"] == sorted(expected)
    assert quiet


# ---- a member's keys follow the member -----------------------------------------------------------------------

def _bob_keys(bob, acme):
    principal = as_member(bob, acme)
    wide, wide_secret = services.api_key_create(principal=principal, name="wide",
                                                scopes=["adapters:write", "infer", "usage:read"])
    narrow, narrow_secret = services.api_key_create(principal=principal, name="infer only", scopes=["infer"])
    return (wide, wide_secret), (narrow, narrow_secret)


def test_demoting_a_member_narrows_their_keys_over_rest(alice_client, alice, bob, acme):
    (wide, wide_secret), (narrow, narrow_secret) = _bob_keys(bob, acme)
    alices, _ = create_key(alice, acme)
    membership = Membership.objects.get(user=bob, tenant=acme)
    assert key_client(wide_secret).get("/api/v1/adapters").status_code == 200

    response = alice_client.patch(f"/api/v1/members/{membership.pk}", {"role": BILLING_VIEWER}, format="json")
    assert response.status_code == 200, response.content

    assert key_client(wide_secret).get("/api/v1/me").json()["scopes"] == ["usage:read"]
    assert_error(key_client(wide_secret).get("/api/v1/adapters"), 403, code="missing_scope")
    assert_error(key_client(narrow_secret).get("/api/v1/me"), 401, code="api_key_revoked")
    keys = {key.prefix: key for key in APIKey.objects.filter(tenant=acme)}
    assert (keys[wide.prefix].scopes, keys[wide.prefix].revoked) == (["usage:read"], False)
    assert keys[narrow.prefix].revoked and keys[narrow.prefix].revoked_at is not None
    assert (keys[alices.prefix].scopes, keys[alices.prefix].revoked) == (list(SCOPES), False)  # others' untouched
    entry = AuditEntry.objects.get(action="member.role_changed")
    assert entry.details == {"email": "bob@acme.test", "old": DEVELOPER, "new": BILLING_VIEWER,
                             "narrowed_keys": {wide.prefix: ["usage:read"]}, "revoked_keys": [narrow.prefix]}

    # a wider role widens no key: scopes once taken away are gone
    response = alice_client.patch(f"/api/v1/members/{membership.pk}", {"role": ADMIN}, format="json")
    assert response.status_code == 200
    assert key_client(wide_secret).get("/api/v1/me").json()["scopes"] == ["usage:read"]
    assert AuditEntry.objects.filter(action="member.role_changed").last().details["narrowed_keys"] == {}


def test_removing_a_member_revokes_their_keys_over_rest(alice_client, bob, acme):
    (_, wide_secret), (_, narrow_secret) = _bob_keys(bob, acme)
    membership = Membership.objects.get(user=bob, tenant=acme)
    assert alice_client.delete(f"/api/v1/members/{membership.pk}").status_code == 204
    for secret in (wide_secret, narrow_secret):
        assert_error(key_client(secret).get("/api/v1/me"), 401, code="api_key_revoked")


def test_demotion_closes_the_socket_of_a_key_it_revokes_and_narrows_the_others(alice, bob, acme):
    (wide, wide_secret), (_, narrow_secret) = _bob_keys(bob, acme)
    alice_session = session_headers(alice)

    def demote():
        services.membership_set_role(principal=as_member(alice, acme),
                                     membership_id=bob.memberships.get(tenant=acme).pk, role=BILLING_VIEWER)

    async def go():
        by_narrow, _ = await open_socket(subprotocols=key_protocols(narrow_secret))
        by_wide, _ = await open_socket(subprotocols=key_protocols(wide_secret))
        alices, _ = await open_socket(headers=alice_session)
        for communicator in (by_narrow, by_wide, alices):
            assert (await communicator.receive_json_from())["type"] == "welcome"
        await database_sync_to_async(demote)()
        # alice's first: a socket refused and torn down while it holds the process's channel-layer read could
        # take a message meant for another socket with it
        seen = [(await alices.receive_json_from(timeout=5))["event"] for _ in range(3)]
        await expect_refusal(by_narrow, 4401, "api_key_revoked")
        quiet = await by_wide.receive_nothing(timeout=0.3)  # keys are the sessions' business, not the keys'
        await by_wide.send_json_to({"type": "ping"})
        pong = await by_wide.receive_json_from()
        await alices.disconnect()
        await by_wide.disconnect()
        return seen, quiet, pong

    seen, quiet, pong = run(go)
    assert sorted(seen) == ["api_key.revoked", "api_key.scopes", "member.role"]
    assert quiet and pong == {"type": "pong"}
    assert APIKey.objects.get(pk=wide.pk).scopes == ["usage:read"]


def test_removing_a_member_closes_their_keys_sockets_and_tells_the_others(alice, bob, acme):
    (wide, wide_secret), (narrow, _) = _bob_keys(bob, acme)
    alice_session = session_headers(alice)

    def remove_bob():
        services.membership_remove(principal=as_member(alice, acme), membership_id=bob.memberships.get(tenant=acme).pk)

    async def go():
        by_key, _ = await open_socket(subprotocols=key_protocols(wide_secret))
        alices, _ = await open_socket(headers=alice_session)
        for communicator in (by_key, alices):
            assert (await communicator.receive_json_from())["type"] == "welcome"
        await database_sync_to_async(remove_bob)()
        seen = [await alices.receive_json_from(timeout=5) for _ in range(3)]  # first: see above
        await expect_refusal(by_key, 4401, "api_key_revoked")
        await alices.disconnect()
        return seen

    seen = run(go)
    assert [(m["event"], m["data"]) for m in seen] == [
        ("member.removed", {"user": "bob@acme.test"}),
        *sorted((("api_key.revoked", {"prefix": key.prefix}) for key in (wide, narrow)),
                key=lambda pair: pair[1]["prefix"])]


# ---- every socket reads its credentials again before acting on a message --------------------------------------

def _chat_after(change, **socket):
    """Opens the playground, makes ``change`` while it is open, then sends a chat: (first reply, rows written)."""
    async def go():
        ws, welcome = await open_playground(**socket)
        assert welcome["type"] == "welcome", welcome
        await database_sync_to_async(change)()
        await ws.send_json_to(chat())
        reply = await ws.receive_json_from(timeout=5)
        close = None if await ws.receive_nothing(timeout=0.3) else await ws.receive_output()
        await ws.disconnect(timeout=0.1)
        return reply, close

    reply, close = run(go)
    return reply, close, InferenceRequest.objects.count()


def test_a_key_revoked_while_its_playground_is_open_cannot_chat(alice, acme):
    key, secret = create_key(alice, acme, scopes=["infer"])
    reply, close, rows = _chat_after(
        lambda: services.api_key_revoke(principal=as_member(alice, acme), prefix=key.prefix),
        subprotocols=key_protocols(secret))
    assert reply["error"]["code"] == "api_key_revoked" and close["code"] == 4401
    assert rows == 0


def test_a_key_narrowed_while_its_playground_is_open_loses_infer(alice, bob, acme):
    _, secret = services.api_key_create(principal=as_member(bob, acme), name="bob", scopes=["infer", "usage:read"])

    def demote():
        services.membership_set_role(principal=as_member(alice, acme),
                                     membership_id=bob.memberships.get(tenant=acme).pk, role=BILLING_VIEWER)

    reply, close, rows = _chat_after(demote, subprotocols=key_protocols(secret))
    assert reply["error"]["code"] == "missing_scope" and close is None  # a chat refusal: the socket stays open
    assert rows == 0


def test_a_member_removed_while_their_playground_is_open_cannot_chat(alice, bob, acme):
    headers = session_headers(bob)

    def remove():
        services.membership_remove(principal=as_member(alice, acme), membership_id=bob.memberships.get(tenant=acme).pk)

    reply, close, rows = _chat_after(remove, headers=headers)
    assert reply["error"]["code"] == "member_removed" and close["code"] == 4403
    assert rows == 0
