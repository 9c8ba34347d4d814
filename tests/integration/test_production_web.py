"""Web as `make up` runs it: daphne with the Django settings `manage.py up` gives its processes (DEBUG off, a
secret key of the checkout's own, plain HTTP), after collectstatic. Static files come from the app itself
(WhiteNoise), a missing page is the styled 404 rather than Django's debug page, and the API answers in JSON."""

import subprocess
import sys

import httpx
import pytest

from tests.processes import ROOT, process_env, start_daphne
from vajra.management.commands.up import platform_env

pytestmark = pytest.mark.slow


@pytest.fixture
def production_web(transactional_db, tmp_path):
    static_root = tmp_path / "static"
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, check=True,
                   env=process_env(DJANGO_STATIC_ROOT=str(static_root)), timeout=120)
    env = platform_env(debug=False, host="127.0.0.1", var=tmp_path)
    assert env["DJANGO_DEBUG"] == "false"
    proc, url = start_daphne(tmp_path / "daphne.log", DJANGO_STATIC_ROOT=str(static_root), **env)
    yield url, static_root
    proc.stop()


def test_static_files_are_served_and_errors_are_not_debug_pages(production_web):
    url, static_root = production_web
    css = httpx.get(f"{url}/static/vajra/app.css", timeout=10)
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert css.content == (static_root / "vajra" / "app.css").read_bytes()
    admin_css = httpx.get(f"{url}/static/admin/css/base.css", timeout=10)  # an app's static files were collected
    assert admin_css.status_code == 200

    page = httpx.get(f"{url}/no-such-page/", timeout=10)
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "Not found" in page.text and "/static/vajra/app.css" in page.text
    assert "Using the URLconf" not in page.text and "DEBUG = True" not in page.text
    assert page.headers["x-request-id"]

    api = httpx.get(f"{url}/api/v1/no-such-thing", timeout=10)
    assert api.status_code == 404 and api.json()["error"]["code"] == "unknown_route"
    assert api.headers["x-request-id"]
    login = httpx.get(f"{url}/login/", timeout=10)  # plain HTTP: no redirect to https
    assert login.status_code == 200
