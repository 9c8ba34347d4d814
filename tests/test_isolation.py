"""Tenant isolation: charlie (owner of contoso) can neither see nor touch anything of acme's, and bob
(developer in acme) can do only what his role allows. Each refused request leaves the database as it was."""

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.utils import timezone

from tenants.models import Invite
from tests.factories import create_key
from tests.helpers import assert_error
from tests.ws_helpers import Communicator
from vajra.asgi import application


@pytest.fixture
def acme_rows(alice, bob, acme):
    """One of each of acme's resources."""
    key, _ = create_key(alice, acme)
    invite = Invite.objects.create(tenant=acme, email="dave@example.test", role="developer",
                                   token_hash="a" * 64, invited_by=alice,
                                   expires_at=timezone.now() + timedelta(days=1))
    return {"key": key.prefix, "alice": alice.memberships.get().pk, "bob": bob.memberships.get().pk,
            "invite": invite.pk}


# (method, path template, body): every one of acme's resources, by every method that reaches it.
ACME_RESOURCES = [
    ("get", "/api/v1/keys/{key}", None),
    ("delete", "/api/v1/keys/{key}", None),
    ("get", "/api/v1/members/{alice}", None),
    ("get", "/api/v1/members/{bob}", None),
    ("patch", "/api/v1/members/{bob}", {"role": "admin"}),
    ("patch", "/api/v1/members/{alice}", {"role": "developer"}),
    ("delete", "/api/v1/members/{bob}", None),
    ("delete", "/api/v1/members/{alice}", None),
    ("delete", "/api/v1/invites/{invite}", None),
]


@pytest.mark.parametrize("method, path, body", ACME_RESOURCES, ids=[f"{m} {p}" for m, p, _ in ACME_RESOURCES])
def test_charlie_gets_404_for_every_acme_resource(charlie_client, acme_rows, unchanged_db, method, path,
                                                  body):
    with unchanged_db():
        response = getattr(charlie_client, method)(path.format(**acme_rows), body, format="json")
    error = assert_error(response, 404, code="not_found")
    assert "acme" not in error["message"] and "alice" not in error["message"]


@pytest.mark.parametrize("path, field", [
    ("/api/v1/keys", "prefix"), ("/api/v1/members", "email"), ("/api/v1/invites", "email"),
    ("/api/v1/tenants", "slug"),
])
def test_charlies_lists_never_contain_acmes_rows(charlie_client, charlie, contoso, acme_rows, path, field):
    create_key(charlie, contoso)

    response = charlie_client.get(path)

    assert response.status_code == 200, response.content
    text = response.content.decode()
    assert acme_rows["key"] not in text and "acme" not in text and "dave@" not in text
    if path != "/api/v1/invites":
        assert response.json()["data"], "charlie's own rows are listed"


def test_charlie_cannot_make_acme_his_active_tenant(charlie_client, acme):
    """A session's active tenant is always one of the person's own, whatever the session says."""
    session = charlie_client.session
    session["vajra_tenant_id"] = acme.pk
    session.save()
    assert charlie_client.get("/api/v1/me").json()["tenant"]["slug"] == "contoso"


# bob is a developer: he may read, hold his own keys, and leave; nothing more.

BOB_FORBIDDEN = [
    ("post", "/api/v1/invites", {"email": "eve@example.test", "role": "developer"}),
    ("delete", "/api/v1/invites/{invite}", None),
    ("patch", "/api/v1/members/{alice}", {"role": "developer"}),
    ("patch", "/api/v1/members/{bob}", {"role": "owner"}),
    ("patch", "/api/v1/members/{bob}", {"role": "admin"}),
    ("delete", "/api/v1/members/{alice}", None),
    ("delete", "/api/v1/keys/{key}", None),
    ("post", "/api/v1/keys", {"name": "money", "scopes": ["billing:read"]}),
]


@pytest.mark.parametrize("method, path, body", BOB_FORBIDDEN,
                         ids=[f"{m} {p} {b}" for m, p, b in BOB_FORBIDDEN])
def test_bob_cannot_do_what_his_role_forbids(bob_client, acme_rows, unchanged_db, method, path, body):
    with unchanged_db():
        response = getattr(bob_client, method)(path.format(**acme_rows), body, format="json")
    error = assert_error(response, 403)
    assert error["code"] in {"role_forbidden", "scope_forbidden"}, error
    assert error["type"] == "permission_error"


def test_bob_may_read_what_his_role_allows(bob_client, acme_rows):
    for path in ("/api/v1/keys", "/api/v1/keys/{key}", "/api/v1/members", "/api/v1/members/{alice}",
                 "/api/v1/invites", "/api/v1/me", "/api/v1/tenants"):
        assert bob_client.get(path.format(**acme_rows)).status_code == 200, path


# Websockets: charlie's credentials never open acme's event stream.


def _ws_close(path, subprotocols=None, headers=None):
    async def run():
        communicator = Communicator(application, path, subprotocols=subprotocols, headers=headers)
        connected, _ = await communicator.connect()
        assert connected
        error = await communicator.receive_json_from()
        close = await communicator.receive_output()
        await communicator.disconnect()
        return error, close

    return async_to_sync(run)()


@pytest.mark.django_db(transaction=True)
def test_charlies_key_cannot_open_acmes_events(charlie, contoso, acme_rows, unchanged_db):
    _, secret = create_key(charlie, contoso)
    with unchanged_db():
        error, close = _ws_close("/ws/v1/tenants/acme/events/", subprotocols=["vajra.v1", f"bearer.{secret}"])
    assert error["type"] == "error" and error["error"]["code"] == "not_found"
    assert close["type"] == "websocket.close" and close["code"] == 4404


@pytest.mark.django_db(transaction=True)
def test_charlies_session_cannot_open_acmes_events(charlie, acme_rows, unchanged_db):
    client = Client()
    client.force_login(charlie)
    headers = [(b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
               (b"host", b"testserver"), (b"origin", b"http://testserver")]
    with unchanged_db():
        error, close = _ws_close("/ws/v1/tenants/acme/events/", headers=headers)
    assert error["error"]["code"] == "not_found" and close["code"] == 4404


@pytest.mark.django_db(transaction=True)
def test_charlies_key_via_auth_message_cannot_open_acmes_events(charlie, contoso, acme_rows):
    _, secret = create_key(charlie, contoso)

    async def run():
        communicator = Communicator(application, "/ws/v1/tenants/acme/events/")
        await communicator.connect()
        await communicator.send_json_to({"type": "auth", "api_key": secret})
        error = await communicator.receive_json_from()
        close = await communicator.receive_output()
        await communicator.disconnect()
        return error, close

    error, close = async_to_sync(run)()
    assert error["error"]["code"] == "not_found" and close["code"] == 4404

