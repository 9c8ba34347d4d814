"""Real answers match the schema (tests.helpers.assert_documented: the status is documented, the body is valid against
that status's schema with no field the schema does not name): every operation's refusal without credentials, and an
answer of every operation that needs no runtime node, in process as alice (her session or her full-scope key), error
bodies included. What needs a node (inference answers and their streams) is checked against daphne, a tiny-llama node
and the control worker in tests/integration/test_openapi_live.py; every operation is in one set or the other."""

import json
import re

import pytest
from django.test import Client

from adapters.models import Adapter, BaseModel
from billing.plans import ensure_default_plan
from serving.models import InferenceRequest
from tenants.models import Invite
from tests.billing_helpers import close, invoice_of, usage
from tests.factories import (
    TRAINING_HP,
    create_key,
    jsonl,
    key_client,
    make_adapter,
    make_base,
    make_dataset,
    make_job,
    make_request,
    make_version,
    record_node_final,
    session_client,
    store_version,
)
from tests.helpers import api_schema, as_files, assert_documented
from training.models import TrainingCheckpoint, TrainingEvent, TrainingJob

# Operations whose 2xx answer needs a runtime node: tests/integration/test_openapi_live.py samples them.
NEEDS_A_NODE = {("post", "/v1/models/{model_id}/infer"), ("post", "/v1/chat/completions"),
                ("post", "/v1/completions"), ("get", "/v1/requests/{request_id}/events")}
# Operations whose 2xx answer is a file (its media type is the contract) or that need a platform's setup of their own
# (a base-model import from disk): their refusals are checked here, their success in their own tests.
ANSWERED_ELSEWHERE = {("get", "/v1/training/jobs/{job_id}/checkpoints/{step}/download"),
                      ("post", "/api/v1/base-models/imports"), ("get", "/api/v1/base-models/imports/{import_id}"),
                      ("post", "/api/v1/adapters"), ("post", "/api/v1/adapter-imports"),
                      ("get", "/api/v1/adapter-imports/{import_id}")}
METHODS = ("get", "post", "put", "patch", "delete")
# A case that names another row than the route's parameter says: the route it is
TEMPLATES = {"/v1/models/{name}": "/v1/models/{model_id}",
             "/api/v1/billing/invoices/inv_nothing": "/api/v1/billing/invoices/{invoice_id}",
             "/api/v1/adapters/{files_bot}/versions/{number}/download":
                 "/api/v1/adapters/{name}/versions/{number}/download",
             "/v1/training/jobs/{queued_job_id}/cancel": "/v1/training/jobs/{job_id}/cancel",
             "/api/v1/datasets/{spare_dataset_id}": "/api/v1/datasets/{dataset_id}",
             "/v1/fine_tuning/jobs/{queued_ft_id}/cancel": "/v1/fine_tuning/jobs/{job_id}/cancel",
             "/v1/files/{spare_file_id}": "/v1/files/{file_id}"}


@pytest.fixture(scope="module")
def schema(django_db_blocker):
    with django_db_blocker.unblock():
        return api_schema()


def operations(schema):
    return [(method, path) for path, item in schema["paths"].items() for method in item if method in METHODS]


def url(path, **known):
    return re.sub(r"{(\w+)}", lambda m: str(known.get(m.group(1), 1)), path)


def call(client, method, path, body=None, **known):
    """The answer of ``method path`` (ids from ``known``), with ``body`` as JSON."""
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} if body is not None else {}
    return getattr(client, method)(url(path, **known), **kwargs)


def test_every_operation_refuses_a_caller_without_credentials_as_documented(schema, db):
    client = Client()
    for method, path in operations(schema):
        response = call(client, method, path, {} if method in ("post", "put", "patch") else None)
        expected = {400} if path == "/api/v1/signup" else {401}
        assert response.status_code in expected, (method, path, response.status_code, response.content[:300])
        assert_documented(schema, method, path, response)


@pytest.fixture
def world(db, alice, acme, bob, olga, adapter_storage, sent):
    """alice's tenant with a bit of everything for the endpoints to answer about: a ready adapter, a dataset, a
    finished training job with events and a checkpoint, a finished request billed in the ledger, an invite and a
    key; her session and her full-scope key."""
    ensure_default_plan()
    base = make_base("tiny-llama", context_length=2048)
    adapter = make_adapter(acme, base, "support-bot", versions=1)
    dataset = make_dataset(acme)
    spare = make_dataset(acme, records=3)
    job = make_job(acme, adapter, dataset, status=TrainingJob.SUCCEEDED, job_id="ftjob_" + "a" * 24,
                   total_steps=2, trained_steps=2, trainable_params=1024, last_loss=1.5)
    TrainingEvent.objects.create(job=job, message="Step 1: loss 1.7", step=1, loss=1.7)
    TrainingCheckpoint.objects.create(job=job, step=2, uri="file:///nowhere", loss=1.5)
    queued = make_job(acme, make_adapter(acme, base, "queued-bot"), dataset, status=TrainingJob.QUEUED,
                      job_id="ftjob_" + "c" * 24)
    request = make_request(acme, base, request_id="req_" + "b" * 32, adapter_version=adapter.current_version,
                           status=InferenceRequest.RUNNING)
    record_node_final(request.id, {"finish_reason": "length", "gpu_ms": 12.5,
                                   "usage": {"prompt_tokens": 3, "completion_tokens": 8, "cached_tokens": 0},
                                   "timings": {"queued_ms": 1.0, "adapter_ready_ms": 2.0, "first_token_ms": 3.0,
                                               "total_ms": 20.0}})
    invite = Invite.objects.create(tenant=acme, email="dave@example.test", role="developer", invited_by=alice,
                                   token_hash="f" * 64, expires_at="2099-01-01T00:00:00Z")
    store_version(make_adapter(acme, base, "files-bot"), adapter_storage, 1)
    usage(acme, "1.2345")
    close()
    key, secret = create_key(alice, acme)
    return {"session": session_client(alice), "key": key_client(secret), "staff": session_client(olga),
            "known": {"model_id": base.name, "name": adapter.name, "tenant_id": acme.slug, "job_id": job.id,
                      "dataset_id": dataset.id, "request_id": request.id, "member_id": bob.memberships.get().pk,
                      "invite_id": invite.pk, "prefix": key.prefix, "number": 1, "step": 2,
                      "queued_job_id": queued.id, "spare_dataset_id": spare.id, "files_bot": "files-bot",
                      "invoice_id": invoice_of(acme).id}}


def test_every_operation_answers_as_documented(schema, world, acme):
    """One real answer per operation (a 2xx where it needs no node) and a few refusals, each as documented."""
    session, key, staff, known = world["session"], world["key"], world["staff"], world["known"]
    make_version(Adapter.objects.get(name="support-bot"), 2)  # a version to roll back from
    spare_file = make_dataset(acme, records=2)
    queued_ft = make_job(acme, make_adapter(acme, BaseModel.objects.get(name="tiny-llama"), "queued-ft-bot"),
                         spare_file, status=TrainingJob.QUEUED, job_id="ftjob_" + "d" * 24)
    known = {**known, "file_id": known["dataset_id"], "spare_file_id": spare_file.id, "queued_ft_id": queued_ft.id}
    cases = [
        # /v1: the native API, the OpenAI-compatible API, training and usage
        (key, "get", "/v1/models/{model_id}/versions", None, 200),
        (key, "get", "/v1/requests/{request_id}", None, 200),
        (key, "post", "/v1/requests/{request_id}/cancel", None, 202),
        (key, "get", "/v1/models", None, 200),
        (key, "get", "/v1/models/{model_id}", None, 200),
        (key, "get", "/v1/models/{name}", None, 200),
        (key, "post", "/v1/models/{model_id}/infer", {"prompt": "Hi"}, 503),  # no node: no capacity
        (key, "post", "/v1/models/{model_id}/infer", {"prompt": "Hi", "parameters": {"temperature": 9}}, 400),
        (key, "post", "/v1/chat/completions", {"model": "support-bot", "messages": [{"role": "user",
                                                                                    "content": "Hi"}]}, 503),
        (key, "post", "/v1/completions", {"model": "nothing", "prompt": "Hi"}, 404),
        (key, "post", "/v1/models/{model_id}/train/estimate", {"adapter_id": "new-bot", "dataset": known["dataset_id"],
                                                               "hyperparameters": TRAINING_HP}, 200),
        (key, "post", "/v1/models/{model_id}/train", {"adapter_id": "new-bot", "dataset": known["dataset_id"],
                                                      "hyperparameters": TRAINING_HP}, 201),
        (key, "get", "/v1/training/jobs", None, 200),
        (key, "get", "/v1/training/jobs/{job_id}", None, 200),
        (key, "get", "/v1/training/jobs/{job_id}/events", None, 200),
        (key, "get", "/v1/training/jobs/{job_id}/checkpoints", None, 200),
        (key, "post", "/v1/training/jobs/{job_id}/cancel", None, 409),  # it has finished
        (key, "post", "/v1/training/jobs/{queued_job_id}/cancel", None, 200),
        (key, "get", "/v1/usage/{tenant_id}/metrics", None, 200),
        # /v1: OpenAI's files and fine-tuning API
        (key, "get", "/v1/files", None, 200),
        (key, "get", "/v1/files/{file_id}", None, 200),
        (key, "get", "/v1/files/{file_id}/content", None, 200),
        (key, "post", "/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": known["file_id"]}, 200),
        (key, "post", "/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": "file-nothing"}, 404),
        (key, "get", "/v1/fine_tuning/jobs", None, 200),
        (key, "get", "/v1/fine_tuning/jobs/{job_id}", None, 200),
        (key, "get", "/v1/fine_tuning/jobs/{job_id}/events", None, 200),
        (key, "get", "/v1/fine_tuning/jobs/{job_id}/checkpoints", None, 200),
        (key, "post", "/v1/fine_tuning/jobs/{queued_ft_id}/cancel", None, 200),
        (key, "post", "/v1/fine_tuning/jobs/{queued_ft_id}/cancel", None, 409),  # it has ended
        (key, "delete", "/v1/files/{spare_file_id}", None, 200),  # no active job trains on it
        # /api/v1
        (key, "get", "/api/v1/me", None, 200),
        (session, "get", "/api/v1/me", None, 200),
        (session, "get", "/api/v1/tenants", None, 200),
        (session, "post", "/api/v1/tenants", {"name": "Acme Labs", "slug": "acme-labs"}, 201),
        (session, "get", "/api/v1/keys", None, 200),
        (session, "post", "/api/v1/keys", {"name": "ci", "scopes": ["infer"]}, 201),
        (session, "get", "/api/v1/keys/{prefix}", None, 200),
        (key, "get", "/api/v1/keys", None, 403),  # keys are managed from a session
        (session, "get", "/api/v1/members", None, 200),
        (session, "get", "/api/v1/members/{member_id}", None, 200),
        (session, "patch", "/api/v1/members/{member_id}", {"role": "admin"}, 200),
        (session, "get", "/api/v1/invites", None, 200),
        (session, "post", "/api/v1/invites", {"email": "erin@example.test", "role": "developer"}, 201),
        (session, "get", "/api/v1/audit-log", None, 200),
        (session, "get", "/api/v1/audit-log?limit=1000", None, 400),
        (key, "get", "/api/v1/base-models", None, 200),
        (session, "get", "/api/v1/base-models/imports", None, 403),  # staff only
        (staff, "get", "/api/v1/base-models/imports", None, 200),
        (key, "get", "/api/v1/adapters", None, 200),
        (key, "get", "/api/v1/adapters/{name}", None, 200),
        (key, "patch", "/api/v1/adapters/{name}", {"tier": "warm"}, 200),
        (key, "get", "/api/v1/adapters/{name}/versions", None, 200),
        (key, "post", "/api/v1/adapters/{name}/rollback", {"version": 1}, 200),
        (key, "post", "/api/v1/adapters/{name}/rollback", {"version": 1}, 409),  # already current
        (key, "get", "/api/v1/adapter-imports", None, 200),
        (key, "get", "/api/v1/datasets", None, 200),
        (key, "get", "/api/v1/datasets/{dataset_id}", None, 200),
        (key, "delete", "/api/v1/datasets/{dataset_id}", None, 409),  # new-bot's job above trains on it
        (key, "delete", "/api/v1/datasets/{spare_dataset_id}", None, 204),
        (key, "get", "/api/v1/billing/invoices", None, 200),
        (key, "get", "/api/v1/billing/invoices/upcoming", None, 200),
        (key, "get", "/api/v1/billing/invoices/{invoice_id}", None, 200),
        (key, "get", "/api/v1/billing/invoices/{invoice_id}/pdf", None, 200),
        (key, "get", "/api/v1/billing/invoices/inv_nothing", None, 404),
        (key, "get", "/api/v1/adapters/{files_bot}/versions/{number}/download", None, 200),
        (key, "get", "/api/v1/billing/metering", None, 403),  # staff sessions only
        (staff, "get", "/api/v1/billing/metering", None, 200),
        (session, "delete", "/api/v1/invites/{invite_id}", None, 200),
        (session, "delete", "/api/v1/members/{member_id}", None, 204),
        (key, "delete", "/api/v1/adapters/{name}", None, 204),
        (session, "delete", "/api/v1/keys/{prefix}", None, 200),  # alice's key, last
    ]
    answered, failures = set(), []

    def check(method, path, response, status):
        template = TEMPLATES.get(path, path.split("?")[0])
        try:
            assert response.status_code == status, (response.status_code, response.content[:500])
            assert_documented(schema, method, template, response)
        except AssertionError as exc:
            failures.append(f"{method.upper()} {path}: {str(exc)[:1500]}")
        if response.status_code < 300:
            answered.add((method, template))

    check("post", "/api/v1/datasets", key.post("/api/v1/datasets", {"name": "more", "file": as_files(
        [("more.jsonl", jsonl(4))])}, format="multipart"), 201)
    check("post", "/v1/files", key.post("/v1/files", {"purpose": "fine-tune", "file": as_files(
        [("more.jsonl", jsonl(4))])}, format="multipart"), 200)
    check("post", "/api/v1/signup", call(Client(), "post", "/api/v1/signup", {
        "email": "frank@example.test", "password": "a long enough passphrase", "tenant_name": "Frank's",
        "tenant_slug": "franks"}), 201)
    for client, method, path, body, status in cases:
        check(method, path, call(client, method, path, body, **known), status)
    assert not failures, "\n\n".join(failures)
    missing = set(operations(schema)) - answered - NEEDS_A_NODE - ANSWERED_ELSEWHERE
    assert missing == set(), "operations without a real answer checked against the schema"
