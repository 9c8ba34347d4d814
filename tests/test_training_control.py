"""The control side of a training job, driven by crafted contract messages: the file check and placement (the
runtime.train payload), started / step / checkpoint / finished recorded exactly once (a step is never metered
twice), the hot swap (new version current in one transaction, then moved onto the nodes holding the old one),
failures, cancels, and rollback."""

import hashlib
from datetime import timedelta

import pytest
from django.core.files.storage import storages
from django.utils import timezone

from adapters.models import Adapter, AdapterVersion
from adapters.storage_quota import storage_used
from fleet.models import ScaleUpSignal
from gpu_runtime.contract import (
    TASK_TRAIN,
    TASK_TRAINING_CHECKPOINT,
    TASK_TRAINING_FINISHED,
    TASK_TRAINING_STARTED,
    TASK_TRAINING_STEP,
    cancel_key,
)
from gpu_runtime.training_spec import TrainingSpec
from tests.adapter_files import write_adapter
from tests.factories import (
    make_adapter,
    make_base,
    make_dataset,
    make_job,
    make_node,
    make_principal,
    put_on_plan,
    store_version,
)
from tests.helpers import capture_sent
from training import hot_swap, jobs, tasks
from training.models import TrainingCheckpoint, TrainingJob, TrainingStep
from vajra.redis import get_redis

pytestmark = pytest.mark.usefixtures("adapter_storage")


@pytest.fixture
def sent(monkeypatch):
    return capture_sent(monkeypatch)


@pytest.fixture
def base(db):
    return make_base()


@pytest.fixture
def adapter(acme, base):
    return make_adapter(acme, base)


@pytest.fixture
def job(acme, adapter):
    return make_job(acme, adapter, make_dataset(acme), status=TrainingJob.VALIDATING)


def metering(loss=2.0, gradients=1792):
    return {"gradients": gradients, "micro_batches": 1, "tokens": 40, "compute_ms": 12.5, "loss": loss,
            "node": "n1"}


def train_messages(sent):
    return [(args, kw) for name, args, kw in sent if name == TASK_TRAIN]


# ---- file check and placement ------------------------------------------------------------------------------------

def test_a_valid_file_queues_the_job_and_sends_it_to_a_node(job, sent, commit, adapter_storage):
    node = make_node("n1")
    with commit():
        tasks.training_validate(job.id)

    job.refresh_from_db()
    assert job.status == TrainingJob.QUEUED and job.node == node
    [(args, kw)] = train_messages(sent)
    assert kw == {"queue": "node.n1", "task_id": job.id}
    spec = TrainingSpec.from_json(args[0])  # the runtime's own check passes
    assert (spec.job_id, spec.base_model, spec.adapter_id, spec.init) == (job.id, "tiny-llama", f"a{job.adapter_id}",
                                                                          None)
    assert spec.dataset_uri == f"file://{adapter_storage / job.dataset.storage_key}"
    assert spec.output_uri == f"file://{adapter_storage}/training/{job.id}"
    assert spec.checkpoint_every == 10 and spec.hyperparameters == job.hyperparameters
    assert [e.message.split(":")[0] for e in job.events.all()] == ["Files validated", "Sent to node n1."]

    with commit():  # a redelivered task does nothing
        tasks.training_validate(job.id)
        tasks.training_place(job.id)
    assert len(train_messages(sent)) == 1


def test_training_an_existing_version_sends_it_as_init(acme, adapter, adapter_storage, sent, commit, settings):
    settings.VAJRA_TRAIN_CHECKPOINT_EVERY = 3
    v1 = store_version(adapter, adapter_storage, 1)
    job = make_job(acme, adapter, make_dataset(acme), base_version=v1)
    make_node("n1")
    with commit():
        jobs.training_validate(job_id=job.id)
    spec = train_messages(sent)[0][0][0]
    assert spec["init"] == {"adapter_id": f"a{adapter.pk}", "version": 1, "tier": "cold",
                            "uri": f"file://{adapter_storage / v1.storage_key}"}
    assert spec["checkpoint_every"] == 3


def test_a_damaged_file_fails_the_job(job, sent, commit, adapter_storage):
    (adapter_storage / job.dataset.storage_key).write_bytes(b'{"prompt": "changed"}\n')
    make_node("n1")
    with commit():
        jobs.training_validate(job_id=job.id)
    job.refresh_from_db()
    assert (job.status, job.error_code) == (TrainingJob.FAILED, "invalid_file")
    assert "changed since it was uploaded" in job.error_message and sent == []


def test_a_missing_file_fails_the_job(job, sent, commit):
    storages["adapters"].delete(job.dataset.storage_key)
    with commit():
        jobs.training_validate(job_id=job.id)
    job.refresh_from_db()
    assert (job.status, job.error_code) == (TrainingJob.FAILED, "invalid_file") and "missing" in job.error_message


def test_no_node_keeps_it_queued_and_retries_then_gives_up(job, sent, commit, settings):
    make_node("elsewhere", base="another-base")
    with commit():
        jobs.training_validate(job_id=job.id)
    job.refresh_from_db()
    assert job.status == TrainingJob.QUEUED and job.node is None
    assert sent == [("control.training_place", [job.id], {"queue": "control", "countdown": 15})]
    assert ScaleUpSignal.objects.filter(base_model="tiny-llama").count() == 1

    with commit():  # the retry: still nothing; no second signal or event
        tasks.training_place(job.id)
    assert ScaleUpSignal.objects.count() == 1 and job.events.filter(message__startswith="Waiting").count() == 1
    assert len(sent) == 2

    node = make_node("n1")  # a node came up
    with commit():
        tasks.training_place(job.id)
    job.refresh_from_db()
    assert job.node == node and len(train_messages(sent)) == 1

    late = make_job(job.tenant, make_adapter(job.tenant, job.base_model, name="late"), job.dataset,
                    status=TrainingJob.QUEUED)
    TrainingJob.objects.filter(pk=late.pk).update(created_at=timezone.now() - timedelta(hours=2))
    node.delete()
    with commit():
        jobs.training_place(job_id=late.id)
    late.refresh_from_db()
    assert (late.status, late.error_code) == (TrainingJob.FAILED, "no_capacity") and late.finished_at


# ---- started, steps, checkpoints ---------------------------------------------------------------------------------

@pytest.fixture
def queued(job):
    node = make_node("n1")
    TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.QUEUED, node=node)
    job.refresh_from_db()
    return job


def test_the_runtime_tasks_are_registered_by_the_contract_names():
    from vajra.celery import app

    for name in (TASK_TRAINING_STARTED, TASK_TRAINING_STEP, TASK_TRAINING_CHECKPOINT, TASK_TRAINING_FINISHED,
                 "control.training_validate", "control.training_place"):
        assert name in app.tasks, name


def test_started(queued, commit):
    with commit():
        tasks.training_started(queued.id, "n1", {"total_steps": 9, "trainable_params": 1792, "resumed_after_step": 0,
                                                  "records": 10})
    queued.refresh_from_db()
    assert (queued.status, queued.node.name, queued.total_steps, queued.trainable_params) == (
        TrainingJob.RUNNING, "n1", 9, 1792)
    assert queued.started_at and queued.events.last().message.startswith("Started on node n1: 9 steps")

    started_at = queued.started_at
    tasks.training_started(queued.id, "n1", {"total_steps": 9, "trainable_params": 1792, "resumed_after_step": 5})
    queued.refresh_from_db()
    assert queued.started_at == started_at and "after step 5" in queued.events.last().message


def test_each_step_is_metered_once(queued):
    tasks.training_started(queued.id, "n1", {"total_steps": 9, "trainable_params": 1792})
    for step, loss in ((1, 2.5), (2, 2.25), (3, 2.0)):
        tasks.training_step(queued.id, step, metering(loss))
    events = queued.events.count()

    # The node died after its checkpoint at step 2; the redelivered job resumes and reports step 3 again.
    from training.progress import training_step

    assert training_step(job_id=queued.id, step=3, metering=metering(1.99)) is False
    assert training_step(job_id=queued.id, step=4, metering=metering(1.75)) is True

    queued.refresh_from_db()
    assert list(TrainingStep.objects.filter(job=queued).values_list("step", "loss")) == [
        (1, 2.5), (2, 2.25), (3, 2.0), (4, 1.75)]
    assert queued.trained_steps == 4 and queued.last_loss == 1.75
    assert queued.events.count() == events + 1, "a duplicate step adds no event"
    row = TrainingStep.objects.get(job=queued, step=4)
    assert (row.gradients, row.micro_batches, row.tokens, row.compute_ms, row.node) == (1792, 1, 40, 12.5, "n1")
    step_event = queued.events.last()
    assert (step_event.step, step_event.loss, step_event.message) == (4, 1.75, "Step 4/9: training loss 1.7500.")


def test_a_step_that_overtakes_the_started_message(queued):
    tasks.training_step(queued.id, 1, metering())
    queued.refresh_from_db()
    assert queued.status == TrainingJob.RUNNING and queued.started_at and queued.trained_steps == 1


@pytest.mark.parametrize("bad", [{"gradients": -1}, {"loss": "low"}, {"micro_batches": None}, {"tokens": True}])
def test_a_step_that_breaks_the_contract_is_dropped(queued, bad):
    from training.progress import training_step

    assert training_step(job_id=queued.id, step=1, metering={**metering(), **bad}) is False
    assert training_step(job_id=queued.id, step=0, metering=metering()) is False
    assert not TrainingStep.objects.exists()


def test_steps_of_a_job_cancelled_before_it_started_are_not_metered(job):
    TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.CANCELLED)
    tasks.training_step(job.id, 1, metering())
    tasks.training_step("ftjob_unknown", 1, metering())
    assert not TrainingStep.objects.exists()


def test_steps_after_the_finished_message_still_count(queued):
    """Several control workers: the last step may be handled after the result; it was computed, it counts."""
    tasks.training_started(queued.id, "n1", {"total_steps": 2})
    tasks.training_step(queued.id, 1, metering())
    TrainingJob.objects.filter(pk=queued.pk).update(status=TrainingJob.FAILED)
    tasks.training_step(queued.id, 2, metering())
    assert TrainingStep.objects.filter(job=queued).count() == 2


def test_checkpoints_are_recorded_once(queued):
    uri = f"file:///objects/training/{queued.id}/checkpoints/step-0000010"
    tasks.training_checkpoint(queued.id, 10, uri, 1.5)
    tasks.training_checkpoint(queued.id, 10, uri, 1.5)
    tasks.training_checkpoint(queued.id, 11, None, 1.5)  # breaks the contract: dropped
    assert list(TrainingCheckpoint.objects.values_list("step", "uri", "loss")) == [(10, uri, 1.5)]
    assert queued.events.filter(message="Checkpoint saved at step 10.").count() == 1


# ---- finished: the hot swap --------------------------------------------------------------------------------------

def write_output(root, job, *, r=4, modules=("q_proj", "v_proj")):
    final = write_adapter(root / "training" / job.id / "final", r=r, modules=modules)
    (final / "training.json").write_text("{}")  # the trainer's completion marker rides along
    weights = (final / "adapter_model.safetensors").read_bytes()
    return {"status": "succeeded", "error": None, "steps": 9, "final_loss": 0.5,
            "adapter": {"uri": f"file://{final}", "sha256": hashlib.sha256(weights).hexdigest(),
                        "size_bytes": len(weights), "rank": r, "alpha": 8, "target_modules": list(modules),
                        "dtype": "F32"}}


@pytest.fixture
def running(acme, adapter, adapter_storage):
    v1 = store_version(adapter, adapter_storage, 1)
    job = make_job(acme, adapter, make_dataset(acme), base_version=v1, status=TrainingJob.RUNNING,
                   started_at=timezone.now(), node=make_node("n1"))
    for step in (1, 2):
        tasks.training_step(job.id, step, metering())
    return job


def test_success_makes_a_new_version_current(running, adapter, adapter_storage, sent, commit):
    result = write_output(adapter_storage, running)
    with commit():
        tasks.training_finished(running.id, result)

    running.refresh_from_db()
    adapter.refresh_from_db()
    v2 = adapter.current_version
    assert (v2.number, v2.source, v2.status, v2.rank, v2.alpha, v2.target_modules, v2.dtype) == (
        2, AdapterVersion.TRAINING, AdapterVersion.READY, 4, 8.0, ["q_proj", "v_proj"], "F32")
    assert v2.storage_key == f"training/{running.id}/final" and v2.sha256 == result["adapter"]["sha256"]
    assert v2.size_bytes == result["adapter"]["size_bytes"] and v2.created_by == running.created_by
    assert (running.status, running.result_version, running.trained_steps, running.last_loss) == (
        TrainingJob.SUCCEEDED, v2, 2, 0.5)
    assert running.finished_at and "v2 is now current (was v1)" in running.events.last().message
    assert sent == [], "a cold adapter: nothing to move on the nodes"
    assert AdapterVersion.objects.filter(adapter=adapter, number=1).exists(), "versions are never overwritten"

    with commit():  # a second finished message (a redelivered job) changes nothing
        tasks.training_finished(running.id, result)
        tasks.training_finished(running.id, {"status": "failed", "error": {"code": "x", "message": "y"}})
    assert adapter.versions.count() == 2 and TrainingJob.objects.get(pk=running.pk).status == TrainingJob.SUCCEEDED


def test_the_swap_is_one_transaction(running, adapter, adapter_storage, monkeypatch, commit, sent):
    """Anything failing between the version row and the job's success leaves the database as it was."""
    result = write_output(adapter_storage, running)

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(hot_swap, "event", broken)
    with pytest.raises(RuntimeError), commit():
        tasks.training_finished(running.id, result)
    adapter.refresh_from_db()
    assert adapter.current_version.number == 1 and adapter.versions.count() == 1
    assert TrainingJob.objects.get(pk=running.pk).status == TrainingJob.RUNNING and sent == []


def test_hot_swap_on_the_nodes_that_pin_the_old_version(running, adapter, adapter_storage, sent, commit):
    Adapter.objects.filter(pk=adapter.pk).update(tier=Adapter.HOT)
    old = f"a{adapter.pk}:1"
    make_node("pinned-here", resident=[old, "a999:1"], on_device=2)
    make_node("host-only", host=[old])  # warm copies do not matter for a hot adapter
    make_node("bare")
    with commit():
        tasks.training_finished(running.id, write_output(adapter_storage, running))

    [(name, (ref, tier), kw)] = sent
    assert (name, ref["adapter_id"], ref["version"], ref["tier"], tier) == (
        "runtime.set_tier", f"a{adapter.pk}", 2, "hot", "hot")
    assert ref["uri"] == f"file://{adapter_storage}/training/{running.id}/final"
    assert kw["queue"] == "node.pinned-here"
    demote = kw["link"]  # the old version is let go only after the new one is pinned
    assert (demote["task"], demote["args"][0]["version"], demote["args"][1], demote["options"]["queue"],
            demote["immutable"]) == ("runtime.set_tier", 1, "warm", "node.pinned-here", True)


def test_warm_swap_prefetches_where_the_old_version_is(running, adapter, adapter_storage, sent, commit):
    Adapter.objects.filter(pk=adapter.pk).update(tier=Adapter.WARM)
    old = f"a{adapter.pk}:1"
    make_node("on-device", resident=[old], on_device=1)
    make_node("in-host-ram", host=[old])
    make_node("bare")
    with commit():
        tasks.training_finished(running.id, write_output(adapter_storage, running))
    assert sorted((name, args[0]["version"], kw["queue"]) for name, args, kw in sent) == [
        ("runtime.prefetch", 2, "node.in-host-ram"), ("runtime.prefetch", 2, "node.on-device")]


def test_a_swap_with_no_known_holder_uses_the_tiers_placement(running, adapter, adapter_storage, sent, commit):
    Adapter.objects.filter(pk=adapter.pk).update(tier=Adapter.HOT)
    make_node("roomy", slots=10, pinned=0)
    with commit():
        tasks.training_finished(running.id, write_output(adapter_storage, running))
    assert [(name, args[0]["version"], args[1], kw["queue"]) for name, args, kw in sent] == [
        ("runtime.set_tier", 2, "hot", "node.roomy")]


def test_the_first_version_of_a_new_adapter(acme, adapter, adapter_storage, sent, commit):
    job = make_job(acme, adapter, make_dataset(acme), status=TrainingJob.RUNNING, started_at=timezone.now())
    with commit():
        tasks.training_finished(job.id, write_output(adapter_storage, job, r=8, modules=("q_proj", "k_proj")))
    adapter.refresh_from_db()
    assert adapter.current_version.number == 1 and adapter.current_version.rank == 8
    assert TrainingJob.objects.get(pk=job.pk).result_version == adapter.current_version


@pytest.mark.parametrize("damage, code", [
    (lambda final, result: (final / "adapter_model.safetensors").unlink(), "output_missing"),
    (lambda final, result: result["adapter"].update(uri="file:///etc/other-tenant/final"), "output_outside_job"),
    (lambda final, result: result["adapter"].update(sha256="0" * 64), "output_mismatch"),
    (lambda final, result: (final / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 99}'), "bad_rank"),
])
def test_a_bad_output_fails_the_job_and_keeps_the_current_version(running, adapter, adapter_storage, sent, commit,
                                                                   damage, code):
    result = write_output(adapter_storage, running)
    damage(adapter_storage / "training" / running.id / "final", result)
    with commit():
        tasks.training_finished(running.id, result)
    running.refresh_from_db()
    adapter.refresh_from_db()
    assert (running.status, running.error_code) == (TrainingJob.FAILED, code)
    assert adapter.current_version.number == 1 and adapter.versions.count() == 1 and sent == []


def test_an_output_past_the_storage_quota_fails_the_job_and_keeps_its_checkpoint(running, adapter, adapter_storage,
                                                                                  sent, commit, acme):
    result = write_output(adapter_storage, running)
    put_on_plan(acme, storage_max_bytes=storage_used(acme))  # full: the trained version does not fit
    with commit():
        tasks.training_finished(running.id, result)
    running.refresh_from_db()
    adapter.refresh_from_db()
    assert (running.status, running.error_code) == (TrainingJob.FAILED, "storage_quota_exceeded")
    assert "storage" in running.error_message
    assert adapter.current_version.number == 1 and adapter.versions.count() == 1 and sent == []
    assert (adapter_storage / "training" / running.id / "final" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("result, status, code", [
    ({"status": "failed", "error": {"code": "dataset_unreadable", "message": "cannot read"}, "adapter": None,
      "steps": 2}, TrainingJob.FAILED, "dataset_unreadable"),
    ({"status": "cancelled", "error": None, "adapter": None, "steps": 2}, TrainingJob.CANCELLED, ""),
    ({"status": "exploded"}, TrainingJob.FAILED, "training_failed"),
    ("not even an object", TrainingJob.FAILED, "training_failed"),
])
def test_failed_and_cancelled(running, adapter, result, status, code, sent, commit):
    with commit():
        tasks.training_finished(running.id, result)
    running.refresh_from_db()
    assert (running.status, running.error_code) == (status, code) and running.finished_at
    assert running.result_version is None and adapter.versions.count() == 1
    if status == TrainingJob.CANCELLED:
        assert running.events.last().message == "Cancelled after step 2."
    else:
        assert running.events.last().level == "error"


def test_started_for_a_job_no_node_was_given_is_ignored(job):
    tasks.training_started(job.id, "n1", {"total_steps": 9})
    tasks.training_started("ftjob_unknown", "n1", {})
    job.refresh_from_db()
    assert job.status == TrainingJob.VALIDATING and job.started_at is None


def test_started_for_a_job_cancelled_while_queued_tells_the_node_again(job, commit):
    TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.CANCELLED, node=make_node("n1"))
    get_redis().delete(cancel_key(job.id))
    with commit():
        tasks.training_started(job.id, "n1", {"total_steps": 9})
    assert TrainingJob.objects.get(pk=job.pk).status == TrainingJob.CANCELLED
    assert get_redis().get(cancel_key(job.id)) == b"1"


def test_a_whole_job_by_messages(acme, alice, adapter, adapter_storage, sent, commit):
    """Create -> validate -> place -> started -> steps -> checkpoint -> finished, the way the runtime sends them."""
    make_node("n1")
    with commit():
        job = jobs.training_create(principal=make_principal(acme, alice), base_model=adapter.base_model,
                                       adapter_name="support-bot", dataset_ref=make_dataset(acme).id,
                                       hyperparameters={"learning_rate": 1e-3, "epochs": 1, "batch_size": 4,
                                                        "rank": 4})
    with commit():
        tasks.training_validate(job.id)
    assert [name for name, _, _ in sent] == ["control.training_validate", TASK_TRAIN]
    tasks.training_started(job.id, "n1", {"total_steps": 3, "trainable_params": 1792})
    for step in (1, 2, 3):
        tasks.training_step(job.id, step, metering(3.0 - step))
    tasks.training_checkpoint(job.id, 3, f"file://{adapter_storage}/training/{job.id}/checkpoints/step-0000003", 0.0)
    with commit():
        tasks.training_finished(job.id, write_output(adapter_storage, job))
    job.refresh_from_db()
    assert (job.status, job.trained_steps, job.result_version.number) == (TrainingJob.SUCCEEDED, 3, 1)
    assert job.steps.count() == 3 and job.checkpoints.count() == 1


# ---- rollback ----------------------------------------------------------------------------------------------------

def test_rollback_of_a_hot_adapter_moves_the_nodes_too(acme, alice, adapter, adapter_storage, sent, commit):
    store_version(adapter, adapter_storage, 1)
    store_version(adapter, adapter_storage, 2)
    Adapter.objects.filter(pk=adapter.pk).update(tier=Adapter.HOT)
    make_node("pinned-here", resident=[f"a{adapter.pk}:2"], on_device=1)
    with commit():
        hot_swap.adapter_rollback(principal=make_principal(acme, alice), adapter_name="support-bot", version_number=1)
    adapter.refresh_from_db()
    assert adapter.current_version.number == 1
    [(name, (ref, tier), kw)] = sent
    assert (name, ref["version"], tier, kw["queue"]) == ("runtime.set_tier", 1, "hot", "node.pinned-here")
    assert (kw["link"]["args"][0]["version"], kw["link"]["args"][1]) == (2, "warm")


def test_rollback_locks_the_adapter(acme, alice, adapter, adapter_storage, monkeypatch):
    """Two swaps at once (a rollback and a finished job) must not interleave: the adapter row is locked."""
    store_version(adapter, adapter_storage, 1)
    store_version(adapter, adapter_storage, 2)
    locked = []
    real = hot_swap.access_adapter

    def spy(**kwargs):
        locked.append(kwargs.get("lock"))
        return real(**kwargs)

    monkeypatch.setattr(hot_swap, "access_adapter", spy)
    hot_swap.adapter_rollback(principal=make_principal(acme, alice), adapter_name="support-bot", version_number=1)
    assert locked == [True]
