"""Websocket tests through the real ASGI application: sockets opened with a session or a key, the refusal protocol
(an error in the one error shape, then a close with its code and reason), and the playground's chat message.

pytest-asyncio is not installed: each test drives its coroutine with ``run`` (``async_to_sync``), and uses a
transactional database so that the consumer's database thread sees the rows the test made."""

from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.test import Client

from tenants.keys import principal_from_membership
from vajra.asgi import application

ACME_EVENTS = "/ws/v1/tenants/acme/events/"
PLAYGROUND = "/ws/v1/playground/"


WAIT_S = 30  # each message's wait: the tests judge what arrives, not how fast a loaded 2-core machine sends it


class Communicator(WebsocketCommunicator):
    """channels' WebsocketCommunicator with WAIT_S as every wait's default (channels' is 1 s, which a consumer
    reading PostgreSQL on a busy CI machine can pass); a test that expects silence still says how long."""

    async def connect(self, timeout=WAIT_S):
        return await super().connect(timeout)

    async def receive_from(self, timeout=WAIT_S):
        return await super().receive_from(timeout)

    async def receive_json_from(self, timeout=WAIT_S):
        return await super().receive_json_from(timeout)

    async def receive_output(self, timeout=WAIT_S):
        return await super().receive_output(timeout)


def run(coroutine_function):
    return async_to_sync(coroutine_function)()


def key_protocols(secret):
    return ["vajra.v1", f"bearer.{secret}"]


def as_member(user, tenant):
    """The principal of a member's session, for calling services as them."""
    return principal_from_membership(user.memberships.get(tenant=tenant))


def session_headers(user, origin="http://testserver", host="testserver"):
    client = Client()
    client.force_login(user)
    headers = [(b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
               (b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return headers


async def open_socket(path=ACME_EVENTS, *, subprotocols=None, headers=None):
    communicator = Communicator(application, path, subprotocols=subprotocols, headers=headers)
    connected, subprotocol = await communicator.connect()
    assert connected, "refusals accept first, so that the client gets a close code and a reason"
    return communicator, subprotocol


async def expect_refusal(communicator, close_code, code):
    """The refusal protocol: an error message in the one error shape, then a close with code and reason."""
    message = await communicator.receive_json_from()
    assert message["type"] == "error", message
    assert set(message["error"]) == {"message", "type", "param", "code"}, message
    assert message["error"]["code"] == code, message
    assert message["error"]["message"], message
    close = await communicator.receive_output()
    assert close["type"] == "websocket.close", close
    assert close["code"] == close_code, close
    assert close["reason"] and len(close["reason"].encode()) <= 123, close
    # Short: a consumer refused within milliseconds of connecting may still be starting its channel-layer
    # receive, which channels_redis finishes (up to its BRPOP timeout) before it can be cancelled.
    await communicator.disconnect(timeout=0.1)
    return message["error"], close


async def open_playground(headers=None, subprotocols=None):
    """A connected playground socket and its welcome message."""
    communicator = Communicator(application, PLAYGROUND, headers=headers, subprotocols=subprotocols)
    connected, _ = await communicator.connect()
    assert connected
    welcome = await communicator.receive_json_from()
    return communicator, welcome


def chat(model="test-base", **extra):
    """A playground chat message: a multi-turn conversation, greedy, 16 tokens at most."""
    return {"type": "chat", "model": model, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}],
        "temperature": 0, "max_tokens": 16, **extra}
