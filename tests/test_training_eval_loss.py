"""A validation file on the control side: our train API takes it (another tenant's is a 404, nothing written), the
file check reads it too and the runtime.train payload names it; the eval loss and learning rate a node reports
with a step are recorded (step row, job, event) and shown: the job's API, its websocket snapshot, and the job
page's loss chart (a dashed eval series) and figures."""

import json

import pytest
from django.test import Client
from django.urls import reverse

from gpu_runtime.contract import TASK_TRAIN
from gpu_runtime.training_spec import TrainingSpec
from tests.factories import make_adapter, make_dataset, make_job, make_node
from tests.helpers import capture_sent, refused
from training import jobs, tasks
from training.consumers import job_snapshot
from training.models import TrainingJob, TrainingStep
from training.progress import training_step
from training.views import loss_chart

pytestmark = pytest.mark.usefixtures("adapter_storage")


@pytest.fixture
def sent(monkeypatch):
    return capture_sent(monkeypatch)


@pytest.fixture
def validation(acme, base):
    return make_dataset(acme, records=3)


def metering(loss, **extra):
    return {"gradients": 1792, "micro_batches": 1, "tokens": 40, "compute_ms": 12.5, "loss": loss, "node": "n1",
            **extra}


def test_the_train_api_takes_a_validation_dataset_and_sends_it_to_the_node(post_train, dataset, validation, sent,
                                                                            commit, adapter_storage):
    response = post_train(dataset=dataset.id, validation_dataset=validation.id)
    assert response.status_code == 201, response.json()
    assert response.json()["validation_dataset"] == validation.id and response.json()["last_eval_loss"] is None
    job = TrainingJob.objects.get()
    assert job.validation_dataset == validation
    assert "validated on 3 records after each epoch" in job.events.first().message
    make_node("n1")
    sent.clear()
    with commit():
        tasks.training_validate(job.id)
    [(name, args, _)] = [m for m in sent if m[0] == TASK_TRAIN]
    spec = TrainingSpec.from_json(args[0])
    assert spec.validation_uri == f"file://{adapter_storage / validation.storage_key}"


def test_without_a_validation_dataset_the_node_gets_none(post_train, dataset, sent, commit):
    post_train(dataset=dataset.id)
    make_node("n1")
    sent.clear()
    with commit():
        tasks.training_validate(TrainingJob.objects.get().id)
    [args] = [m[1] for m in sent if m[0] == TASK_TRAIN]
    assert TrainingSpec.from_json(args[0]).validation_uri is None


def test_another_tenants_or_an_unknown_validation_dataset_is_404(post_train, dataset, contoso, unchanged_db, sent):
    theirs = make_dataset(contoso)
    for ref in (theirs.id, "ds_nope"):
        error = refused(unchanged_db, sent, lambda r=ref: post_train(dataset=dataset.id, validation_dataset=r), 404)
        assert "contoso" not in error["message"]
    refused(unchanged_db, sent, lambda: post_train(dataset=dataset.id, validation_dataset=["x"]), 400,
            param="validation_dataset")


def test_a_validation_dataset_larger_than_the_training_dataset_is_400(post_train, acme, dataset, unchanged_db, sent):
    # its passes bill no gradients: bounded by the training data, so it cannot buy free compute
    bigger = make_dataset(acme, records=dataset.records + 1)
    for path in ("train", "train/estimate"):
        refused(unchanged_db, sent, lambda p=path: post_train(dataset=dataset.id, validation_dataset=bigger.id, path=p),
                400, code="validation_too_large", param="validation_dataset")


def test_a_damaged_validation_file_fails_the_file_check(post_train, dataset, validation, sent, commit,
                                                        adapter_storage):
    post_train(dataset=dataset.id, validation_dataset=validation.id)
    (adapter_storage / validation.storage_key).write_bytes(b'{"prompt": "changed"}\n')
    with commit():
        jobs.training_validate(job_id=TrainingJob.objects.get().id)
    job = TrainingJob.objects.get()
    assert (job.status, job.error_code) == (TrainingJob.FAILED, "invalid_file")
    assert validation.id in job.error_message


def test_schedule_hyperparameters_through_the_train_api(post_train, dataset, unchanged_db, sent):
    response = post_train(dataset=dataset.id, hp={"lr_scheduler": "cosine", "warmup_ratio": 0.1})
    assert response.status_code == 201, response.json()
    hp = TrainingJob.objects.get().hyperparameters
    assert (hp["lr_scheduler"], hp["warmup_ratio"], hp["warmup_steps"]) == ("cosine", 0.1, 0)
    TrainingJob.objects.update(status=TrainingJob.CANCELLED)
    sent.clear()
    for bad, param in (({"lr_scheduler": "step"}, "hyperparameters.lr_scheduler"),
                       ({"warmup_steps": -2}, "hyperparameters.warmup_steps"),
                       ({"warmup_ratio": 2}, "hyperparameters.warmup_ratio")):
        refused(unchanged_db, sent, lambda b=bad: post_train(dataset=dataset.id, hp=b), 400, param=param)


@pytest.fixture
def running(acme, base, dataset, validation):
    node = make_node("n1")
    job = make_job(acme, make_adapter(acme, base), dataset, status=TrainingJob.RUNNING, node=node,
                   validation_dataset=validation, total_steps=4)
    return job


def test_a_steps_eval_loss_and_learning_rate_are_recorded(running):
    assert training_step(job_id=running.id, step=1, metering=metering(2.5, learning_rate=5e-5)) is True
    assert training_step(job_id=running.id, step=2, metering=metering(2.0, learning_rate=1e-4, eval_loss=2.2))
    assert training_step(job_id=running.id, step=3, metering=metering(1.8, learning_rate=1e-4))
    running.refresh_from_db()
    assert running.last_loss == 1.8 and running.last_eval_loss == 2.2
    rows = list(TrainingStep.objects.filter(job=running).values_list("step", "learning_rate", "eval_loss"))
    assert rows == [(1, 5e-5, None), (2, 1e-4, 2.2), (3, 1e-4, None)]
    step_event = running.events.get(step=2)
    assert step_event.message == "Step 2/4: training loss 2.0000, eval loss 2.2000." and step_event.eval_loss == 2.2


@pytest.mark.parametrize("bad", [{"eval_loss": "low"}, {"eval_loss": True}, {"learning_rate": -1},
                                 {"learning_rate": "fast"}])
def test_a_step_with_a_bad_eval_loss_or_rate_is_dropped(running, bad):
    assert training_step(job_id=running.id, step=1, metering=metering(2.0, **bad)) is False
    assert not TrainingStep.objects.exists()


def test_the_job_shows_its_eval_losses(running, alice, api):
    for step, loss, eval_loss in ((1, 2.5, None), (2, 2.0, 2.2), (3, 1.8, None), (4, 1.6, 1.9)):
        measured = {"eval_loss": eval_loss} if eval_loss else {}
        training_step(job_id=running.id, step=step, metering=metering(loss, learning_rate=1e-4, **measured))
    running.refresh_from_db()
    snapshot = job_snapshot(running)
    assert snapshot["eval_losses"] == [[2, 2.2], [4, 1.9]] and snapshot["last_eval_loss"] == 1.9
    assert snapshot["losses"] == [[1, 2.5], [2, 2.0], [3, 1.8], [4, 1.6]]
    assert api.get(f"/v1/training/jobs/{running.id}").json()["last_eval_loss"] == 1.9
    events = api.get(f"/v1/training/jobs/{running.id}/events").json()["data"]
    assert [e["eval_loss"] for e in events if e["step"] in (2, 4)] == [2.2, 1.9]

    client = Client()
    client.force_login(alice)
    html = client.get(reverse("training-job", args=[running.id])).content.decode()
    marker = '<script id="tj-chart-data" type="application/json">'
    start = html.index(marker) + len(marker)
    chart = json.loads(html[start:html.index("</script>", start)])
    assert chart == loss_chart(snapshot["losses"], 4, snapshot["eval_losses"])
    assert chart["series"][1] == {"label": "Eval loss", "dash": True, "values": [None, 2.2, None, 1.9]}
    figures = html[html.index('id="tj-figures"'):]
    assert figures.startswith('id="tj-figures" data-eval="true"')
    assert '<td class="num">2</td><td class="num">2.0000</td><td class="num">2.2000</td>' in figures
    assert '<th scope="col" class="num">Eval loss</th>' in html


def test_a_job_without_eval_losses_has_one_series():
    assert [s["label"] for s in loss_chart([[1, 2.0]], 3)["series"]] == ["Training loss"]
