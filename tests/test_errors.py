"""One error shape for every API error, a request id on every response, health and readiness, the schema."""

import re

import pytest
from django.test import Client
from rest_framework.test import APIClient

from fleet.models import Node
from tests.factories import create_key, key_client, make_node
from tests.helpers import assert_error
from vajra.middleware import RequestIdLogFilter

GENERATED_ID = re.compile(r"^req_[0-9a-f]{32}$")


@pytest.fixture
def error_responses(alice_client, bob_client, alice, acme, charlie_client):
    """One of each kind of API error, as (expected status, response)."""
    _, revoked = create_key(alice, acme, revoked=True)
    return [
        (400, alice_client.post("/api/v1/keys", {"name": ""}, format="json")),
        (400, alice_client.generic("POST", "/api/v1/keys", "{", content_type="application/json")),
        (401, APIClient().get("/api/v1/me")),
        (401, key_client("nope.nope").get("/api/v1/keys")),
        (401, key_client(revoked).get("/api/v1/me")),
        (403, bob_client.post("/api/v1/invites", {"email": "x@example.test", "role": "admin"},
                              format="json")),
        (404, charlie_client.get(f"/api/v1/members/{alice.memberships.get().pk}")),
        (404, APIClient().get("/api/v1/no-such-thing")),
        (405, alice_client.put("/api/v1/keys", {}, format="json")),
        (409, alice_client.post("/api/v1/tenants", {"name": "A", "slug": "acme"}, format="json")),
        (415, alice_client.post("/api/v1/keys", {"name": "x"})),  # multipart, the test client's default
    ]


def test_every_api_error_has_the_one_shape(error_responses):
    for status, response in error_responses:
        error = assert_error(response, status)
        assert error["type"] in {"invalid_request_error", "authentication_error", "permission_error",
                                 "not_found_error", "conflict_error"}
        assert isinstance(error["code"], str) and error["code"], error
        assert response["Content-Type"] == "application/json"


@pytest.mark.parametrize("method", ["get", "post", "delete"])
@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/nope", "/api/v1/keys/a/b", "/api/v2/keys",
                                  "/v1/chat"])
def test_unknown_api_route_is_404_json(db, method, path):
    error = assert_error(getattr(APIClient(), method)(path), 404, code="unknown_route")
    assert path in error["message"] and "/api/docs/" in error["message"]
    assert error["type"] == "not_found_error"


def test_unknown_page_outside_the_api_is_html(db):
    response = Client().get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert response["x-request-id"]


@pytest.mark.parametrize("method, path", [("put", "/api/v1/keys"), ("delete", "/api/v1/me"),
                                          ("post", "/api/v1/members"), ("patch", "/api/v1/tenants")])
def test_method_not_allowed_is_405_json(alice_client, unchanged_db, method, path):
    with unchanged_db():
        error = assert_error(getattr(alice_client, method)(path, {}, format="json"), 405,
                             code="method_not_allowed")
    assert method.upper() in error["message"] and error["type"] == "invalid_request_error"


@pytest.mark.urls("tests.urls_scopes")
def test_a_bug_in_a_view_is_500_json_with_a_request_id(db):
    client = APIClient(raise_request_exception=False)
    response = client.get("/api/v1/test/boom")
    error = assert_error(response, 500, code="server_error")
    assert error["type"] == "api_error" and "x-request-id" in error["message"]


def test_csrf_failure_on_a_session_write_is_403_json(alice, unchanged_db):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(alice)
    with unchanged_db():
        response = client.post("/api/v1/keys", {"name": "x", "scopes": ["infer"]}, format="json")
    error = assert_error(response, 403)
    assert "CSRF" in error["message"]


# x-request-id


@pytest.mark.parametrize("path", ["/api/v1/me", "/api/v1/nope", "/healthz", "/readyz", "/admin/login/",
                                  "/api/docs/", "/api/schema/", "/no-such-page/"])
def test_every_response_carries_a_request_id(db, path):
    response = Client().get(path)
    assert GENERATED_ID.match(response["x-request-id"]), (path, response.status_code,
                                                          response.get("x-request-id"))


def test_each_request_gets_its_own_id(db):
    ids = {Client().get("/healthz")["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


@pytest.mark.parametrize("incoming", ["trace-0123456789", "abcdefgh", "a" * 64, "span:1.2_3-4",
                                      "req_" + "f" * 32])
def test_a_well_formed_incoming_request_id_is_echoed(db, incoming):
    assert Client().get("/healthz", HTTP_X_REQUEST_ID=incoming)["x-request-id"] == incoming
    assert APIClient().get("/api/v1/me", HTTP_X_REQUEST_ID=incoming)["x-request-id"] == incoming


@pytest.mark.parametrize("incoming", ["short", "a" * 65, "has space in it", "semi;colon123",
                                      "<script>x</script>", "ünïcödé-id-1234", ""])
def test_a_malformed_incoming_request_id_is_replaced(db, incoming):
    returned = Client().get("/healthz", HTTP_X_REQUEST_ID=incoming)["x-request-id"]
    assert returned != incoming and GENERATED_ID.match(returned)


# Health and readiness


def test_healthz(db):
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_readyz_reports_database_redis_and_live_nodes(db, settings):
    make_node("gpu-a", device="cuda:0", base="smollm2-135m-instruct", state={"model_loaded": True})
    make_node("gpu-silent", device="cuda:0", base="", age_s=3600, state={})
    make_node("gpu-down", status=Node.DOWN, device="cpu", base="", state={})

    response = Client().get("/readyz")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"] == {"database": {"ok": True}, "redis": {"ok": True}}
    assert body["runtime"]["nodes_up"] == 1
    [node] = body["runtime"]["nodes"]
    assert (node["name"], node["device"], node["base_model"], node["model_loaded"]) == (
        "gpu-a", "cuda:0", "smollm2-135m-instruct", True)
    assert node["last_heartbeat_at"]
    assert "no-cache" in response["Cache-Control"]


def test_readyz_with_no_nodes_is_still_ready(db):
    body = Client().get("/readyz").json()
    assert body["status"] == "ready" and body["runtime"] == {"nodes_up": 0, "nodes": []}


def test_readyz_is_503_when_redis_does_not_answer(db, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["redis"]["ok"] is False and body["checks"]["redis"]["error"]


# Schema, docs, admin


@pytest.mark.parametrize("kwargs", [{"HTTP_ACCEPT": "application/vnd.oai.openapi+json"}, {"format": "json"}])
def test_openapi_schema_lists_the_api(db, kwargs):
    path = "/api/schema/?format=json" if kwargs.pop("format", None) else "/api/schema/"
    response = Client().get(path, **kwargs)

    assert response.status_code == 200, response.content[:300]
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "VAJRA API"
    for route in ("/api/v1/keys", "/api/v1/keys/{prefix}", "/api/v1/members", "/api/v1/invites",
                  "/api/v1/tenants", "/api/v1/signup", "/api/v1/me"):
        assert route in schema["paths"], route
    assert set(schema["paths"]["/api/v1/keys"]) >= {"get", "post"}


def test_api_docs_page(db):
    response = Client().get("/api/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    # The dashboard's page (its stylesheet, a way back), Swagger UI and its start-up script from static files (the
    # CSP allows no inline script), which reads the schema's URL from the page.
    assert "/static/vajra/app.css" in html and 'class="brand" href="/"' in html
    assert "swagger-ui-bundle.js" in html and '<script src="/static/vajra/api-docs.js" defer></script>' in html
    assert 'data-schema-url="/api/schema/"' in html
    assert "/v1/models/SmolLM2-135M-Instruct/infer" in html and "OpenAI(base_url=" in html


def test_admin_redirects_anonymous_to_its_login(db):
    response = Client().get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/") and "next=/admin/" in response["Location"]


@pytest.mark.parametrize("path, status", [("/api/v1/nope", 404), ("/api/v1/me", 401)])
def test_the_request_id_is_in_the_log_line_of_an_error(db, caplog, path, status):
    """Django logs 4xx responses after the middleware has returned; the line must still carry the id."""
    with caplog.at_level("WARNING", logger="django.request"):
        response = APIClient().get(path, HTTP_X_REQUEST_ID="trace-for-the-logs")
    assert response.status_code == status
    [record] = [r for r in caplog.records if r.name == "django.request"]

    RequestIdLogFilter().filter(record)  # the filter on VAJRA's log handler (settings.LOGGING)

    assert record.request_id == "trace-for-the-logs"
