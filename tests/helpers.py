"""What many tests check or capture: the one error shape, the database left untouched by a refusal, the Celery
messages the web sends, and Django started in a fresh process with a given environment."""

import json
import os
import subprocess
import sys

from django.apps import apps

from tests.processes import ROOT


def assert_error(response, status, code=None, param=None):
    """The one error shape, the status, and optionally the machine-readable code and param."""
    assert response.status_code == status, (response.status_code, getattr(response, "content", b"")[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    if param is not None:
        assert body["error"]["param"] == param, body
    assert response.headers.get("x-request-id"), "every response carries x-request-id"
    return body["error"]


def db_snapshot():
    """Every row of VAJRA's own models, to assert that a refused request wrote nothing.

    ``last_used_at`` is left out: presenting a valid key records its use even when the request is then
    refused for a missing scope, which is what an operator wants to see. Runtime nodes are left out too:
    a live node's heartbeats rewrite its row every second, whatever the request did.
    """
    snapshot = {}
    for label in ("tenants", "adapters", "fleet", "serving", "training", "billing"):
        for model in apps.get_app_config(label).get_models():
            if model._meta.label == "fleet.Node":
                continue
            rows = list(model.objects.order_by("pk").values())
            for row in rows:
                row.pop("last_used_at", None)
            snapshot[model._meta.label] = rows
    return snapshot


def capture_sent(monkeypatch):
    """Every Celery message the control plane sends (name, args, options), and every revoke, instead of going to
    the broker."""
    from vajra.celery import app

    messages = []
    monkeypatch.setattr(app, "send_task", lambda name, args=None, **kw: messages.append((name, args, kw)))
    monkeypatch.setattr(app.control, "revoke", lambda task_id, **kw: messages.append(("revoke", [task_id], kw)))
    return messages


def run_django(code, **env):
    """Runs ``code`` after django.setup() in a fresh interpreter whose environment has no DJANGO_, VAJRA_ or CELERY_
    variable (nor STRIPE_) but ``env``: how settings behave at start."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "VAJRA_", "CELERY_", "STRIPE_"))}
    return subprocess.run([sys.executable, "-c", f"import django; django.setup(); {code}"], cwd=ROOT,
                          env={**base, "DJANGO_SETTINGS_MODULE": "vajra.settings", **env},
                          capture_output=True, text=True, timeout=120)


def refused(unchanged_db, sent, call, status, code=None, param=None, extra=()):
    """The refusal of ``call()``: its status and error shape (plus ``extra`` fields), nothing written (the
    ``unchanged_db`` fixture), no task sent (``sent``, from capture_sent)."""
    with unchanged_db():
        response = call()
    if extra:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code", *extra}, error
        assert (response.status_code, error["code"], error["param"]) == (status, code, param), error
    else:
        error = assert_error(response, status, code=code, param=param)
    assert sent == [], sent
    return error


def bearer_client(secret):
    """Django's test client presenting an API key (``Authorization: Bearer``) on every request."""
    from django.test import Client

    return Client(headers={"Authorization": f"Bearer {secret}"})


def post_json(client, path, body):
    return client.post(path, json.dumps(body), content_type="application/json")


def sse_data(response):
    """The data lines of a streamed (server-sent events) Django response."""
    lines = b"".join(response).decode().split("\n\n")
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def sign_in(page, base_url, email, next_path="/playground/"):
    """Signs ``email`` in through the login page in the browser (``page``, Playwright) and waits for ``next_path``."""
    from playwright.sync_api import expect

    from tests.factories import PASSWORD

    page.goto(f"{base_url}/login/?next={next_path}")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base_url}{next_path}")


ADAPTERS_URL = "/api/v1/adapters"


def as_files(files):
    """[(name, bytes)] as the uploaded files of a multipart body."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    return [SimpleUploadedFile(name, data) for name, data in files]


def upload_adapter(client, files, *, name="support-bot", base_model="tiny-llama", **fields):
    """POST an adapter archive (or loose files) to the adapters API."""
    return client.post(ADAPTERS_URL, {"name": name, "base_model": base_model, **fields, "file": as_files(files)},
                       format="multipart")
