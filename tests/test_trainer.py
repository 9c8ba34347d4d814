"""Fine-tuning on the engine's resident tiny Llama (gpu_runtime.trainer, gpu_runtime.training_tasks.run_job):
real learning, metering once per step, checkpoints and resume, cancel, inference first, and the trained
version served beside the old one."""

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest
import torch

from gpu_runtime.adapter_store import AdapterStore
from gpu_runtime.contract import TASK_TRAINING_FINISHED, TASK_TRAINING_STARTED, TASK_TRAINING_STEP, cancel_key
from gpu_runtime.engine import Engine
from gpu_runtime.generation import AdapterRef, GenerationRequest, SamplingParams
from gpu_runtime.lora import SlotPool
from gpu_runtime.streams import StreamWriter, read_events
from gpu_runtime.training_tasks import run_job
from tests.runtime_fixtures import BASE_FACTS, runtime_model, save_peft_adapter, tiny_base, tiny_base_model, words
from tests.training_runs import ANSWERS, PROMPTS, learnable_base, memorize_records, spec_for, write_dataset


@pytest.fixture
def node(tmp_path, redis_client):
    """A tiny node: base model, slot pool, adapter store and a running engine (returns a factory)."""
    made = []

    def make(**engine_kwargs):
        model = runtime_model(learnable_base())
        pool = SlotPool(model, BASE_FACTS, buckets={4: 2, 8: 4, 16: 2})
        store = AdapterStore(pool, BASE_FACTS, disk_dir=tmp_path / f"disk{len(made)}")
        base = tiny_base_model(model)
        engine = Engine(base, store, StreamWriter(redis_client, ttl_seconds=60), max_batch=8, **engine_kwargs)
        engine.start()
        made.append((engine, store))
        return engine, store, base

    yield make
    for engine, store in made:
        engine.stop()
        store.shutdown()


class Recorder:
    def __init__(self):
        self.messages = []

    def __call__(self, name, *args):
        self.messages.append((name, args))

    def named(self, name):
        return [args for n, args in self.messages if n == name]


def greedy(engine, prompt_ids, adapter=None, max_tokens=8):
    request = GenerationRequest(request_id=f"req_{uuid.uuid4().hex}", prompt=words(prompt_ids), adapter=adapter,
                               sampling=SamplingParams(max_tokens=max_tokens, temperature=0))
    handle = engine.submit(request)
    final = handle.wait(60)
    assert final["finish_reason"] in ("stop", "length"), final
    return handle, final


def wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.0005)


def generated_text(redis_client, request_id):
    return "".join(data["text"] for _, kind, data in read_events(redis_client, request_id) if kind == "delta")


def test_training_learns_the_dataset_and_the_new_version_generates_it(node, tmp_path, redis_client):
    engine, store, base = node()
    spec = spec_for(tmp_path, write_dataset(tmp_path / "data.jsonl", memorize_records()))
    send = Recorder()
    result = run_job(spec, engine=engine, store=store, base=base, send=send)

    assert result["status"] == "succeeded", result
    steps = send.named(TASK_TRAINING_STEP)
    losses = [metering["loss"] for _, _, metering in steps]
    assert [step for _, step, _ in steps] == list(range(1, 41))  # 1 step per epoch (4 records, batch 4) x 40
    assert losses[-1] <= losses[0] / 2, losses
    started = send.named(TASK_TRAINING_STARTED)[0][2]
    trainable = 2 * 8 * (64 + 64 + 64 + 32 + 64 + 64 + 128 + 64)  # layers x rank x (in + out) for q, v, o, down
    assert started["trainable_params"] == trainable
    # every step trains all 4 records: gradients = trainable elements x their tokens, in micro-batches of 2
    assert len({m["tokens"] for _, _, m in steps}) == 1
    assert all(m["gradients"] == trainable * m["tokens"] and m["micro_batches"] == 2 for _, _, m in steps)
    assert send.named(TASK_TRAINING_FINISHED) == [(spec.job_id, result)]

    # the trained adapter is a valid PEFT folder the store serves like an upload, and it learnt the answers
    adapter = result["adapter"]
    ref = AdapterRef(adapter_id="a1", version=2, uri=adapter["uri"])
    for prompt, answer in zip(PROMPTS, ANSWERS, strict=True):
        handle, final = greedy(engine, prompt, adapter=ref, max_tokens=len(answer) + 1)
        assert generated_text(redis_client, handle.request.request_id).split() == words(answer).split()
        assert final["finish_reason"] == "stop"  # and it learnt to stop after the answer


@pytest.mark.parametrize("epochs", [1, 2])
def test_the_metered_gradients_do_not_depend_on_the_micro_batch_size(node, tmp_path, epochs):
    """The same data, epochs and batch size run as micro-batches of 1, 2 and 4 records (and 8 records, batches of
    4, so an epoch's steps differ in tokens): each step bills the same gradients, trainable x the step's tokens."""
    engine, store, base = node()
    records = memorize_records() * 2
    uri = write_dataset(tmp_path / "data.jsonl", records)
    metered = {}
    for micro in (1, 2, 4):
        send = Recorder()
        spec = spec_for(tmp_path, uri, epochs=epochs, micro_batch_size=micro)
        assert run_job(spec, engine=engine, store=store, base=base, send=send)["status"] == "succeeded"
        trainable = send.named(TASK_TRAINING_STARTED)[0][2]["trainable_params"]
        steps = send.named(TASK_TRAINING_STEP)
        assert all(m["gradients"] == trainable * m["tokens"] and m["micro_batches"] == 4 // micro
                   for _, _, m in steps)
        metered[micro] = [(step, m["gradients"], m["tokens"]) for _, step, m in steps]
    assert metered[1] == metered[2] == metered[4] and len(metered[1]) == 2 * epochs


def test_a_redelivered_job_resumes_from_its_last_checkpoint_and_reports_the_same_steps(node, tmp_path):
    engine, store, base = node()
    dataset = write_dataset(tmp_path / "data.jsonl", memorize_records())
    spec = spec_for(tmp_path, dataset, epochs=6, checkpoint_every=2)
    first = Recorder()
    done = run_job(spec, engine=engine, store=store, base=base, send=first)
    out = Path(spec.output_uri.removeprefix("file://"))
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["step-0000002", "step-0000004"]
    # the node died after step 5: step 4's checkpoint and the final adapter never got written
    shutil.rmtree(out / "checkpoints" / "step-0000004")
    shutil.rmtree(out / "final")

    again = Recorder()
    resumed = run_job(spec, engine=engine, store=store, base=base, send=again)
    assert again.named(TASK_TRAINING_STARTED)[0][2]["resumed_after_step"] == 2
    assert [step for _, step, _ in again.named(TASK_TRAINING_STEP)] == [3, 4, 5, 6]
    before = {step: m for _, step, m in first.named(TASK_TRAINING_STEP)}
    for _, step, metering in again.named(TASK_TRAINING_STEP):  # same batches, same weights: the same step
        assert metering["loss"] == pytest.approx(before[step]["loss"], rel=1e-4)
        assert metering["gradients"] == before[step]["gradients"]
    assert resumed["adapter"]["sha256"] != "" and resumed["status"] == "succeeded"
    from safetensors.torch import load_file
    assert done["adapter"]["uri"] == resumed["adapter"]["uri"]

    # a job whose final adapter exists only reports its result again: no step runs twice
    third = Recorder()
    assert run_job(spec, engine=engine, store=store, base=base, send=third)["adapter"] == resumed["adapter"]
    assert third.named(TASK_TRAINING_STEP) == [] and third.named(TASK_TRAINING_STARTED) == []
    assert load_file(str(out / "final" / "adapter_model.safetensors"))


def test_continuing_from_a_version_keeps_its_shape_and_starts_from_its_weights(node, tmp_path):
    engine, store, base = node()
    start = save_peft_adapter(tiny_base(), tmp_path / "v1", seed=3, r=4, targets=("q_proj", "k_proj"))
    spec = spec_for(tmp_path, write_dataset(tmp_path / "data.jsonl", memorize_records()), epochs=1,
                    init={"adapter_id": "a1", "version": 1, "uri": str(start), "tier": "warm"})
    result = run_job(spec, engine=engine, store=store, base=base, send=Recorder())
    assert result["status"] == "succeeded", result
    assert (result["adapter"]["rank"], sorted(result["adapter"]["target_modules"])) == (4, ["k_proj", "q_proj"])
    from safetensors.torch import load_file
    before = load_file(str(start / "adapter_model.safetensors"))
    after = load_file(result["adapter"]["uri"].removeprefix("file://") + "/adapter_model.safetensors")
    assert set(before) == set(after)
    moved = [name for name in before if not torch.allclose(before[name], after[name])]
    assert moved and all((before[n] - after[n]).abs().max() < 0.1 for n in before)  # one step from v1, not anew


def test_continuing_from_an_adapter_with_layers_and_patterns_keeps_them(node, tmp_path):
    """layers_to_transform, rank_pattern, alpha_pattern and rsLoRA survive training: the trained version wraps the
    same layers with the same ranks and scalings, and its adapter_config.json says so."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    from gpu_runtime.adapter_validation import validate_adapter

    engine, store, base = node()
    config = LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"],
                        layers_to_transform=[1], rank_pattern={"v_proj": 2}, alpha_pattern={"down_proj": 16},
                        init_lora_weights=False)
    start = tmp_path / "v1"
    get_peft_model(tiny_base(), config).save_pretrained(start)
    original = json.loads((start / "adapter_config.json").read_text())
    (start / "adapter_config.json").write_text(json.dumps({**original, "base_model_name_or_path": "tiny-llama"}))
    spec = spec_for(tmp_path, write_dataset(tmp_path / "data.jsonl", memorize_records()), epochs=1,
                    init={"adapter_id": "a1", "version": 1, "uri": str(start), "tier": "warm"})
    result = run_job(spec, engine=engine, store=store, base=base, send=Recorder())
    assert result["status"] == "succeeded", result
    assert (result["adapter"]["rank"], result["adapter"]["target_modules"]) == (4, ["down_proj", "q_proj", "v_proj"])
    final = Path(result["adapter"]["uri"].removeprefix("file://"))
    saved = json.loads((final / "adapter_config.json").read_text())
    for field in ("r", "lora_alpha", "use_rslora", "layers_to_transform", "rank_pattern", "alpha_pattern"):
        assert saved[field] == original[field], field
    assert sorted(saved["target_modules"]) == sorted(original["target_modules"])
    before, after = validate_adapter(start, BASE_FACTS), validate_adapter(final, BASE_FACTS)
    assert after.modules == before.modules and after.layers == [1]
    trained = load_file(str(final / "adapter_model.safetensors"))
    assert {n: t.shape for n, t in trained.items()} == {
        n: t.shape for n, t in load_file(str(start / "adapter_model.safetensors")).items()}


def test_inference_waits_at_most_one_micro_step_and_is_unchanged_by_training(node, tmp_path, redis_client):
    engine, store, base = node()
    handle_alone, _ = greedy(engine, [5, 6, 7], max_tokens=12)
    alone = generated_text(redis_client, handle_alone.request.request_id)
    spec = spec_for(tmp_path, write_dataset(tmp_path / "data.jsonl", memorize_records() * 4), epochs=50,
                    batch_size=8, micro_batch_size=1)
    send = Recorder()
    from gpu_runtime import trainer

    run = trainer.prepare(spec, base=base, pool=store.pool, facts=BASE_FACTS)
    engine.submit_training(run)
    handles = []
    for _ in range(6):
        mark = engine.training.micro_steps
        wait_for(lambda m=mark: engine.training.micro_steps > m)  # the job is mid-training when the request arrives
        handles.append(greedy(engine, [5, 6, 7], max_tokens=12)[0])
    assert not run.finished
    redis_client.set(cancel_key(spec.job_id), 1, ex=60)
    result = trainer.drive(run, on_step=lambda *a: send("step", *a), on_checkpoint=lambda *a: None,
                           on_progress=lambda p: None)
    assert result["status"] == "cancelled"
    assert run.micro_steps > 0
    assert all(h.training_waits is not None and h.training_waits <= 1 for h in handles), \
        [h.training_waits for h in handles]
    # base-only rows never see the job's weights: the same greedy text as before training started
    assert all(generated_text(redis_client, h.request.request_id) == alone for h in handles)


def test_without_preemption_a_turn_is_a_whole_optimizer_step(node, tmp_path):
    engine, store, base = node(training_preemption=False)
    spec = spec_for(tmp_path, write_dataset(tmp_path / "data.jsonl", memorize_records()), epochs=3,
                    batch_size=4, micro_batch_size=1)
    result = run_job(spec, engine=engine, store=store, base=base, send=Recorder())
    assert result["status"] == "succeeded"
    wait_for(lambda: engine.training.micro_steps == 12)  # the last turn's count lands just after the result
    assert engine.training.yields == 0


@pytest.mark.parametrize("lines, code, expected", [
    (['{"prompt": "t1", "completion": "t2"}', "{not json"], "invalid_dataset", "line 2"),
    (['{"prompt": "t1", "completion": "t2"}', '{"prompt": "' + " ".join(["t3"] * 80) + '", "completion": "t4"}'],
     "records_too_long", "line 2"),
])
def test_a_bad_dataset_fails_the_job_naming_its_lines(node, tmp_path, lines, code, expected):
    engine, store, base = node()
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    send = Recorder()
    result = run_job(spec_for(tmp_path, "file://" + str(path)), engine=engine, store=store, base=base, send=send)
    assert result["status"] == "failed" and result["error"]["code"] == code, result
    assert expected in result["error"]["message"]
    assert send.named(TASK_TRAINING_STEP) == []


def test_running_requests_keep_their_version_while_the_new_one_serves_new_requests(node, tmp_path, redis_client):
    """Hot swap on a node: versions are separate keys, so a stream on v1 finishes on v1 while v2 serves."""
    engine, store, base = node()
    v1 = save_peft_adapter(tiny_base(), tmp_path / "v1", seed=5, r=8, targets=("q_proj", "v_proj"))
    spec = spec_for(tmp_path, write_dataset(tmp_path / "data.jsonl", memorize_records()), epochs=40,
                    init={"adapter_id": "a1", "version": 1, "uri": str(v1), "tier": "hot"})
    ref1 = AdapterRef(adapter_id="a1", version=1, uri=str(v1), tier="hot")
    reference = generated_text(redis_client, greedy(engine, PROMPTS[0], adapter=ref1, max_tokens=40)[0].request
                               .request_id)
    result = run_job(spec, engine=engine, store=store, base=base, send=Recorder())
    ref2 = AdapterRef(adapter_id="a1", version=2, uri=result["adapter"]["uri"], tier="hot")
    long_v1 = engine.submit(GenerationRequest(request_id=f"req_{uuid.uuid4().hex}", prompt=words(PROMPTS[0]),
                                             adapter=ref1, sampling=SamplingParams(max_tokens=40, temperature=0)))
    handle2, _ = greedy(engine, PROMPTS[0], adapter=ref2, max_tokens=len(ANSWERS[0]) + 1)
    assert long_v1.wait(60)["finish_reason"] in ("stop", "length")
    assert generated_text(redis_client, long_v1.request.request_id) == reference
    assert generated_text(redis_client, handle2.request.request_id).split() == words(ANSWERS[0]).split()


def test_training_runs_on_the_served_base_tensors_frozen_with_only_lora_a_b_trainable(node, tmp_path):
    """No second copy of the base: the job's forward reads the very weight tensors the engine serves, none of
    them requires grad or gets one, and the optimizer holds exactly the job's A/B pairs."""
    from gpu_runtime import trainer

    engine, store, base = node()
    served = {name: (p.data_ptr(), p.shape) for name, p in engine.model.named_parameters()}
    spec = spec_for(tmp_path, write_dataset(tmp_path / "data.jsonl", memorize_records()), epochs=1,
                    batch_size=4, micro_batch_size=2)
    run = trainer.prepare(spec, base=base, pool=store.pool, facts=BASE_FACTS)
    assert run.model is engine.model and run.pool is store.pool
    assert {name: (p.data_ptr(), p.shape) for name, p in run.model.named_parameters()} == served
    assert not any(p.requires_grad for p in run.model.parameters())

    read = set()  # the storage of every base weight the job's forward multiplies by
    hooks = [wrapper.base.register_forward_hook(lambda m, args, out: read.add(m.weight.data_ptr()))
             for wrapper in store.pool.layers.values()]
    try:
        assert run.micro_step() is True  # the first of the step's two micro-batches: its gradients stay
    finally:
        for hook in hooks:
            hook.remove()
    assert read and read <= {ptr for ptr, _ in served.values()}
    assert len(read) == len(store.pool.layers)  # every wrapped layer ran on the served weight

    lora = run.lora.parameters()
    assert len(lora) == 2 * len(run.lora.pairs) and all(p.requires_grad and p.grad is not None for p in lora)
    assert all(p.grad is None for p in run.model.parameters())
    assert {id(p) for p in lora} == {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    served_ptrs = {ptr for ptr, _ in served.values()}
    assert not any(p.data_ptr() in served_ptrs for p in lora)  # A/B are the job's own, beside the base


def test_training_gets_one_micro_step_per_ten_inference_steps_while_rows_run(node, tmp_path):
    """Inference priority x10 (VAJRA paper 6.1.2), counted in steps: while rows decode, exactly
    ``training_every`` decode steps separate two training turns and a turn finishes at most one micro-step;
    once the rows are gone training has the engine to itself."""
    from gpu_runtime import trainer

    engine, store, base = node(training_max_hold_s=0)  # no holding back for predicted arrivals: plain counting
    assert engine.training.every == 10
    steps = []  # ("decode" | "train", rows running, micro-steps finished by the turn)
    decode, turn = engine._decode_step, engine._training_turn

    def counted_decode():
        steps.append(("decode", len(engine.rows), 0))
        decode()

    def counted_turn():
        rows, before = len(engine.rows), engine.training.micro_steps
        turn()
        steps.append(("train", rows, engine.training.micro_steps - before))

    engine._decode_step, engine._training_turn = counted_decode, counted_turn
    handles = [engine.submit(GenerationRequest(request_id=f"req_{uuid.uuid4().hex}", prompt=words([5, 6 + i, 7]),
                                              sampling=SamplingParams(max_tokens=120, temperature=0)))
               for i in range(4)]
    wait_for(lambda: len(engine.rows) == 4)  # all admitted: no arrival makes a micro-step give way
    spec = spec_for(tmp_path, write_dataset(tmp_path / "data.jsonl", memorize_records() * 2), epochs=50,
                    batch_size=4, micro_batch_size=1)
    run = trainer.prepare(spec, base=base, pool=store.pool, facts=BASE_FACTS)
    engine.submit_training(run)
    assert all(h.wait(120)["finish_reason"] in ("stop", "length") for h in handles)
    wait_for(lambda: sum(1 for kind, rows, _ in steps if kind == "train" and not rows) >= 5)
    turns = list(steps)  # what ran so far: a turn after the cancel below finds the run ended and does nothing
    engine.call(run.cancel).result(30)  # on the engine thread, between turns

    during = [i for i, (kind, rows, _) in enumerate(turns) if kind == "train" and rows]
    assert len(during) >= 3, turns  # training was not starved while rows ran
    assert all(turns[i][2] <= 1 for i in during)
    gaps = [sum(1 for kind, _, _ in turns[a + 1:b] if kind == "decode") for a, b in
            zip(during, during[1:], strict=False)]
    assert gaps and all(gap == engine.training.every for gap in gaps), gaps
    decodes = sum(1 for kind, rows, _ in turns[during[0]:during[-1]] if kind == "decode")
    assert decodes == engine.training.every * (len(during) - 1)  # 10 inference steps per training turn
    alone = [i for i, (kind, rows, _) in enumerate(turns) if kind == "train" and not rows]
    assert all(turns[i][2] == 1 for i in alone[1:])  # idle engine: a micro-step every turn


