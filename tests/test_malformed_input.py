"""Malformed input is a 4xx in the one error shape with an x-request-id, never a 5xx, and writes nothing: JSON
nested past the bound (request bodies and websocket messages), dates and integers out of range, multipart bodies
and Content-Type headers that cannot be parsed."""

import json

import pytest
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator
from rest_framework.test import APIClient

from tests.factories import create_key, key_client
from tests.helpers import assert_error
from tests.ws_helpers import Communicator
from vajra.asgi import application
from vajra.parsers import MAX_JSON_DEPTH, depth_within

HOSTILE = "[" * 50_000 + "]" * 50_000


def nested(depth):
    """A JSON object whose ``a`` nests ``depth`` levels in all."""
    return '{"a": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def assert_too_deep(response):
    error = assert_error(response, 400, code="json_too_deep")
    assert f"deeper than {MAX_JSON_DEPTH} levels" in error["message"], error
    assert response["x-request-id"]


def test_depth_is_counted_without_recursion():
    assert depth_within(json.loads(nested(MAX_JSON_DEPTH)))
    assert not depth_within(json.loads(nested(MAX_JSON_DEPTH + 1)))
    assert depth_within(7) and depth_within([]) and depth_within({"a": [1, {"b": 2}]}, limit=3)
    assert not depth_within({"a": [1, {"b": []}]}, limit=3)


@pytest.mark.parametrize("body", [HOSTILE, nested(MAX_JSON_DEPTH + 1)])
def test_deep_json_to_signup_is_400_before_anything(db, unchanged_db, body):
    with unchanged_db():
        assert_too_deep(APIClient().generic("POST", "/api/v1/signup", body, content_type="application/json"))


@pytest.mark.parametrize("method, path", [("POST", "/api/v1/keys"), ("POST", "/api/v1/tenants"),
                                          ("PATCH", "/api/v1/members/{member}"),
                                          ("PATCH", "/api/v1/adapters/anything")])
def test_deep_json_to_session_endpoints_is_400(alice_client, bob, unchanged_db, method, path):
    path = path.format(member=bob.memberships.get().pk)
    with unchanged_db():
        assert_too_deep(alice_client.generic(method, path, HOSTILE, content_type="application/json"))


@pytest.mark.parametrize("path", ["/v1/models/smollm2-135m/infer", "/v1/chat/completions", "/v1/completions",
                                  "/v1/models/smollm2-135m/train", "/v1/models/smollm2-135m/train/estimate"])
def test_deep_json_to_the_inference_api_is_400(alice_key, unchanged_db, sent, path):
    with unchanged_db():
        assert_too_deep(key_client(alice_key[1]).generic("POST", path, HOSTILE, content_type="application/json"))
    assert sent == []


def test_deep_json_without_credentials_is_still_a_401(db, unchanged_db):
    with unchanged_db():
        assert_error(APIClient().generic("POST", "/v1/chat/completions", HOSTILE, content_type="application/json"),
                     401)


def test_nan_is_not_json_to_the_strict_drf_endpoints(alice_client, unchanged_db):
    with unchanged_db():
        error = assert_error(alice_client.generic("POST", "/api/v1/keys", '{"name": NaN}',
                                                  content_type="application/json"), 400, code="parse_error")
    assert "NaN" in error["message"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/ws/v1/tenants/acme/events/", "/ws/v1/playground/"])
@pytest.mark.parametrize("authenticated", [False, True])
def test_deep_json_on_a_websocket_is_4400(alice_key, unchanged_db, path, authenticated):
    async def go():
        communicator = Communicator(application, path, subprotocols=["vajra.v1", f"bearer.{alice_key[1]}"]
                                             if authenticated else ["vajra.v1"])
        connected, _ = await communicator.connect()
        assert connected
        if authenticated:
            assert (await communicator.receive_json_from())["type"] == "welcome"
        await communicator.send_to(text_data=HOSTILE)
        message = await communicator.receive_json_from()
        closed = await communicator.receive_output()
        await communicator.wait()
        return message, closed

    with unchanged_db():
        message, closed = async_to_sync(go)()
    assert message["type"] == "error" and message["error"]["code"] == "json_too_deep", message
    assert closed["type"] == "websocket.close" and closed["code"] == 4400, closed


@pytest.mark.parametrize("query, param", [
    ("to=9999-12-31", "to"),
    ("from=0001-01-01", "from"),
    ("from=2026-01-01&to=9999-12-31T23:59:59-23:59", "to"),
    ("from=0001-01-01T00:00:00%2B23:59", "from"),
    ("to=1999-12-31", "to"),
])
def test_usage_dates_out_of_range_are_named(alice_key, unchanged_db, query, param):
    with unchanged_db():
        error = assert_error(key_client(alice_key[1]).get(f"/v1/usage/acme/metrics?{query}"), 400,
                             code="date_out_of_range", param=param)
    assert "2000-01-01" in error["message"] and "9998-12-31" in error["message"]


def test_usage_dates_at_the_bounds_are_answered(alice_key):
    response = key_client(alice_key[1]).get("/v1/usage/acme/metrics?from=9998-12-01&to=9998-12-31")
    assert response.status_code == 200, response.content


HUGE = "9" * 30


@pytest.mark.parametrize("path", [f"/api/v1/members/{HUGE}", f"/api/v1/invites/{HUGE}",
                                  f"/api/v1/members/{2 ** 63}", f"/api/v1/invites/{2 ** 63}"])
def test_huge_path_ids_are_404(alice_client, unchanged_db, path):
    with unchanged_db():
        for method in ("GET", "PATCH", "DELETE"):
            assert_error(alice_client.generic(method, path, "{}", content_type="application/json"), 404)


def test_huge_query_integers_are_400(alice_client, alice_key, unchanged_db):
    with unchanged_db():
        assert_error(alice_client.get(f"/api/v1/audit-log?before={HUGE}"), 400, param="before")
        assert_error(key_client(alice_key[1]).get(f"/v1/training/jobs?limit={HUGE}"), 400, param="limit")


def test_huge_version_numbers_name_no_version(alice_key, alice_client, unchanged_db, sent):
    client = key_client(alice_key[1])
    with unchanged_db():
        assert_error(client.get(f"/v1/models/tuned@v{HUGE}"), 404)
        body = {"model": f"tuned@v{HUGE}", "messages": [{"role": "user", "content": "hi"}]}
        assert_error(client.post("/v1/chat/completions", body, format="json"), 404, param="model")
        assert_error(alice_client.post("/api/v1/adapters/tuned/rollback", {"version": int(HUGE)}, format="json"),
                     400, param="version")
    assert sent == []


MULTIPART_PATHS = ["/api/v1/adapters", "/api/v1/datasets"]


@pytest.mark.parametrize("path", MULTIPART_PATHS)
@pytest.mark.parametrize("content_type, body", [
    ("multipart/form-data", b"--xyz\r\n"),  # no boundary
    ("multipart/form-data; boundary=", b"garbage"),
])
def test_malformed_multipart_is_400_in_the_error_shape(alice, acme, unchanged_db, path, content_type, body):
    client = key_client(create_key(alice, acme)[1])
    with unchanged_db():
        response = client.generic("POST", path, body, content_type=content_type)
        error = assert_error(response, 400, code="parse_error")
    assert "Multipart form parse error" in error["message"] and "multipart/form-data body" in error["message"]
    assert "JSON" not in error["message"]
    assert response["x-request-id"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", MULTIPART_PATHS + ["/api/v1/signup", "/v1/chat/completions", "/login/"])
def test_an_unparseable_content_type_is_400_before_django(unchanged_db, path):
    """Django raises LookupError building a request whose Content-Type names an unknown charset, before any
    middleware runs; the ASGI application answers it in the error shape."""
    communicator = HttpCommunicator(application, "POST", path, body=b"--abc--\r\n",
                                    headers=[(b"content-type", b"multipart/form-data; boundary*=bogus''abc")])
    with unchanged_db():
        response = async_to_sync(communicator.get_response)()
    headers = dict(response["headers"])
    assert response["status"] == 400
    assert headers[b"x-request-id"].startswith(b"req_")
    error = json.loads(response["body"])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "invalid_content_type" and error["param"] == "Content-Type"


def test_an_adapter_config_nested_too_deep_is_rejected(tmp_path):
    from gpu_runtime.adapter_validation import CONFIG_FILE, AdapterRejected, _read_config

    (tmp_path / CONFIG_FILE).write_text("[" * 30_000 + "]" * 30_000)
    with pytest.raises(AdapterRejected) as rejected:
        _read_config(tmp_path)
    assert rejected.value.code == "invalid_config"


@pytest.mark.parametrize("path", ["/v1/models/a%00b", "/v1/models/a%00b/versions", "/v1/requests/req%00",
                                  "/v1/usage/acme/metrics?adapter=a%00b", "/v1/training/jobs/a%00b",
                                  "/v1/training/jobs?after=a%00b", "/api/v1/adapters/a%00b", "/api/v1/datasets/a%00b",
                                  "/api/v1/audit-log?action%00=x"])
def test_a_nul_character_in_the_path_or_query_is_400(alice_key, unchanged_db, path):
    """PostgreSQL cannot compare text holding NUL: each of these would reach a lookup it refuses (a DataError)."""
    with unchanged_db():
        assert_error(key_client(alice_key[1]).get(path), 400, code="null_character")


def test_a_nul_character_in_a_page_url_is_a_400_page(alice_client, unchanged_db):
    with unchanged_db():
        response = alice_client.get("/adapters/a%00b/")
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/ws/v1/training/ftjob_a\x00b/", "/ws/v1/tenants/a\x00b/events/", "/ws/v1/nowhere/"])
def test_a_websocket_path_that_names_no_route_is_4404(alice_key, unchanged_db, path):
    """A training job id holding NUL would reach a lookup PostgreSQL refuses (a DataError in the consumer);
    a path matching no route makes Channels' router raise."""
    async def go():
        communicator = Communicator(application, path, subprotocols=["vajra.v1", f"bearer.{alice_key[1]}"])
        connected, _ = await communicator.connect()
        assert connected
        message = await communicator.receive_json_from()
        closed = await communicator.receive_output()
        await communicator.wait()
        return message, closed

    with unchanged_db():
        message, closed = async_to_sync(go)()
    assert message["error"]["code"] == "unknown_route" and closed["code"] == 4404, (message, closed)
