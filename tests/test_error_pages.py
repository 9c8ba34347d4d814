"""With DEBUG off (how `make up` runs): the dashboard's errors are its own styled pages, never Django's debug
pages, and /api and /v1 answer in the one error shape with a request id. This module is also the URLConf of
its tests (VAJRA's routes plus views that fail on purpose)."""

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import path
from rest_framework.test import APIClient

from tests.helpers import assert_error
from vajra.urls import handler400, handler403, handler404, handler500  # noqa: F401 (Django reads them here)
from vajra.urls import urlpatterns as vajra_urlpatterns


def page_that_breaks(request):
    raise RuntimeError("a bug in a page")


def page_that_refuses(request):
    raise PermissionDenied("Only the tenant's owners may open this page.")


urlpatterns = [
    path("test/broken-page/", page_that_breaks),
    path("test/refused-page/", page_that_refuses),
    path("api/v1/test/broken", page_that_breaks),
    *vajra_urlpatterns,
]

pytestmark = [pytest.mark.urls("tests.test_error_pages"), pytest.mark.django_db]

DEBUG_PAGE_MARKS = [b"Using the URLconf", b"DEBUG = True", b"Traceback", b"technical_500", b"Request Method:"]


@pytest.fixture(autouse=True)
def debug_off(settings):
    settings.DEBUG = False


def assert_styled_page(response, status, heading):
    assert response.status_code == status
    assert response["Content-Type"].startswith("text/html")
    assert response["x-request-id"]
    body = response.content
    assert heading.encode() in body
    assert b"/static/vajra/app.css" in body and b'class="brand"' in body  # the dashboard's look
    for mark in DEBUG_PAGE_MARKS:
        assert mark not in body, mark


def test_an_unknown_page_is_the_styled_404():
    assert_styled_page(Client().get("/no-such-page/"), 404, "Not found")


def test_a_bug_in_a_page_is_the_styled_500():
    response = Client(raise_request_exception=False).get("/test/broken-page/")
    assert_styled_page(response, 500, "Something went wrong on our side")
    assert b"a bug in a page" not in response.content


def test_a_refused_page_is_the_styled_403():
    response = Client().get("/test/refused-page/")
    assert_styled_page(response, 403, "Not allowed")
    assert b"Only the tenant&#x27;s owners may open this page." in response.content


def test_a_host_not_allowed_is_the_styled_400():
    assert_styled_page(Client().get("/", HTTP_HOST="evil.example"), 400, "Bad request")


@pytest.mark.parametrize("path", ["/api/v1/no-such-thing", "/v1/no-such-thing"])
def test_an_unknown_api_route_is_json_404(path):
    error = assert_error(APIClient().get(path), 404, code="unknown_route")
    assert path in error["message"]


def test_a_bug_behind_the_api_is_json_500_with_a_request_id():
    response = APIClient(raise_request_exception=False).get("/api/v1/test/broken")
    error = assert_error(response, 500, code="server_error")
    assert "x-request-id" in error["message"] and "a bug" not in error["message"]


def test_a_dashboard_form_without_its_csrf_token_is_the_styled_403():
    response = Client(enforce_csrf_checks=True).post("/login/", {"email": "a@b.test", "password": "x"})
    assert_styled_page(response, 403, "This form could not be accepted")
    assert b"CSRF verification failed" not in response.content
