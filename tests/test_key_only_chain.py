"""Views that take API keys alone (serving.v1.api_view) are served without the browser's middlewares
(vajra.page_middleware): no session read or cookie, no CSRF, no signed-in user; every other view, the API's
session-authenticated ones included, keeps the whole chain. Through the ASGI application daphne serves."""

import json

import pytest
from asgiref.sync import SyncToAsync, async_to_sync
from channels.testing import HttpCommunicator

from tests.factories import session_client
from vajra.asgi import application
from vajra.page_middleware import INLINE, PAGES_ONLY, KeyOnlyHandler, KeyOnlyRouter


@pytest.mark.parametrize("path, key_only", [
    ("/v1/models/smollm2-135m-instruct/infer", True), ("/v1/chat/completions", True), ("/v1/completions", True),
    ("/v1/models", True), ("/v1/models/acme-bot", True), ("/v1/requests/req_1/events", True),
    # session-authenticated too (the dashboard's pages call them), and pages, static files, unknown paths
    ("/v1/models/smollm2-135m-instruct/train", False), ("/v1/training/jobs", False), ("/v1/files", False),
    ("/v1/usage/acme/metrics", False), ("/api/v1/me", False), ("/", False), ("/login/", False), ("/healthz", False),
    ("/static/vajra/app.css", False), ("/v1/nowhere", False), ("/v1/models/a/b/c", False),
])
def test_which_views_take_keys_only(path, key_only):
    assert KeyOnlyRouter.takes_keys_only({"path": path}) is key_only
    assert KeyOnlyRouter.takes_keys_only({"path": f"/prefix{path}", "root_path": "/prefix"}) is key_only


def test_the_browsers_middlewares_left_out_are_in_middleware(settings):
    """A name here that MIDDLEWARE no longer holds (a renamed or replaced middleware) would keep the new one in the
    key-only chain unnoticed."""
    assert PAGES_ONLY <= set(settings.MIDDLEWARE)
    assert set(INLINE) <= set(settings.MIDDLEWARE) - PAGES_ONLY


def get(path, headers=()):
    communicator = HttpCommunicator(application, "GET", path, headers=[(b"host", b"testserver"), *headers])
    response = async_to_sync(communicator.get_response)()
    return response["status"], {name.lower(): value for name, value in response["headers"]}, response["body"]


@pytest.mark.django_db(transaction=True)
def test_a_key_only_view_runs_without_the_browsers_middlewares(alice_key):
    status, headers, body = get("/v1/models", [(b"authorization", f"Bearer {alice_key[1]}".encode())])
    assert status == 200, body
    assert json.loads(body)["object"] == "list"
    assert headers[b"x-request-id"].startswith(b"req_")  # the platform's own middlewares run
    assert headers[b"x-content-type-options"] == b"nosniff"  # and Django's SecurityMiddleware
    assert b"x-frame-options" not in headers and b"set-cookie" not in headers and b"vary" not in headers
    assert headers[b"content-length"] == str(len(body)).encode()  # whole bodies keep their length


@pytest.mark.django_db(transaction=True)
def test_a_key_only_chain_takes_no_thread_trip_for_a_middleware(alice_key, monkeypatch):
    """Every middleware of the shorter chain runs on the event loop: Django would run a MiddlewareMixin hook on a
    thread, one trip there and back per hook."""
    trips = []
    original = SyncToAsync.__call__

    def counted(self, *args, **kwargs):
        trips.append(getattr(self.func, "__qualname__", repr(self.func)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    status, headers, body = get("/v1/models", [(b"authorization", f"Bearer {alice_key[1]}".encode())])
    assert status == 200, body
    assert trips and not [trip for trip in trips if "Middleware" in trip], trips
    assert headers[b"x-content-type-options"] == b"nosniff" and headers[b"referrer-policy"]


@pytest.mark.django_db(transaction=True)
def test_the_inline_security_middleware_still_redirects_to_https(settings, alice_key):
    settings.SECURE_SSL_REDIRECT = True
    communicator = HttpCommunicator(KeyOnlyHandler(), "GET", "/v1/models", headers=[
        (b"host", b"testserver"), (b"authorization", f"Bearer {alice_key[1]}".encode())])
    response = async_to_sync(communicator.get_response)()
    headers = {name.lower(): value for name, value in response["headers"]}
    assert response["status"] == 301 and headers[b"location"] == b"https://testserver/v1/models"


@pytest.mark.django_db(transaction=True)
def test_a_key_only_view_still_refuses_a_nul_in_its_path(alice_key):
    status, headers, body = get("/v1/models/a\x00b", [(b"authorization", f"Bearer {alice_key[1]}".encode())])
    assert status == 400 and json.loads(body)["error"]["code"] == "null_character"
    assert headers[b"content-length"] == str(len(body)).encode()


@pytest.mark.django_db(transaction=True)
def test_a_session_is_no_credential_for_a_key_only_view_and_still_one_for_the_apis_session_views(alice):
    cookie = f"sessionid={session_client(alice).cookies['sessionid'].value}".encode()
    status, _, body = get("/v1/models", [(b"cookie", cookie)])
    error = json.loads(body)["error"]
    assert status == 401 and error["code"] == "not_authenticated", body
    assert error["message"] == ("No API key was sent; this endpoint takes API keys, not a signed-in session. "
                                "Send 'Authorization: Bearer <api key>'.")
    status, headers, body = get("/v1/training/jobs", [(b"cookie", cookie)])
    assert status == 200, body
    assert headers[b"x-frame-options"] == b"DENY" and b"Cookie" in headers[b"vary"]


@pytest.mark.django_db(transaction=True)
def test_a_page_keeps_the_whole_chain():
    status, headers, body = get("/login/")
    assert status == 200
    assert headers[b"x-frame-options"] == b"DENY" and headers[b"content-security-policy"]
    assert b"csrftoken=" in headers[b"set-cookie"] and b"csrfmiddlewaretoken" in body

