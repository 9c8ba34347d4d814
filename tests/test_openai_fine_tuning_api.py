"""OpenAI's fine-tuning API (/v1/fine_tuning/jobs) over VAJRA's training jobs: create on a base model or an adapter,
OpenAI's hyperparameters mapped onto ours, a validation file, list/events/checkpoints with OpenAI's cursors, cancel,
the finished job's model id; hostile input (another tenant's files and jobs, n_epochs 0 or 1e9, unknown models, a
file id that is not a file) is a 4xx in the one error shape with nothing written and no task sent."""

import pytest
from django.utils import timezone

from adapters.models import Adapter
from tests.factories import (
    create_key,
    key_client,
    make_adapter,
    make_dataset,
    make_job,
    make_node,
    store_version,
)
from tests.helpers import capture_sent, refused
from training.models import TrainingCheckpoint, TrainingEvent, TrainingJob, TrainingStep
from training.openai_jobs import DEFAULT_LEARNING_RATE

pytestmark = pytest.mark.usefixtures("adapter_storage")

URL = "/v1/fine_tuning/jobs"


@pytest.fixture
def sent(monkeypatch):
    return capture_sent(monkeypatch)


@pytest.fixture
def create(api, django_capture_on_commit_callbacks):
    def post(body, client=None):
        with django_capture_on_commit_callbacks(execute=True):
            return (client or api).post(URL, body, format="json")

    return post


@pytest.fixture
def validation(acme, base):
    return make_dataset(acme, records=3)


def test_create_on_a_base_model_trains_a_new_adapter(create, dataset, validation, sent, acme):
    response = create({"model": "tiny-llama", "training_file": dataset.id, "validation_file": validation.id,
                       "suffix": "support", "seed": 42,
                       "hyperparameters": {"n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 5}})
    assert response.status_code == 200, response.json()
    body = response.json()
    job = TrainingJob.objects.get()
    assert body["id"] == job.id and body["object"] == "fine_tuning.job" and body["status"] == "validating_files"
    assert job.adapter.name == f"ft-support-{job.id[-12:]}" and job.adapter.tenant == acme
    assert (job.dataset, job.validation_dataset) == (dataset, validation)
    hp = job.hyperparameters
    assert (hp["epochs"], hp["batch_size"], hp["seed"]) == (2, 2, 42)
    assert hp["learning_rate"] == pytest.approx(5 * DEFAULT_LEARNING_RATE)
    assert body["hyperparameters"] == {"n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 5}
    assert (body["model"], body["training_file"], body["validation_file"], body["seed"]) == (
        "tiny-llama", dataset.id, validation.id, 42)
    assert body["fine_tuned_model"] is None and body["trained_tokens"] is None and body["organization_id"] == "acme"
    assert body["method"] == {"type": "supervised", "supervised": {"hyperparameters": body["hyperparameters"]}}
    assert sent == [("control.training_validate", [job.id], {"queue": "control"})]


def test_auto_is_our_default_and_a_seed_is_chosen_when_none_is_given(create, dataset, sent):
    body = create({"model": "tiny-llama", "training_file": dataset.id,
                   "hyperparameters": {"n_epochs": "auto", "batch_size": "auto",
                                       "learning_rate_multiplier": "auto"}}).json()
    hp = TrainingJob.objects.get().hyperparameters
    assert (hp["epochs"], hp["batch_size"], hp["learning_rate"]) == (3, 4, DEFAULT_LEARNING_RATE)
    assert body["seed"] == hp["seed"] and 0 <= hp["seed"] < 2**31
    assert TrainingJob.objects.get().adapter.name.startswith("ft-")


def test_method_supervised_carries_the_hyperparameters(create, dataset, sent):
    response = create({"model": "tiny-llama", "training_file": dataset.id,
                       "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}})
    assert response.status_code == 200, response.json()
    assert TrainingJob.objects.get().hyperparameters["epochs"] == 1


def test_create_on_an_adapter_trains_its_next_version(create, dataset, acme, base, adapter_storage, sent):
    adapter = make_adapter(acme, base, name="support-bot")
    store_version(adapter, adapter_storage, 1)
    for model in ("support-bot", "support-bot@v1"):
        response = create({"model": model, "training_file": dataset.id})
        assert response.status_code == 200, response.json()
        job = TrainingJob.objects.get(pk=response.json()["id"])
        assert job.adapter == adapter and job.base_version.number == 1 and response.json()["model"] == "support-bot@v1"
        TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.CANCELLED)


def test_the_finished_job_names_its_version_as_chat_completions_takes_it(api, create, dataset, sent, acme,
                                                                          adapter_storage):
    job_id = create({"model": "tiny-llama", "training_file": dataset.id}).json()["id"]
    job = TrainingJob.objects.get(pk=job_id)
    version = store_version(job.adapter, adapter_storage, 1)
    TrainingStep.objects.create(job=job, step=1, gradients=10, micro_batches=1, tokens=37, compute_ms=1.0, loss=2.0)
    TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.SUCCEEDED, result_version=version,
                                                 finished_at=timezone.now())
    body = api.get(f"{URL}/{job_id}").json()
    assert body["fine_tuned_model"] == f"{job.adapter.name}@v1" and body["trained_tokens"] == 37
    assert isinstance(body["finished_at"], int)
    models = {m["id"] for m in api.get("/v1/models").json()["data"]}
    assert body["fine_tuned_model"] in models


# ---- hostile input: a 4xx in the one error shape, nothing written, no task sent ----------------------------------

@pytest.mark.parametrize("hyperparameters, param", [
    ({"n_epochs": 0}, "hyperparameters.n_epochs"), ({"n_epochs": 1e9}, "hyperparameters.n_epochs"),
    ({"n_epochs": -1}, "hyperparameters.n_epochs"), ({"n_epochs": 2.5}, "hyperparameters.n_epochs"),
    ({"n_epochs": "3"}, "hyperparameters.n_epochs"), ({"n_epochs": True}, "hyperparameters.n_epochs"),
    ({"batch_size": 0}, "hyperparameters.batch_size"), ({"batch_size": 10**6}, "hyperparameters.batch_size"),
    ({"n_epochs": 10**400}, "hyperparameters.n_epochs"),  # past a float: compared as an int, never converted
    ({"learning_rate_multiplier": 0}, "hyperparameters.learning_rate_multiplier"),
    ({"learning_rate_multiplier": 1e9}, "hyperparameters.learning_rate_multiplier"),
    ({"learning_rate_multiplier": None}, "hyperparameters.learning_rate_multiplier"),
    ({"warmup": 3}, "hyperparameters.warmup"),
])
def test_bad_hyperparameters(create, dataset, unchanged_db, sent, hyperparameters, param):
    refused(unchanged_db, sent, lambda: create({"model": "tiny-llama", "training_file": dataset.id,
                                                "hyperparameters": hyperparameters}), 400, param=param)


@pytest.mark.parametrize("extra, param", [
    ({"suffix": "Has Spaces"}, "suffix"), ({"suffix": "x" * 41}, "suffix"), ({"seed": -1}, "seed"),
    ({"seed": 2**40}, "seed"), ({"method": {"type": "dpo"}}, "method.type"), ({"integrations": [{"type": "wandb"}]},
                                                                         "integrations"),
    ({"metadata": {"team": "a"}}, "metadata"), ({"colour": "blue"}, "colour"), ({"hyperparameters": []},
                                                                                 "hyperparameters"),
    ({"validation_file": ["x"]}, "validation_file"), ({"training_file": "s3://bucket/data.jsonl"}, "training_file"),
    ({"hyperparameters": {"n_epochs": 1}, "method": {"type": "supervised", "supervised": {
        "hyperparameters": {"n_epochs": 2}}}}, "hyperparameters"),
])
def test_bad_fields(create, dataset, unchanged_db, sent, extra, param):
    body = {"model": "tiny-llama", "training_file": dataset.id, **extra}
    refused(unchanged_db, sent, lambda: create(body), 400, param=param)


def test_an_unknown_model_is_404_model_not_found(create, dataset, unchanged_db, sent):
    for model in ("gpt-4o-mini-2024-07-18", "no-such-adapter", "no-such-adapter@v3"):
        refused(unchanged_db, sent, lambda m=model: create({"model": m, "training_file": dataset.id}), 404,
                code="model_not_found", param="model")


def test_an_adapters_old_version_or_a_suffix_on_an_adapter_is_400(create, dataset, acme, base, adapter_storage,
                                                                   unchanged_db, sent):
    adapter = make_adapter(acme, base, name="support-bot")
    store_version(adapter, adapter_storage, 1)
    store_version(adapter, adapter_storage, 2)
    refused(unchanged_db, sent, lambda: create({"model": "support-bot@v1", "training_file": dataset.id}), 400,
            code="not_current_version", param="model")
    refused(unchanged_db, sent, lambda: create({"model": "support-bot", "training_file": dataset.id,
                                                "suffix": "x"}), 400, code="suffix_not_allowed", param="suffix")


def test_another_tenants_files_and_adapters_are_404(create, charlie_api, dataset, contoso, base, adapter_storage,
                                                     unchanged_db, sent):
    theirs = make_dataset(contoso)
    refused(unchanged_db, sent, lambda: create({"model": "tiny-llama", "training_file": theirs.id}), 404)
    refused(unchanged_db, sent, lambda: create({"model": "tiny-llama", "training_file": dataset.id,
                                                "validation_file": theirs.id}), 404)
    adapter = make_adapter(contoso, base, name="their-bot")
    store_version(adapter, adapter_storage, 1)
    refused(unchanged_db, sent, lambda: create({"model": "their-bot", "training_file": dataset.id}), 404,
            code="model_not_found")
    refused(unchanged_db, sent, lambda: create({"model": "tiny-llama", "training_file": "file-nope"}), 404)


def test_a_second_job_on_the_same_adapter_is_409(create, dataset, acme, base, adapter_storage, sent, unchanged_db):
    adapter = make_adapter(acme, base, name="support-bot")
    store_version(adapter, adapter_storage, 1)
    assert create({"model": "support-bot", "training_file": dataset.id}).status_code == 200
    sent.clear()
    refused(unchanged_db, sent, lambda: create({"model": "support-bot", "training_file": dataset.id}), 409,
            code="training_in_progress")


def test_a_file_in_use_by_a_job_cannot_be_deleted(api, create, dataset, validation, sent, unchanged_db):
    create({"model": "tiny-llama", "training_file": dataset.id, "validation_file": validation.id})
    sent.clear()
    for file_id in (dataset.id, validation.id):
        refused(unchanged_db, sent, lambda f=file_id: api.delete(f"/v1/files/{f}"), 409, code="dataset_in_use")


def test_a_key_without_the_train_scope(alice, acme, dataset, unchanged_db, sent):
    reader = key_client(create_key(alice, acme, scopes=("infer",))[1])
    refused(unchanged_db, sent, lambda: reader.post(URL, {"model": "tiny-llama", "training_file": dataset.id},
                                                     format="json"), 403)


# ---- list, events, checkpoints, cancel ---------------------------------------------------------------------------

@pytest.fixture
def jobs(acme, base, dataset):
    made = [make_job(acme, make_adapter(acme, base, name=f"bot-{i}"), dataset, status=TrainingJob.FAILED,
                     error_code="invalid_file", error_message="line 3: bad") for i in range(5)]
    return made


def test_list_pages_with_openais_cursor(api, jobs):
    newest_first = [j.id for j in sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)]
    seen, after = [], None
    while True:
        page = api.get(URL, {"limit": 2, **({"after": after} if after else {})}).json()
        assert page["object"] == "list"
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == newest_first
    failed = api.get(f"{URL}/{jobs[0].id}").json()
    assert failed["status"] == "failed" and failed["error"] == {"code": "invalid_file", "message": "line 3: bad",
                                                                "param": None}


def test_events_newest_first_with_metrics_and_a_cursor(api, acme, base, dataset):
    from training.jobs import event

    job = make_job(acme, make_adapter(acme, base), dataset, status=TrainingJob.RUNNING)
    event(job, "Started.")
    event(job, "Step 1/2: training loss 2.5000.", step=1, loss=2.5)
    event(job, "Step 2/2: training loss 2.2500, eval loss 2.4000.", step=2, loss=2.25, eval_loss=2.4)
    event(job, "Something odd.", level=TrainingEvent.WARNING)
    body = api.get(f"{URL}/{job.id}/events").json()
    assert [e["message"][:6] for e in body["data"]] == ["Someth", "Step 2", "Step 1", "Starte"]
    odd, second, first, started = body["data"]
    assert odd["level"] == "warn" and odd["type"] == "message" and odd["data"] == {}
    assert second["type"] == "metrics" and second["data"] == {"step": 2, "train_loss": 2.25, "valid_loss": 2.4}
    assert first["data"] == {"step": 1, "train_loss": 2.5}
    assert all(e["object"] == "fine_tuning.job.event" and e["id"].startswith("ftevent-") for e in body["data"])
    page = api.get(f"{URL}/{job.id}/events", {"limit": 2}).json()
    assert [e["id"] for e in page["data"]] == [odd["id"], second["id"]] and page["has_more"] is True
    rest = api.get(f"{URL}/{job.id}/events", {"limit": 2, "after": second["id"]}).json()
    assert [e["id"] for e in rest["data"]] == [first["id"], started["id"]] and rest["has_more"] is False
    for bad in ("12", "ftevent-x", "ftevent-" + "9" * 30):
        assert api.get(f"{URL}/{job.id}/events", {"after": bad}).status_code == 400


def test_checkpoints_newest_first_with_their_metrics(api, acme, base, dataset):
    job = make_job(acme, make_adapter(acme, base), dataset, status=TrainingJob.CANCELLED)
    for step, loss, eval_loss in ((2, 2.0, 2.2), (4, 1.5, None)):
        TrainingStep.objects.create(job=job, step=step, gradients=1, micro_batches=1, tokens=1, compute_ms=1.0,
                                    loss=loss, eval_loss=eval_loss)
        TrainingCheckpoint.objects.create(job=job, step=step, uri=f"file:///x/step-{step}", loss=loss)
    data = api.get(f"{URL}/{job.id}/checkpoints").json()["data"]
    assert [c["step_number"] for c in data] == [4, 2]
    assert data[1]["metrics"] == {"step": 2, "train_loss": 2.0, "valid_loss": 2.2}
    assert data[0]["fine_tuned_model_checkpoint"] == f"/v1/training/jobs/{job.id}/checkpoints/4/download"
    assert all(c["object"] == "fine_tuning.job.checkpoint" and c["fine_tuning_job_id"] == job.id for c in data)
    page = api.get(f"{URL}/{job.id}/checkpoints", {"after": data[0]["id"]}).json()
    assert [c["step_number"] for c in page["data"]] == [2]


def test_cancel(api, acme, base, dataset, sent, django_capture_on_commit_callbacks):
    queued = make_job(acme, make_adapter(acme, base, name="a"), dataset, status=TrainingJob.QUEUED,
                      node=make_node("n1"))
    running = make_job(acme, make_adapter(acme, base, name="b"), dataset, status=TrainingJob.RUNNING,
                       started_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(f"{URL}/{queued.id}/cancel").json()["status"] == "cancelled"
        body = api.post(f"{URL}/{running.id}/cancel").json()
    assert body["status"] == "running" and body["vajra"]["cancel_requested"] is True  # the node stops it
    assert ("revoke", [queued.id], {}) in sent


def test_charlie_gets_404_for_every_job_endpoint(charlie_api, acme, base, dataset, unchanged_db, sent):
    job = make_job(acme, make_adapter(acme, base), dataset, status=TrainingJob.RUNNING)
    calls = [lambda p=p: charlie_api.get(p) for p in (
        f"{URL}/{job.id}", f"{URL}/{job.id}/events", f"{URL}/{job.id}/checkpoints", f"{URL}?after={job.id}")]
    calls.append(lambda: charlie_api.post(f"{URL}/{job.id}/cancel"))
    for call in calls:
        error = refused(unchanged_db, sent, call, 404)
        assert "acme" not in error["message"]
    assert charlie_api.get(URL).json()["data"] == []
    assert Adapter.objects.filter(tenant__slug="contoso").count() == 0
