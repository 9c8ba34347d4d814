"""Schemathesis over the whole OpenAPI schema (/api/schema/, every /api and /v1 operation), in process through the
WSGI application, as a tenant owner's full-scope API key: valid and invalid inputs, a bounded number of examples
per operation, and no server error. No runtime node runs, so inference answers 503 ``no_capacity`` (retry later):
that answer is the intended one and the only 5xx allowed."""

import json
from datetime import timedelta

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from adapters.models import Adapter, AdapterVersion, BaseModel
from serving.models import InferenceRequest
from tenants.models import Invite
from tests.factories import create_key, make_job, make_request
from training.models import TrainingJob
from vajra.wsgi import application

pytestmark = pytest.mark.slow

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


TOKEN = "c" * 32  # a CSRF secret for the session pass (cookie and header agree)


@pytest.fixture
def world(alice, acme, bob, charlie):
    """Rows for the path parameters to name (half the cases name one, half are random): a base model, alice's ready
    adapter, a dataset and training job, a request, bob's membership, an invite and a key."""
    base = BaseModel.objects.create(name="tiny-llama", context_length=2048)
    adapter = Adapter.objects.create(tenant=acme, base_model=base, name="support-bot")
    adapter.current_version = AdapterVersion.objects.create(
        adapter=adapter, number=1, status=AdapterVersion.READY, sha256="0" * 64, size_bytes=1, rank=8, alpha=16,
        dtype="float32", target_modules=["q_proj"], storage_key="acme/support-bot")
    adapter.save()
    job = make_job(acme, adapter, job_id="ftjob_schemathesis", status=TrainingJob.SUCCEEDED)
    request = make_request(acme, base, request_id="req_" + "0" * 32, tier=Adapter.COLD, status=InferenceRequest.FAILED)
    key, secret = create_key(alice, acme)
    invite = Invite.objects.create(tenant=acme, email="dave@example.test", role="developer", invited_by=alice,
                                   token_hash="f" * 64, expires_at=timezone.now() + timedelta(days=7))
    client = Client()
    client.force_login(alice)
    return {
        "secret": secret, "session": client.cookies["sessionid"].value,
        "known": {"model_id": base.name, "name": adapter.name, "tenant_id": acme.slug, "job_id": job.id,
                  "dataset_id": job.dataset_id, "request_id": request.id, "member_id": bob.memberships.get().pk,
                  "invite_id": invite.pk, "prefix": key.prefix},
    }


def credentials(world, session):
    if session:
        return {"Cookie": f"sessionid={world['session']}; csrftoken={TOKEN}", "X-CSRFToken": TOKEN}
    return {"Authorization": f"Bearer {world['secret']}"}


def intended(response):
    if response.status_code < 500:
        return True
    try:
        code = json.loads(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return False
    return (response.status_code, code) in INTENDED_5XX


def server_errors(operation, mode, world, session=False):
    """The unintended 5xx answers to MAX_EXAMPLES generated cases of one operation (Hypothesis stops at the first
    and shrinks it): [(label, message)]."""

    @given(case=operation.as_strategy(generation_mode=mode), known=st.booleans())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True, phases=[Phase.explicit, Phase.generate])
    def run(case, known):
        if known and case.path_parameters and operation.path != "/v1/requests/{request_id}/events":
            # (a known request's event stream would be read to its end, which a request never run has not)
            case.path_parameters = {name: world["known"].get(name, value)
                                    for name, value in case.path_parameters.items()}
        if case.media_type == "multipart/form-data" and not isinstance(case.body, dict):
            return  # a multipart body that is not an object cannot be sent (werkzeug's builder takes a mapping)
        case.headers = {**(case.headers or {}), **credentials(world, session)}
        response = case.call()
        if not intended(response):
            case.validate_response(response, checks=[not_a_server_error])

    try:
        run()
    except Exception as exc:  # noqa: BLE001 - every failure is reported, with the operation that caused it
        return [(f"{operation.label} [{mode.value}{', session' if session else ''}]", str(exc)[:2000])]
    return []


def test_no_server_errors(api_schema, world):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    for must in ("POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models",
                 "POST /v1/models/{model_id}/infer", "GET /v1/requests/{request_id}/events",
                 "GET /v1/usage/{tenant_id}/metrics", "POST /api/v1/signup"):
        assert must in labels, sorted(labels)
    failures = []
    for operation in operations:
        # /api also as alice's dashboard session: keys, members, invites and the audit log take no API key
        for session in (False, True) if operation.path.startswith("/api/") else (False,):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                failures += server_errors(operation, mode, world, session)
    assert not failures, "\n\n".join(f"{label}: {message}" for label, message in failures)
