"""Rollback: making an earlier version of an adapter current again, by one API call or the adapter page's button;
the refusals change nothing and send nothing, and charlie (contoso) never reaches acme's adapter."""

import pytest

from adapters.models import AdapterVersion
from tests.factories import make_adapter, store_version
from tests.helpers import capture_sent, refused


@pytest.fixture
def sent(monkeypatch):
    return capture_sent(monkeypatch)


@pytest.fixture
def two_versions(acme, base, adapter_storage):
    adapter = make_adapter(acme, base)
    store_version(adapter, adapter_storage, 1)
    store_version(adapter, adapter_storage, 2)
    return adapter


def rollback(client, version, name="support-bot"):
    return client.post(f"/api/v1/adapters/{name}/rollback", {"version": version}, format="json")


def test_rollback_is_one_call(api, two_versions, django_capture_on_commit_callbacks, sent):
    with django_capture_on_commit_callbacks(execute=True):
        response = rollback(api, 1)
    assert response.status_code == 200, response.json()
    assert response.json()["model"] == "support-bot@v1" and response.json()["current_version"]["number"] == 1
    two_versions.refresh_from_db()
    assert two_versions.current_version.number == 1
    assert sent == [], "a cold adapter lives in object storage: nothing to move on the nodes"
    assert rollback(api, 2).status_code == 200  # and forward again


def test_rollback_refusals(api, charlie_api, two_versions, acme, unchanged_db, sent):
    AdapterVersion.objects.filter(adapter=two_versions, number=1).update(status=AdapterVersion.FAILED)
    refused(unchanged_db, sent, lambda: rollback(api, 2), 409, code="already_current", param="version")
    refused(unchanged_db, sent, lambda: rollback(api, 1), 409, code="version_not_ready", param="version")
    refused(unchanged_db, sent, lambda: rollback(api, 9), 404)
    refused(unchanged_db, sent, lambda: rollback(api, 0), 400, param="version")
    refused(unchanged_db, sent, lambda: rollback(api, 1, name="nope"), 404)
    refused(unchanged_db, sent, lambda: rollback(charlie_api, 1), 404)


def test_rollback_button(alice_client, two_versions, django_capture_on_commit_callbacks, sent):
    page = alice_client.get("/adapters/support-bot/").content.decode()
    assert "Make v1 current" in page and "Make v2 current" not in page, "only the versions that are not current"
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post("/adapters/support-bot/rollback/", {"version": "1"})
    assert response.status_code == 302 and response["Location"] == "/adapters/support-bot/"
    two_versions.refresh_from_db()
    assert two_versions.current_version.number == 1
    page = alice_client.get("/adapters/support-bot/").content.decode()
    assert "Make v2 current" in page and "Roll back" not in page, "a newer version is made current, not rolled back to"


def test_rollback_button_refusals(alice_client, charlie_client, two_versions, unchanged_db, sent):
    with unchanged_db():
        assert alice_client.post("/adapters/support-bot/rollback/", {"version": "2"}).status_code == 409
        assert alice_client.post("/adapters/support-bot/rollback/", {"version": "x"}).status_code == 400
        assert charlie_client.post("/adapters/support-bot/rollback/", {"version": "1"}).status_code == 404
