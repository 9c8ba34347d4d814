"""Learning-rate schedules (gpu_runtime.training_spec.Hyperparameters.learning_rate_at) and what the trainer does with
them, the validation file's eval loss after each epoch, and the checkpoint a cancelled job keeps: on the tiny
Llama, driving a TrainingRun's micro-steps directly (no engine thread), reading the rate the optimizer used at each
step from the optimizer itself."""

import math
import uuid

import pytest
import torch
from safetensors.torch import load_file

from gpu_runtime import trainer
from gpu_runtime.contract import ContractError
from gpu_runtime.lora import SlotPool
from gpu_runtime.training_checkpoints import read_checkpoint, write_checkpoint
from gpu_runtime.training_spec import Hyperparameters, TrainingSpec
from tests.runtime_fixtures import BASE_FACTS, runtime_model, tiny_base_model, words
from tests.training_runs import ANSWERS, PROMPTS, learnable_base, write_dataset


def hp(**values):
    return Hyperparameters.from_json({"learning_rate": 0.01, **values})


# ---- the formula ------------------------------------------------------------------------------------------------

def test_constant_without_warmup_is_the_rate_at_every_step():
    assert [hp().learning_rate_at(s, 5) for s in range(1, 6)] == [0.01] * 5


def test_warmup_steps_ramp_linearly_and_never_train_at_zero():
    h = hp(warmup_steps=3)
    assert [h.learning_rate_at(s, 10) for s in (1, 2, 3)] == pytest.approx([0.0025, 0.005, 0.0075])
    assert h.learning_rate_at(4, 10) == 0.01 and h.learning_rate_at(10, 10) == 0.01


@pytest.mark.parametrize("scheduler", ["linear", "cosine"])
def test_decay_after_warmup_follows_the_formula(scheduler):
    h = hp(lr_scheduler=scheduler, warmup_steps=2)
    total = 12
    for step in range(3, total + 1):
        progress = (step - 3) / (total - 2)
        factor = 1 - progress if scheduler == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        assert h.learning_rate_at(step, total) == pytest.approx(0.01 * factor)
    assert h.learning_rate_at(3, total) == pytest.approx(0.01)  # the first step after warmup: the full rate
    assert 0 < h.learning_rate_at(total, total) < h.learning_rate_at(total - 1, total)  # the last: above zero


def test_warmup_ratio_is_a_share_of_the_steps_rounded_up():
    h = hp(lr_scheduler="linear", warmup_ratio=0.25)
    assert h.warmup(10) == 3 and h.warmup(4) == 1 and h.warmup(1) == 1
    assert h.learning_rate_at(3, 10) == pytest.approx(0.0075) and h.learning_rate_at(4, 10) == pytest.approx(0.01)
    assert hp(warmup_steps=50).warmup(8) == 8  # never more warmup than steps


@pytest.mark.parametrize("values, field", [
    ({"lr_scheduler": "exponential"}, "lr_scheduler"), ({"lr_scheduler": 3}, "lr_scheduler"),
    ({"warmup_steps": -1}, "warmup_steps"), ({"warmup_steps": 1.5}, "warmup_steps"),
    ({"warmup_steps": 10**9}, "warmup_steps"), ({"warmup_ratio": 1.5}, "warmup_ratio"),
    ({"warmup_ratio": "0.1"}, "warmup_ratio"), ({"warmup_ratio": 0.1, "warmup_steps": 3}, "warmup_ratio"),
])
def test_bad_schedule_values_are_refused_naming_the_field(values, field):
    with pytest.raises(ContractError, match=f"hyperparameters.{field}"):
        Hyperparameters.from_json(values)


def test_the_schedule_round_trips_through_the_job_json():
    h = hp(lr_scheduler="cosine", warmup_ratio=0.1)
    assert Hyperparameters.from_json(h.to_json()) == h


# ---- the trainer ------------------------------------------------------------------------------------------------

def records(pairs=None):
    return [{"prompt": words(p), "completion": words(a)} for p, a in (pairs or zip(PROMPTS, ANSWERS, strict=True))]


def make_run(tmp_path, *, validation=None, checkpoint_every=100, **values):
    hyperparameters = {"learning_rate": 0.01, "epochs": 3, "batch_size": 4, "micro_batch_size": 2, "rank": 4,
                       "alpha": 8, "target_modules": ["q_proj", "v_proj"], "seed": 3, **values}
    job_id = f"ftjob_{uuid.uuid4().hex[:24]}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = TrainingSpec.from_json({
        "job_id": job_id, "base_model": "tiny-llama", "adapter_id": "a1",
        "dataset_uri": write_dataset(tmp_path / "train.jsonl", records()),
        "validation_uri": write_dataset(tmp_path / "valid.jsonl", validation) if validation else None,
        "output_uri": "file://" + str(tmp_path / "out" / job_id), "hyperparameters": hyperparameters,
        "checkpoint_every": checkpoint_every, "max_seq_len": 64})
    model = runtime_model(learnable_base())
    pool = SlotPool(model, BASE_FACTS, buckets={4: 2})
    return trainer.prepare(spec, base=tiny_base_model(model), pool=pool, facts=BASE_FACTS)


def run_through(run, *, steps=None):
    """Micro-steps until the run ends (or has done ``steps`` optimizer steps); the steps' metering. The other
    events (checkpoints, the end) stay queued for ``trainer.drive``."""
    while not run.finished and (steps is None or run.step < steps or run._eval is not None):
        run.micro_step()
    reported, others = [], []
    while not run.events.empty():
        event = run.events.get()
        if event[0] == "step":
            reported.append((event[1], event[2]))
        else:
            others.append(event)
    for event in others:
        run.events.put(event)
    return reported


@pytest.mark.parametrize("scheduler", ["constant", "linear", "cosine"])
def test_the_optimizer_runs_each_step_at_the_schedules_rate(tmp_path, scheduler):
    run = make_run(tmp_path, epochs=8, batch_size=2, micro_batch_size=1, lr_scheduler=scheduler, warmup_steps=3)
    used = []
    run.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: used.append(
        [group["lr"] for group in optimizer.param_groups]))
    reported = run_through(run)
    assert run.total_steps == 16 and len(used) == 16
    expected = [run.hp.learning_rate_at(step, 16) for step in range(1, 17)]
    assert [rates[0] for rates in used] == pytest.approx(expected, rel=1e-12)
    assert all(len(set(rates)) == 1 for rates in used)  # every parameter group alike
    assert [m["learning_rate"] for _, m in reported] == pytest.approx(expected, rel=1e-12)


def test_a_resumed_job_goes_on_with_the_schedule_where_it_stopped(tmp_path):
    first = make_run(tmp_path, epochs=6, lr_scheduler="cosine", warmup_steps=1, checkpoint_every=2)
    run_through(first, steps=4)
    while not first.events.empty():  # what drive does with them: the checkpoints at steps 2 and 4
        write_checkpoint(first, first.events.get()[1])
    second = trainer.prepare(first.spec, base=tiny_base_model(first.model), pool=first.pool, facts=BASE_FACTS)
    assert second.step == 4
    used = []
    second.optimizer.register_step_pre_hook(lambda o, a, k: used.append(o.param_groups[0]["lr"]))
    run_through(second)
    assert used == pytest.approx([second.hp.learning_rate_at(s, 6) for s in (5, 6)], rel=1e-12)


def test_eval_loss_is_measured_after_each_epoch_and_equals_the_loss_of_the_same_records(tmp_path):
    # the validation file is the training file and a step takes every record: the eval loss after step k is the
    # loss of the same records on the same weights as step k+1's training loss (both averaged over answer tokens)
    run = make_run(tmp_path, validation=records(), epochs=4)
    reported = run_through(run)
    assert [step for step, _ in reported] == [1, 2, 3, 4]
    evals = [m.get("eval_loss") for _, m in reported]
    assert all(e is not None for e in evals)
    train = [m["loss"] for _, m in reported]
    for k in range(3):
        assert evals[k] == pytest.approx(train[k + 1], rel=1e-4)
    assert evals[-1] < evals[0]  # it learns the records
    assert run.last_eval_loss == evals[-1]


def test_eval_loss_only_at_an_epochs_last_step_and_never_without_a_validation_file(tmp_path):
    held_out = records([([33, 34], [80, 81, 82]), ([35, 36, 37], [90, 91])])  # no t2x: t2 is EOS
    run = make_run(tmp_path / "a", validation=held_out, epochs=2, batch_size=2, micro_batch_size=1)
    reported = run_through(run)
    assert [(s, "eval_loss" in m) for s, m in reported] == [(1, False), (2, True), (3, False), (4, True)]
    assert all(m["eval_loss"] > 0 for _, m in reported if "eval_loss" in m)
    plain = run_through(make_run(tmp_path / "b", epochs=2, batch_size=2, micro_batch_size=1))
    assert not any("eval_loss" in m for _, m in plain)


def test_a_bad_validation_file_fails_the_job_before_it_starts_naming_it(tmp_path):
    with pytest.raises(trainer.TrainingFailed) as refused:
        make_run(tmp_path, validation=[{"prompt": "x"}])
    assert refused.value.code == "invalid_validation_file" and "validation file" in refused.value.message


def test_a_cancelled_job_keeps_a_checkpoint_of_where_it_got_to(tmp_path):
    run = make_run(tmp_path, epochs=10, batch_size=2, micro_batch_size=1, checkpoint_every=4)
    run_through(run, steps=6)  # a checkpoint at step 4, then two more steps
    run.cancel()
    written = []
    result = trainer.drive(run, on_step=lambda *a: None, on_progress=lambda p: None,
                           on_checkpoint=lambda step, uri, loss: written.append((step, uri, loss)))
    assert result["status"] == "cancelled" and result["steps"] == 6
    assert [step for step, _, _ in written] == [4, 6]
    saved = read_checkpoint(written[-1][1])
    assert saved.step == 6 and written[-1][2] == run.last_loss
    weights = load_file(written[-1][1].removeprefix("file://") + "/adapter_model.safetensors")
    assert all(torch.equal(weights[name], tensor) for name, tensor in run.lora.tensors().items())


def test_a_job_cancelled_right_after_a_checkpoint_writes_no_second_one(tmp_path):
    run = make_run(tmp_path, epochs=10, batch_size=2, micro_batch_size=1, checkpoint_every=3)
    run_through(run, steps=3)
    run.cancel()
    written = []
    trainer.drive(run, on_step=lambda *a: None, on_progress=lambda p: None,
                  on_checkpoint=lambda step, uri, loss: written.append(step))
    assert written == [3]
