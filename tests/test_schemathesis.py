"""Schemathesis over the whole OpenAPI schema (/api/schema/, every /api and /v1 operation), in process through the
WSGI application, as a tenant owner's full-scope API key: valid and invalid inputs, a bounded number of examples
per operation, and no server error. No runtime node runs, so inference answers 503 ``no_capacity`` (retry later):
that answer is the intended one and the only 5xx allowed."""

import json

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.conftest import create_key
from vajra.wsgi import application

pytestmark = pytest.mark.usefixtures("fast_password_hashing")

MAX_EXAMPLES = 12  # per operation: ~35 operations, about a minute on two cores
INTENDED_5XX = {(503, "no_capacity")}  # inference with no node to run it; clients retry after Retry-After


@pytest.fixture
def api_schema(db):
    # As Django's test client: the WSGI handler would close the test's database connection after each request.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
        yield schema
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def owner_key(alice, acme, bob):
    return create_key(alice, acme)[1]


def intended(response):
    if response.status_code < 500:
        return True
    try:
        code = json.loads(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return False
    return (response.status_code, code) in INTENDED_5XX


def server_errors(operation, mode, key):
    """The unintended 5xx answers to MAX_EXAMPLES generated cases of one operation (Hypothesis stops at the first
    and shrinks it): [(label, status, body)]."""
    found = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True, phases=[Phase.explicit, Phase.generate])
    def run(case):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {key}"}
        response = case.call()
        if not intended(response):
            case.validate_response(response, checks=[not_a_server_error])

    try:
        run()
    except Exception as exc:  # noqa: BLE001 - every failure is reported, with the operation that caused it
        found.append((f"{operation.label} [{mode.value}]", str(exc)[:2000]))
    return found


def test_no_server_errors(api_schema, owner_key):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    for must in ("POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models",
                 "POST /v1/models/{model_id}/infer", "GET /v1/requests/{request_id}/events",
                 "GET /v1/usage/{tenant_id}/metrics", "POST /api/v1/signup"):
        assert must in labels, sorted(labels)
    failures = [failure for operation in operations for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
                for failure in server_errors(operation, mode, owner_key)]
    assert not failures, "\n\n".join(f"{label}: {message}" for label, message in failures)
