"""The train API: starting a job on a new or an existing adapter, the estimate worked out
by hand, jobs, events, checkpoints, cancel; every bad input refused with nothing written and no task
sent; and charlie (contoso) never reaching acme's jobs, datasets or adapters."""

import hashlib

import pytest
from django.core.files.storage import storages
from django.utils import timezone

from adapters.models import Adapter
from gpu_runtime.contract import cancel_key
from tenants.roles import BILLING_VIEWER
from tests.factories import (
    TRAINING_HP,
    create_key,
    jsonl,
    key_client,
    make_adapter,
    make_base,
    make_dataset,
    make_job,
    make_member,
    make_node,
    put_on_plan,
    session_client,
    store_version,
)
from tests.helpers import assert_error, capture_sent, refused
from training.models import Dataset, TrainingCheckpoint, TrainingEvent, TrainingJob
from vajra.redis import get_redis

pytestmark = pytest.mark.usefixtures("adapter_storage")

BASE = "tiny-llama"
RECORDS = 10


@pytest.fixture
def sent(monkeypatch):
    return capture_sent(monkeypatch)


# ---- create -----------------------------------------------------------------------------------------------------

def test_train_a_new_adapter(post_train, dataset, sent, acme):
    response = post_train(dataset=dataset.id)

    assert response.status_code == 201, response.json()
    body = response.json()
    job = TrainingJob.objects.get()
    assert body["id"] == job.id and job.id.startswith("ftjob_") and len(job.id) == len("ftjob_") + 24
    assert (body["object"], body["status"], body["model"], body["adapter"], body["dataset"]) == (
        "training.job", "validating_files", BASE, "support-bot", dataset.id)
    assert body["base_version"] is None and body["result_version"] is None
    adapter = Adapter.objects.get(tenant=acme, name="support-bot")
    assert adapter.current_version is None and adapter.tier == Adapter.COLD
    assert job.adapter == adapter and job.base_version is None
    assert job.hyperparameters["rank"] == 8 and job.hyperparameters["target_modules"] == ["q_proj", "v_proj"]
    assert sent == [("control.training_validate", [job.id], {"queue": "control"})]
    assert TrainingEvent.objects.filter(job=job).count() == 1


def test_estimate_by_hand(post_train, dataset, sent):
    """tiny-llama: hidden 64, 4 heads of 16, 2 KV heads, 2 layers. Rank 4 on q_proj (64 -> 64) and v_proj
    (64 -> 32): 4 x (64 + 64) + 4 x (64 + 32) = 896 per layer, 1792 trainable. 10 records of 120 tokens in all,
    batches of 4 in micro-batches of 2: an epoch is 3 steps (4, 4, 2 records); 3 epochs: 9 steps, 360 tokens
    trained, 1792 x 360 = 645120 gradients. Cost: 645120 x $0.00000005 / 1e6 x $2.00 = $0.000000064512, quoted
    as 1 micro-dollar (rounded up); a million tokens: 1.792e9 gradients = $0.0001792, 180 micro-dollars."""
    expected = {"gradients": 645120, "cost_micro_usd": 1, "cost_usd": "0.000001", "total_steps": 9,
                "trainable_params": 1792}
    assert dataset.tokens == 120
    estimate = post_train(dataset=dataset.id, path="train/estimate", hp={"rank": 4})
    assert estimate.status_code == 200, estimate.json()
    assert {k: estimate.json()[k] for k in expected} == expected
    assert estimate.json()["records"] == RECORDS and estimate.json()["object"] == "training.estimate"
    assert (estimate.json()["dataset_tokens"], estimate.json()["trained_tokens"]) == (120, 360)
    assert estimate.json()["tokens_exact"] is False  # the web has no tokenizer for tiny-llama: the upload's count
    assert estimate.json()["per_million_tokens"] == {"cost_micro_usd": 180, "cost_usd": "0.000180"}
    assert estimate.json()["cost_exact_usd"] == "0.0000000645"  # the ledger's 10 places, half-even
    for micro in (1, 4):  # the micro-batch size changes nothing
        same = post_train(dataset=dataset.id, path="train/estimate", hp={"rank": 4, "micro_batch_size": micro})
        assert {k: same.json()[k] for k in expected} == expected
    assert not TrainingJob.objects.exists() and not Adapter.objects.exists() and sent == []

    created = post_train(dataset=dataset.id, hp={"rank": 4}).json()
    assert created["estimate"] == {k: expected[k] for k in ("gradients", "cost_micro_usd", "cost_usd", "total_steps",
                                                            "trainable_params")}
    assert created["usage"] == {"steps": 0, "gradients": 0, "cost_micro_usd": 0, "cost_usd": "0.000000"}


def test_train_an_existing_adapter_continues_from_its_current_version(post_train, dataset, acme, base,
                                                                      adapter_storage, sent):
    adapter = make_adapter(acme, base)
    store_version(adapter, adapter_storage, 1, r=2, current=False)
    v2 = store_version(adapter, adapter_storage, 2, r=8, modules=("q_proj", "k_proj", "v_proj", "o_proj"))

    response = post_train(dataset=dataset.id, hp={"rank": 8})  # the same rank may be named

    assert response.status_code == 201, response.json()
    job = TrainingJob.objects.get()
    assert response.json()["base_version"] == 2 and job.base_version == v2 and job.adapter == adapter
    assert (job.hyperparameters["rank"], job.hyperparameters["alpha"], job.hyperparameters["target_modules"]) == (
        8, 8.0, ["k_proj", "o_proj", "q_proj", "v_proj"])
    # q 64->64, k 64->32, v 64->32, o 64->64: 8 x (128 + 96 + 96 + 128) = 3584 per layer, 2 layers
    assert job.trainable_params == 7168 and job.estimated_gradients == 7168 * 120 * 3  # 120 tokens, 3 epochs
    assert Adapter.objects.count() == 1


@pytest.mark.parametrize("name, value", [("rank", 4), ("alpha", 32), ("target_modules", ["q_proj"])])
def test_an_existing_adapter_keeps_its_shape(post_train, dataset, acme, base, adapter_storage, unchanged_db, sent,
                                             name, value):
    store_version(make_adapter(acme, base), adapter_storage, 1, r=8)
    error = refused(unchanged_db, sent, lambda: post_train(dataset=dataset.id, hp={name: value}), 400,
                    code="adapter_shape_fixed", param=f"hyperparameters.{name}")
    assert "v1" in error["message"]


def test_a_url_dataset_where_the_tenant_has_a_store(post_train, acme, base, tmp_path, settings, sent):
    store = tmp_path / "store" / "acme"
    store.mkdir(parents=True)
    (store / "support.jsonl").write_bytes(jsonl(6))
    settings.VAJRA_TENANT_DATASET_URL_PREFIXES = {"acme": [f"file://{store}/"]}

    estimate = post_train(dataset=f"file://{store}/support.jsonl", path="train/estimate")
    assert estimate.status_code == 200 and estimate.json()["records"] == 6 and not Dataset.objects.exists()

    response = post_train(dataset=f"file://{store}/support.jsonl")

    assert response.status_code == 201, response.json()
    dataset = Dataset.objects.get()
    assert response.json()["dataset"] == dataset.id and dataset.records == 6 and dataset.tenant == acme
    assert storages["adapters"].open(dataset.storage_key).read() == jsonl(6), "a snapshot of the checked bytes"
    assert dataset.sha256 == hashlib.sha256(jsonl(6)).hexdigest()


@pytest.mark.parametrize("quota, code", [("dataset_max_records", "invalid_dataset"),
                                         ("dataset_max_bytes", "dataset_unreadable")])
def test_a_url_dataset_over_the_plans_caps_is_400(post_train, acme, base, tmp_path, settings, unchanged_db, sent,
                                                  quota, code):
    store = tmp_path / "store" / "acme"
    store.mkdir(parents=True)
    (store / "support.jsonl").write_bytes(jsonl(6))
    settings.VAJRA_TENANT_DATASET_URL_PREFIXES = {"acme": [f"file://{store}/"]}
    put_on_plan(acme, **{quota: 5 if quota == "dataset_max_records" else len(jsonl(6)) - 1})
    error = refused(unchanged_db, sent, lambda: post_train(dataset=f"file://{store}/support.jsonl"), 400,
                    code=code, param="dataset", extra=("lines", "lines_omitted") if code == "invalid_dataset" else ())
    expected = "the plan 'small' allows 5" if code == "invalid_dataset" else \
        f"is over {len(jsonl(6)) - 1} bytes, the most the plan 'small' allows"
    assert expected in error["message"], error


def test_a_url_dataset_past_the_storage_quota_is_413(post_train, acme, base, tmp_path, settings, unchanged_db, sent,
                                                    adapter_storage):
    store = tmp_path / "store" / "acme"
    store.mkdir(parents=True)
    (store / "support.jsonl").write_bytes(jsonl(6))
    settings.VAJRA_TENANT_DATASET_URL_PREFIXES = {"acme": [f"file://{store}/"]}
    put_on_plan(acme, storage_max_bytes=len(jsonl(6)) - 1)
    refused(unchanged_db, sent, lambda: post_train(dataset=f"file://{store}/support.jsonl"), 413,
            code="storage_quota_exceeded", param="dataset")
    assert not [p for p in adapter_storage.rglob("*") if p.is_file()], "no snapshot stored"


@pytest.mark.parametrize("path", ["train", "train/estimate"])
def test_a_job_whose_adapter_cannot_fit_the_storage_quota_is_413(post_train, dataset, acme, unchanged_db, sent,
                                                                 path):
    # rank 8 on q_proj and v_proj of the tiny base, saved in F32: more bytes than the quota leaves
    put_on_plan(acme, storage_max_bytes=dataset.size_bytes + 1000)
    error = refused(unchanged_db, sent, lambda: post_train(dataset=dataset.id, path=path), 413,
                    code="storage_quota_exceeded", param="hyperparameters")
    assert "bytes of storage" in error["message"]


# ---- bad input: 400 / 404 / 409, nothing written, no task sent ------------------------------------------------

@pytest.mark.parametrize("hp, param", [
    ({"learning_rate": 0}, "hyperparameters.learning_rate"),
    ({"learning_rate": -1e-4}, "hyperparameters.learning_rate"),
    ({"learning_rate": 1.5}, "hyperparameters.learning_rate"),
    ({"learning_rate": "fast"}, "hyperparameters.learning_rate"),
    ({"epochs": 0}, "hyperparameters.epochs"),
    ({"epochs": 51}, "hyperparameters.epochs"),
    ({"epochs": 2.5}, "hyperparameters.epochs"),
    ({"rank": 65}, "hyperparameters.rank"),
    ({"rank": 0}, "hyperparameters.rank"),
    ({"target_modules": ["lm_head"]}, "hyperparameters.target_modules"),
    ({"target_modules": []}, "hyperparameters.target_modules"),
    ({"batch_size": 4, "micro_batch_size": 3}, "hyperparameters.batch_size"),
    ({"max_steps": 0}, "hyperparameters.max_steps"),
    ({"warmup": 10}, "hyperparameters"),
])
def test_bad_hyperparameters(post_train, dataset, unchanged_db, sent, hp, param):
    error = refused(unchanged_db, sent, lambda: post_train(dataset=dataset.id, hp=hp), 400,
                    code="invalid_hyperparameter", param=param)
    assert param.split(".")[-1] in error["message"]


@pytest.mark.parametrize("missing", ["learning_rate", "epochs"])
def test_learning_rate_and_epochs_are_required(post_train, dataset, unchanged_db, sent, missing):
    body = {"adapter_id": "support-bot", "dataset": dataset.id,
            "hyperparameters": {k: v for k, v in TRAINING_HP.items() if k != missing}}
    refused(unchanged_db, sent, lambda: post_train(body), 400, code="missing_hyperparameter",
            param=f"hyperparameters.{missing}")


@pytest.mark.parametrize("body, param", [
    ({"adapter_id": "Support Bot"}, "adapter_id"),
    ({"adapter_id": "support-bot@v1"}, "adapter_id"),
    ({"hyperparameters": [1, 2]}, "hyperparameters"),
    ({"dataset": ""}, "dataset"),
    ({"zebra": 1}, "zebra"),
])
def test_bad_fields(post_train, dataset, unchanged_db, sent, body, param):
    full = {"adapter_id": "support-bot", "dataset": dataset.id, "hyperparameters": TRAINING_HP, **body}
    refused(unchanged_db, sent, lambda: post_train(full), 400, param=param)


def test_unknown_base_model_is_404(api, dataset, unchanged_db, sent):
    body = {"adapter_id": "support-bot", "dataset": dataset.id, "hyperparameters": TRAINING_HP}
    refused(unchanged_db, sent, lambda: api.post("/v1/models/gpt-9/train", body, format="json"), 404)


def test_unknown_dataset_is_404(post_train, base, unchanged_db, sent):
    refused(unchanged_db, sent, lambda: post_train(dataset="ds_000000000000000000000000"), 404)


def test_another_tenants_dataset_is_404(post_train, charlie_api, dataset, unchanged_db, sent):
    for path in ("train", "train/estimate"):
        error = refused(unchanged_db, sent, lambda p=path: post_train(dataset=dataset.id, client=charlie_api, path=p),
                        404)
        assert "acme" not in error["message"]


def test_an_adapter_name_resolves_inside_the_callers_tenant_so_another_tenants_adapter_is_never_reached(
        post_train, charlie_api, contoso, acme, base, adapter_storage, sent):
    """Adapters have no global id in the API: every endpoint (train, infer, versions, tier, rollback) names an
    adapter by its name, and a name is resolved inside the caller's tenant (access_adapter(tenant=, name=)).
    The only id-like form, ``a<pk>``, lives in the runtime's messages and is never read from a request. So
    charlie naming acme's adapter, by its name or by that runtime form, names an adapter of his own (a new one
    here, as any unused name does): acme's adapter is neither trained, changed nor revealed. (Another tenant's
    dataset, which is named by a global id, is a 404: test_another_tenants_dataset_is_404.)"""
    acme_adapter = make_adapter(acme, base)
    v1 = store_version(acme_adapter, adapter_storage, 1, r=8)
    dataset = make_dataset(contoso)
    for name in (acme_adapter.name, f"a{acme_adapter.pk}"):
        response = post_train(dataset=dataset.id, client=charlie_api, adapter_id=name, hp={"rank": 2})
        assert response.status_code == 201, response.json()
        assert response.json()["adapter"] == name and response.json()["base_version"] is None
        assert "acme" not in response.content.decode()
        job = TrainingJob.objects.get(adapter__name=name, tenant=contoso)
        assert job.adapter.tenant == contoso and job.base_version is None and job.hyperparameters["rank"] == 2
    acme_adapter.refresh_from_db()
    assert acme_adapter.current_version == v1 and not acme_adapter.training_jobs.exists()
    assert list(acme_adapter.versions.all()) == [v1]


def test_a_second_job_on_the_same_adapter_is_409(post_train, dataset, unchanged_db, sent):
    assert post_train(dataset=dataset.id).status_code == 201
    sent.clear()
    error = refused(unchanged_db, sent, lambda: post_train(dataset=dataset.id), 409, code="training_in_progress",
                    param="adapter_id")
    assert TrainingJob.objects.get().id in error["message"]


def test_a_finished_job_does_not_block_the_next(post_train, dataset, sent):
    assert post_train(dataset=dataset.id).status_code == 201
    TrainingJob.objects.update(status=TrainingJob.FAILED)
    assert post_train(dataset=dataset.id).status_code == 201


def test_adapter_for_another_base_is_400(post_train, dataset, acme, unchanged_db, sent):
    make_adapter(acme, make_base("other-base"))
    refused(unchanged_db, sent, lambda: post_train(dataset=dataset.id), 400, code="base_mismatch", param="adapter_id")


def test_adapter_quota_is_the_plans(post_train, dataset, acme, base, unchanged_db, sent):
    put_on_plan(acme, max_adapters=1)
    make_adapter(acme, base, name="the-one")
    error = refused(unchanged_db, sent, lambda: post_train(dataset=dataset.id), 409, code="adapter_quota",
                    param="adapter_id")
    assert "The plan 'small' allows 1 adapters" in error["message"]


@pytest.mark.parametrize("url, code", [
    ("s3://acme-bucket/train.jsonl", "dataset_url_not_allowed"),
    ("gs://bucket/path", "unsupported_dataset_url"),
])
def test_a_dataset_url_without_a_store_is_400(post_train, base, unchanged_db, sent, url, code):
    error = refused(unchanged_db, sent, lambda: post_train(dataset=url), 400, code=code, param="dataset")
    assert "dataset id" in error["message"] or "upload the file" in error["message"].lower()


@pytest.mark.parametrize("url, code", [
    ("file://{store}/../contoso/train.jsonl", "dataset_url_not_allowed"),  # out of the prefix
    ("file://{root}/elsewhere.jsonl", "dataset_url_not_allowed"),
    ("file://elsewhere{store}/bad.jsonl", "dataset_url_not_allowed"),  # another machine's file
    ("file://{store}/bad.jsonl?version=2", "dataset_url_not_allowed"),
    ("s3://acme-bucket/train/../secrets.jsonl", "dataset_url_not_allowed"),
    ("s3://contoso-bucket/train/x.jsonl", "dataset_url_not_allowed"),
    ("file://{store}/missing.jsonl", "dataset_unreadable"),
    ("file://{store}/bad.jsonl", "invalid_dataset"),
])
def test_url_datasets_outside_or_broken(post_train, base, tmp_path, settings, unchanged_db, sent, adapter_storage,
                                        url, code):
    store = tmp_path / "store" / "acme"
    (tmp_path / "store" / "contoso").mkdir(parents=True)
    store.mkdir(parents=True)
    (tmp_path / "store" / "contoso" / "train.jsonl").write_bytes(jsonl())
    (tmp_path / "elsewhere.jsonl").write_bytes(jsonl())
    (store / "bad.jsonl").write_bytes(jsonl(2) + b'{"prompt": 1}\n')
    settings.VAJRA_TENANT_DATASET_URL_PREFIXES = {"acme": [f"file://{store}/", "s3://acme-bucket/train/"]}
    files = sorted(p for p in adapter_storage.rglob("*") if p.is_file())
    extra = ("lines", "lines_omitted") if code == "invalid_dataset" else ()
    error = refused(unchanged_db, sent, lambda: post_train(dataset=url.format(store=store, root=tmp_path)), 400,
                    code=code, param="dataset", extra=extra)
    if extra:
        assert "line 3" in error["message"] and error["lines"][0]["line"] == 3
    assert sorted(p for p in adapter_storage.rglob("*") if p.is_file()) == files, "no file left behind"


def test_key_without_the_train_scope(alice, acme, dataset, unchanged_db, sent):
    client = key_client(create_key(alice, acme, scopes=["infer"])[1])
    body = {"adapter_id": "support-bot", "dataset": dataset.id, "hyperparameters": TRAINING_HP}
    for call in (lambda: client.post(f"/v1/models/{BASE}/train", body, format="json"),
                 lambda: client.get("/v1/training/jobs")):
        refused(unchanged_db, sent, call, 403, code="missing_scope")


def test_billing_viewer_cannot_train_or_read_jobs(acme, alice, dataset, unchanged_db, sent):
    client = session_client(make_member("vera@acme.test", acme, BILLING_VIEWER))
    body = {"adapter_id": "support-bot", "dataset": dataset.id, "hyperparameters": TRAINING_HP}
    for call in (lambda: client.post(f"/v1/models/{BASE}/train", body, format="json"),
                 lambda: client.get("/v1/training/jobs")):
        refused(unchanged_db, sent, call, 403, code="role_forbidden")


def test_a_developer_session_may_train(bob, dataset, django_capture_on_commit_callbacks, sent):
    body = {"adapter_id": "bobs", "dataset": dataset.id, "hyperparameters": TRAINING_HP}
    with django_capture_on_commit_callbacks(execute=True):
        response = session_client(bob).post(f"/v1/models/{BASE}/train", body, format="json")
    assert response.status_code == 201, response.json()
    assert TrainingJob.objects.get().created_by == bob


# ---- jobs, events, checkpoints ------------------------------------------------------------------------------------

@pytest.fixture
def job(post_train, dataset, sent):
    response = post_train(dataset=dataset.id)
    assert response.status_code == 201, response.json()
    sent.clear()
    return TrainingJob.objects.get()


def test_list_and_detail(api, job, acme, dataset, base, sent):
    other = make_job(acme, make_adapter(acme, base, name="second"), dataset, status=TrainingJob.FAILED,
                     error_code="invalid_file", error_message="line 3: bad")
    listing = api.get("/v1/training/jobs").json()
    assert [j["id"] for j in listing["data"]] == [other.id, job.id] and listing["has_more"] is False
    page = api.get("/v1/training/jobs?limit=1").json()
    assert [j["id"] for j in page["data"]] == [other.id] and page["has_more"] is True
    assert [j["id"] for j in api.get(f"/v1/training/jobs?after={other.id}").json()["data"]] == [job.id]
    detail = api.get(f"/v1/training/jobs/{other.id}").json()
    assert detail["error"] == {"code": "invalid_file", "message": "line 3: bad"} and detail["status"] == "failed"
    assert_error(api.get("/v1/training/jobs?limit=0"), 400, param="limit")
    assert_error(api.get("/v1/training/jobs?limit=lots"), 400, param="limit")


def test_events_with_a_cursor(api, job):
    from training.jobs import event

    event(job, "Step 1/9: training loss 2.5000.", step=1, loss=2.5)
    event(job, "Step 2/9: training loss 2.2500.", step=2, loss=2.25)
    body = api.get(f"/v1/training/jobs/{job.id}/events").json()
    assert [e["step"] for e in body["data"]] == [None, 1, 2] and body["data"][2]["loss"] == 2.25
    assert set(body["data"][0]) == {"id", "object", "created_at", "level", "message", "step", "loss",
                                    "eval_loss"}
    after = body["data"][1]["id"]
    tail = api.get(f"/v1/training/jobs/{job.id}/events?after={after}").json()
    assert [e["step"] for e in tail["data"]] == [2] and tail["has_more"] is False
    assert api.get(f"/v1/training/jobs/{job.id}/events?limit=1").json()["has_more"] is True


def test_checkpoints(api, job):
    TrainingCheckpoint.objects.create(job=job, step=10, uri="file:///x/checkpoints/step-0000010", loss=1.5)
    TrainingCheckpoint.objects.create(job=job, step=5, uri="file:///x/checkpoints/step-0000005", loss=2.0)
    data = api.get(f"/v1/training/jobs/{job.id}/checkpoints").json()["data"]
    assert [(c["step"], c["loss"]) for c in data] == [(5, 2.0), (10, 1.5)]
    assert "uri" not in data[0], "storage paths are the platform's business"


# ---- cancel -------------------------------------------------------------------------------------------------------

def test_cancel_before_it_starts(api, job, sent, django_capture_on_commit_callbacks):
    get_redis().delete(cancel_key(job.id))
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"/v1/training/jobs/{job.id}/cancel")
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"]
    job.refresh_from_db()
    assert job.status == TrainingJob.CANCELLED and job.cancel_requested_at
    assert get_redis().get(cancel_key(job.id)) == b"1"
    assert sent == [], "never sent to a node: nothing to revoke"


def test_cancel_a_queued_job_already_sent_to_a_node(api, job, sent, django_capture_on_commit_callbacks):
    TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.QUEUED, node=make_node("n1"))
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(f"/v1/training/jobs/{job.id}/cancel").json()["status"] == "cancelled"
    assert sent == [("revoke", [job.id], {})]


def test_cancel_a_running_job_asks_the_node(api, job, sent, django_capture_on_commit_callbacks):
    TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.RUNNING, started_at=timezone.now())
    get_redis().delete(cancel_key(job.id))
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"/v1/training/jobs/{job.id}/cancel")
    assert response.status_code == 202, response.json()
    assert response.json()["status"] == "running" and response.json()["cancel_requested_at"]
    assert get_redis().get(cancel_key(job.id)) == b"1"
    assert api.post(f"/v1/training/jobs/{job.id}/cancel").status_code == 202  # asking twice is harmless
    assert TrainingEvent.objects.filter(job=job, message__startswith="Cancel requested").count() == 1


@pytest.mark.parametrize("status", TrainingJob.TERMINAL)
def test_cancel_a_finished_job_is_409(api, job, unchanged_db, sent, status):
    TrainingJob.objects.filter(pk=job.pk).update(status=status)
    refused(unchanged_db, sent, lambda: api.post(f"/v1/training/jobs/{job.id}/cancel"), 409, code="job_finished")


# ---- tenant isolation ---------------------------------------------------------------------------------------------

def test_charlie_gets_404_for_every_job_endpoint(charlie_api, api, job, unchanged_db, sent):
    calls = [lambda p=p: charlie_api.get(p) for p in (
        f"/v1/training/jobs/{job.id}", f"/v1/training/jobs/{job.id}/events", f"/v1/training/jobs/{job.id}/checkpoints",
        f"/v1/training/jobs?after={job.id}")]
    calls.append(lambda: charlie_api.post(f"/v1/training/jobs/{job.id}/cancel"))
    for call in calls:
        error = refused(unchanged_db, sent, call, 404)
        assert "acme" not in error["message"]
    assert charlie_api.get("/v1/training/jobs").json()["data"] == []


# ---- settings -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["not json", '["s3://bucket/"]', '{"acme": ["https://example.com/data/"]}',
                                   '{"acme": ["s3://bucket/no-trailing-slash"]}'])
def test_bad_dataset_url_prefixes_fail_at_start(value):
    from tests.helpers import run_django

    result = run_django("print('started')", VAJRA_TENANT_DATASET_URL_PREFIXES=value)
    assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr
    assert "VAJRA_TENANT_DATASET_URL_PREFIXES" in result.stderr.splitlines()[-1], result.stderr[-500:]
