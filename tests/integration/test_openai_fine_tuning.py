"""The official ``openai`` package, unmodified, fine-tunes through VAJRA against real processes (daphne, a SmolLM2
runtime node, the control worker): files up (a malformed one refused line by line), a job with a validation file
for one epoch, its events with the eval loss, the fine-tuned model answering in chat.completions, the job list
paged by the client, a cancelled job, and a file in use that cannot be deleted."""

import json
import time

import openai
import pytest
from openai import OpenAI

from tests.factories import create_key
from tests.processes import wait_until_serving
from training.models import TrainingStep

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"


def chat(question, answer):
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


TRAIN = [chat(f"What is the code word number {i}?", f"The code word number {i} is pelican{i}.") for i in range(4)]
VALID = [chat(f"What is the code word number {i}?", f"The code word number {i} is pelican{i}.") for i in (5, 6)]


def jsonl(records):
    return ("\n".join(json.dumps(r) for r in records) + "\n").encode()


@pytest.fixture
def client(daphne, runtime_node, control_worker, alice, acme):
    wait_until_serving(MODEL, runtime_node, 180)
    _, secret = create_key(alice, acme)
    return OpenAI(base_url=f"{daphne}/v1", api_key=secret, max_retries=0, timeout=120)


def wait_job(client, job_id, timeout=420):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(1)


def test_fine_tuning_with_the_openai_sdk(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("bad.jsonl", b'{"messages": []}\nnot json\n'), purpose="fine-tune")
    error = refused.value.body
    assert error["code"] == "invalid_dataset" and [line["line"] for line in error["lines"]] == [1, 2]

    training = client.files.create(file=("train.jsonl", jsonl(TRAIN)), purpose="fine-tune")
    validation = client.files.create(file=("valid.jsonl", jsonl(VALID)), purpose="fine-tune")
    assert training.id.startswith("file-") and training.status == "processed" and training.bytes == len(jsonl(TRAIN))
    assert client.files.content(training.id).content == jsonl(TRAIN)
    assert {f.id for f in client.files.list()} == {training.id, validation.id}

    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=training.id, validation_file=validation.id, suffix="pelican", seed=7,
        hyperparameters={"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 10})
    assert job.status == "validating_files" and job.hyperparameters.n_epochs == 1 and job.seed == 7
    with pytest.raises(openai.ConflictError):  # a file a job is using stays
        client.files.delete(validation.id)

    done = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft-pelican-{job.id[-12:]}@v1" and done.trained_tokens > 0
    steps = list(TrainingStep.objects.filter(job_id=job.id).order_by("step"))
    assert [s.step for s in steps] == [1, 2]  # 4 records in batches of 2, one epoch
    assert steps[0].eval_loss is None and steps[1].eval_loss > 0  # measured once, after the epoch
    assert all(s.learning_rate == pytest.approx(1e-3) for s in steps)  # 10 x 1e-4, constant

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=2))  # the client follows the pages
    metrics = [e for e in events if e.type == "metrics" and e.data and "valid_loss" in e.data]
    assert [e.data["step"] for e in metrics] == [2]
    assert metrics[0].data["valid_loss"] == pytest.approx(steps[1].eval_loss)
    assert done.model_extra["vajra"]["last_eval_loss"] == pytest.approx(steps[1].eval_loss)
    list(client.fine_tuning.jobs.checkpoints.list(job.id))  # answers in OpenAI's shape (2 steps: none written)

    reply = client.chat.completions.create(model=done.fine_tuned_model, temperature=0, max_tokens=12,
                                           messages=[{"role": "user", "content": "What is the code word number 1?"}])
    assert reply.choices[0].message.content and reply.model_extra["vajra"]["adapter"] == done.fine_tuned_model

    second = client.fine_tuning.jobs.create(model=done.fine_tuned_model.split("@")[0], training_file=training.id,
                                            hyperparameters={"n_epochs": 3})
    cancelled = client.fine_tuning.jobs.cancel(second.id)
    assert cancelled.status in ("cancelled", "running")
    assert wait_job(client, second.id).status == "cancelled"
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == [second.id, job.id]

    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training.id)
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model=MODEL, training_file=training.id, hyperparameters={"n_epochs": 0})
    assert client.files.delete(validation.id).deleted is True
