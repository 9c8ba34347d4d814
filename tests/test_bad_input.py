"""Bad input is a 400 (or 415) that names what is wrong and says how to fix it, and writes nothing."""

import json

import pytest
from rest_framework.test import APIClient

from tests.factories import PASSWORD
from tests.helpers import assert_error

SIGNUP = {"email": "erin@example.test", "password": PASSWORD, "tenant_name": "Erin's Lab",
          "tenant_slug": "erin"}

# (path, a valid body) for every endpoint that takes one, as alice
ALICE_POSTS = [
    ("/api/v1/keys", {"name": "ci", "scopes": ["infer"]}),
    ("/api/v1/invites", {"email": "dave@example.test", "role": "developer"}),
    ("/api/v1/tenants", {"name": "Acme Labs", "slug": "acme-labs"}),
]


@pytest.fixture
def post(alice_client):
    """Posts as alice, except to signup, which takes no credentials."""

    def send(path, data, content_type="application/json"):
        client = APIClient() if path == "/api/v1/signup" else alice_client
        body = data if isinstance(data, str) else json.dumps(data)
        return client.generic("POST", path, body, content_type=content_type)

    return send


ENDPOINTS = [path for path, _ in ALICE_POSTS] + ["/api/v1/signup"]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("body", ['{"name": "ci",', "{'single': 'quotes'}", "not json", '{"a": 1} trailing'])
def test_malformed_json_is_400(post, unchanged_db, path, body):
    with unchanged_db():
        error = assert_error(post(path, body), 400, code="parse_error")
    assert error["type"] == "invalid_request_error"
    assert "JSON parse error" in error["message"] and "Send a valid JSON object" in error["message"]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("content_type, body", [
    ("application/x-www-form-urlencoded", "name=ci&scopes=infer"),
    ("text/plain", '{"name": "ci", "scopes": ["infer"]}'),
    ("multipart/form-data; boundary=xyz",
     '--xyz\r\nContent-Disposition: form-data; name="name"\r\n\r\nci\r\n--xyz--\r\n'),
])
def test_wrong_content_type_is_415(post, unchanged_db, path, content_type, body):
    with unchanged_db():
        error = assert_error(post(path, body, content_type=content_type), 415, code="unsupported_media_type")
    assert error["type"] == "invalid_request_error"
    assert "Content-Type: application/json" in error["message"]


@pytest.mark.parametrize("path, valid", ALICE_POSTS + [("/api/v1/signup", SIGNUP)])
def test_unknown_fields_are_named(post, unchanged_db, path, valid):
    with unchanged_db():
        response = post(path, dict(valid, zebra=1, apple=2))
    error = assert_error(response, 400, code="unknown_field", param="apple")
    assert "apple, zebra" in error["message"]
    for allowed in valid:
        assert allowed in error["message"], "the message lists the fields that are allowed"


def test_unknown_field_on_patch_is_named(alice_client, bob, unchanged_db):
    member = bob.memberships.get()
    with unchanged_db():
        response = alice_client.patch(f"/api/v1/members/{member.pk}", {"role": "admin", "tenant": 2},
                                      format="json")
    error = assert_error(response, 400, code="unknown_field", param="tenant")
    assert "Allowed fields: role" in error["message"]


@pytest.mark.parametrize("path, field, limit", [
    ("/api/v1/keys", "name", 50),
    ("/api/v1/tenants", "slug", 40),
    ("/api/v1/tenants", "name", 100),
    ("/api/v1/invites", "email", 254),
    ("/api/v1/signup", "email", 254),
    ("/api/v1/signup", "tenant_slug", 40),
    ("/api/v1/signup", "tenant_name", 100),
    ("/api/v1/signup", "name", 120),
    ("/api/v1/signup", "password", 128),
])
def test_over_long_strings_are_named(post, unchanged_db, path, field, limit):
    valid = dict(ALICE_POSTS).get(path, SIGNUP)
    long = "a" * (limit + 1)
    if field == "email":
        long = "a" * (limit - len("@example.test") + 1) + "@example.test"
    with unchanged_db():
        error = assert_error(post(path, dict(valid, **{field: long})), 400, param=field)
    assert error["message"].startswith(field) and f"no more than {limit} characters" in error["message"]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("body", ['[{"name": "ci"}]', "[]", '"a string"', "42", "null"])
def test_a_body_that_is_not_an_object_is_400(post, unchanged_db, path, body):
    with unchanged_db():
        error = assert_error(post(path, body), 400)
    assert "JSON object" in error["message"], error


@pytest.mark.parametrize("field, value, expected", [
    ("name", "", "blank"),
    ("name", None, "null"),
    ("scopes", {"infer": True}, "list"),
    ("expires_at", "next tuesday", "Datetime has wrong format"),
])
def test_wrong_types_and_values_are_named(alice_client, unchanged_db, field, value, expected):
    body = dict(ALICE_POSTS[0][1], **{field: value})
    with unchanged_db():
        error = assert_error(alice_client.post("/api/v1/keys", body, format="json"), 400, param=field)
    assert expected in error["message"]


def test_invalid_email_is_named(post, unchanged_db):
    with unchanged_db():
        error = assert_error(post("/api/v1/invites", {"email": "not-an-email", "role": "developer"}), 400,
                             param="email")
    assert "valid email" in error["message"]
