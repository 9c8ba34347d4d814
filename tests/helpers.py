"""What many tests check or capture: the one error shape, an answer as the OpenAPI schema documents it, the database
left untouched by a refusal, the Celery messages the web sends, and Django started in a fresh process with a given
environment."""

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


def api_schema():
    """The OpenAPI schema as /api/schema/ serves it (drf-spectacular's generator, public)."""
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


def closed(node):
    """A schema read strictly: an object that lists its properties takes no others (unless it says so), so a field
    an answer carries and the schema does not name fails; ``nullable`` beside a ``$ref`` (drf-spectacular's
    ``allOf: [$ref], nullable: true``) also takes null."""
    if isinstance(node, list):
        return [closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: closed(value) for key, value in node.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if out.get("nullable") is True and "type" not in out:
        rest = {key: value for key, value in out.items() if key != "nullable"}
        out = {"anyOf": [rest, {"enum": [None]}]}
    return out


def sse_blocks(text):
    """The events of a text/event-stream body as the schema documents them: each block's ``event``, ``id`` and
    ``data`` (parsed as JSON where it is JSON, ``[DONE]`` as is); comment-only blocks (keep-alives) are left out."""
    events = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        if "data" in fields:
            try:
                fields["data"] = json.loads(fields["data"])
            except ValueError:
                pass
            events.append(fields)
    return events


def assert_documented(schema, method, path, response):
    """``response`` (Django's test client's or httpx's) is an answer its operation documents: its status is listed,
    its media type is one that status has, and its body (each event of a stream) is valid against that media type's
    schema, read strictly (``closed``). ``path`` is the schema's path, e.g. ``/v1/requests/{request_id}``. Returns
    the parsed body (the list of events for a stream)."""
    from openapi_schema_validator import OAS30ReadValidator

    operation = schema["paths"][path][method.lower()]
    status = str(response.status_code)
    assert status in operation["responses"], (f"{method} {path} answered {status}, which its operation does not "
                                              f"document ({sorted(operation['responses'])})", response.content[:500])
    documented = operation["responses"][status]
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    if status == "204" or "content" not in documented:
        assert not response.content, (method, path, status, response.content[:200])
        return None
    assert media_type in documented["content"], (method, path, status, media_type, sorted(documented["content"]))
    shape = documented["content"][media_type].get("schema")
    if media_type == "text/event-stream":
        body = instances = sse_blocks(response.content.decode())
        assert body, (method, path, "an empty stream")
    elif media_type == "application/json":
        body = json.loads(response.content)
        instances = [body]
    else:  # a file (zip, PDF): its media type is the contract
        return b"".join(response.streaming_content) if getattr(response, "streaming", False) else response.content
    validator = OAS30ReadValidator({"allOf": [closed(shape)], "components": closed(schema["components"])})
    for instance in instances:
        problems = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        assert not problems, (f"{method} {path} {status} ({media_type}) does not match its schema: "
                              + "; ".join(f"{list(p.absolute_path)}: {p.message[:300]}" for p in problems[:5]),
                              instance)
    return body
