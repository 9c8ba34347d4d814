from tests.factories import key_client
from tests.helpers import assert_error


def test_me_with_key(alice_key):
    _, secret = alice_key
    response = key_client(secret).get("/api/v1/me")
    assert response.status_code == 200, response.content
    assert response.json()["tenant"]["slug"] == "acme"


def test_wrong_key(db, unchanged_db):
    with unchanged_db():
        assert_error(key_client("nope.nope").get("/api/v1/me"), 401, code="invalid_api_key")
