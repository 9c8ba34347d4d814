"""The real server: daphne in a subprocess, an HTTP request and WebSocket handshakes with an API key."""

import asyncio
import json

import httpx
import pytest
import websockets

from tests.factories import create_key

pytestmark = pytest.mark.slow


@pytest.fixture
def acme_key(alice, acme):
    return create_key(alice, acme)[1]


def test_http_request_with_api_key(daphne, acme_key):
    response = httpx.get(f"{daphne}/api/v1/me", headers={"Authorization": f"Bearer {acme_key}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["tenant"]["slug"] == "acme"
    assert response.headers["x-request-id"].startswith("req_")

    refused = httpx.get(f"{daphne}/api/v1/me", headers={"Authorization": "Bearer nope.nope"}, timeout=10)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"


def _ws_url(base, slug):
    return base.replace("http://", "ws://") + f"/ws/v1/tenants/{slug}/events/"



async def _connect_then_read(url, subprotocols):
    async with websockets.connect(url, subprotocols=subprotocols, open_timeout=10) as ws:
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        await ws.send(json.dumps({"type": "ping"}))
        pong = json.loads(await asyncio.wait_for(ws.recv(), 10))
        return ws.subprotocol, welcome, pong


async def _refused(url, subprotocols):
    async with websockets.connect(url, subprotocols=subprotocols, open_timeout=10) as ws:
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        return error, closed.value.rcvd


def test_websocket_handshake_with_api_key(daphne, acme_key):
    protocol, welcome, pong = asyncio.run(
        _connect_then_read(_ws_url(daphne, "acme"), ["vajra.v1", f"bearer.{acme_key}"]))
    assert protocol == "vajra.v1"  # the key is never echoed back as the chosen subprotocol
    assert welcome == {"type": "welcome", "tenant": "acme", "role": None,
                       "api_key": acme_key.split(".")[0], "scopes": welcome["scopes"], "events": ["tenant.status"]}
    assert pong == {"type": "pong"}


def test_websocket_refusals_close_with_code_and_reason(daphne, acme_key, charlie):
    error, close = asyncio.run(_refused(_ws_url(daphne, "acme"), ["vajra.v1", "bearer.nope.nope"]))
    assert error["error"]["code"] == "invalid_api_key"
    assert close.code == 4401 and "Incorrect API key" in close.reason

    # another tenant's slug with acme's key: as if it did not exist
    error, close = asyncio.run(_refused(_ws_url(daphne, "contoso"), ["vajra.v1", f"bearer.{acme_key}"]))
    assert close.code == 4404 and error["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("content_type, body, code", [
    ("multipart/form-data; boundary=abc", b"--abc--", None),  # Twisted itself would refuse it with a bare 400
    ("multipart/form-data; boundary=abc", b"no parts at all", None),
    ("multipart/form-data; boundary*=bogus''abc", b"--abc--\r\n", "invalid_content_type"),
    ("application/json", b"[" * 50_000 + b"]" * 50_000, "json_too_deep"),
])
def test_malformed_bodies_reach_the_app_and_get_the_error_shape(daphne, acme_key, unchanged_db, content_type, body,
                                                                  code):
    path = "/api/v1/signup" if content_type == "application/json" else "/api/v1/datasets"
    with unchanged_db():
        response = httpx.post(f"{daphne}{path}", content=body, timeout=10,
                              headers={"Content-Type": content_type, "Authorization": f"Bearer {acme_key}"})
    assert response.status_code == 400, response.text
    assert response.headers["x-request-id"].startswith("req_")
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert response.json()["error"]["code"] == code
