"""A training forward pass on a thread of its own (gpu_runtime.pausable): paused at a layer boundary and gone on
with from there, ended by a cancel or by the engine's stop while paused, and run on the node's torch thread count."""

import os
import threading
import time

import pytest
import torch

from gpu_runtime import answer_loss as answer_loss_module
from gpu_runtime.answer_loss import answer_loss
from gpu_runtime.engine import Engine
from gpu_runtime.streams import StreamWriter
from tests.runtime_fixtures import tiny_base_model
from tests.training_runs import learnable_base, memorizing_run


def test_a_micro_step_pauses_at_a_layer_boundary_and_goes_on_from_there_with_the_same_gradients(tmp_path):
    _, _, straight = memorizing_run(tmp_path)  # the same two micro-batches with nothing in between
    assert straight.micro_step() is True and straight.micro_step() is True
    model, pool, run = memorizing_run(tmp_path)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        base_logits = model(input_ids=ids).logits
    assert run.micro_step() is True  # the first of the step's 4 micro-batches
    first = [p.grad.clone() for p in run.lora.parameters()]
    layers = len(model.model.layers)
    calls = []

    def arrival_at_layer_2():
        calls.append(1)
        return len(calls) == 2

    assert run.micro_step(should_yield=arrival_at_layer_2) is False  # paused inside the forward pass
    assert run._forwarding is not None and run._pending is None and run._micro == 1 and pool.trainable is None
    assert all(torch.equal(p.grad, g) for p, g in zip(run.lora.parameters(), first, strict=True))
    with torch.inference_mode():  # inference between the pauses: the base alone, the paused pass's hooks silent
        assert torch.equal(model(input_ids=ids).logits, base_logits)
    assert len(calls) == 2

    def arrival_at_the_top():  # the forward goes on from layer 2 (asked at each layer after it), and a request
        calls.append(1)  # arrives before the first piece of the vocabulary projection
        return len(calls) == layers + 1

    assert run.micro_step(should_yield=arrival_at_the_top) is False  # paused again, at the forward's top
    assert run._forwarding is not None and run._pending is None and run._micro == 1
    assert run.micro_step() is True and run._micro == 2 and run.paused == 2
    for paused, whole in zip(run.lora.parameters(), straight.lora.parameters(), strict=True):
        torch.testing.assert_close(paused.grad, whole.grad, rtol=0, atol=0)
    assert run._step_loss == straight._step_loss


def test_a_job_cancelled_while_its_forward_pass_is_paused_ends_that_pass_and_its_thread(tmp_path):
    model, pool, run = memorizing_run(tmp_path)
    assert run.micro_step(should_yield=lambda: True) is False
    thread = run._forwarding._thread
    assert thread.is_alive()
    run.cancel()
    assert not thread.is_alive() and run._forwarding is None and pool.trainable is None
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in model.model.layers)
    assert run.events.get_nowait()[0] == "cancelled"


def test_an_engine_that_stops_ends_a_pass_paused_mid_way(tmp_path):
    from gpu_runtime.training_turns import TrainingTurns

    model, _, run = memorizing_run(tmp_path)
    turns = TrainingTurns()
    turns.submit(run)
    assert turns.due(rows_running=False)
    turns.turn(cancelled=lambda ids: False, request_waiting=lambda: True)  # paused at the first layer
    thread = run._forwarding._thread
    assert thread.is_alive() and turns.yields == 1
    turns.close()
    assert not thread.is_alive() and run._forwarding is None
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in model.model.layers)


def omp_workers_gained(apply):
    """OS threads this process gains when a new thread runs a matmul and a linear: its OpenMP team's workers (none
    when the thread runs them on one thread)."""
    from gpu_runtime.base_model import use_torch_threads

    gained = []

    def run():
        if apply:
            use_torch_threads()
        before = len(os.listdir("/proc/self/task"))
        torch.randn(256, 256) @ torch.randn(256, 256)
        torch.nn.functional.linear(torch.randn(64, 256), torch.randn(256, 256))
        gained.append(len(os.listdir("/proc/self/task")) - before)

    time.sleep(0.3)  # the last probe's thread and its team are gone
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return gained[0]


def test_a_thread_started_later_runs_on_the_nodes_torch_threads_once_it_applies_them():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as load_base_model does with a node's torch_threads, on its loader thread
    try:
        if (os.cpu_count() or 1) > 1:
            assert omp_workers_gained(apply=False) >= 1  # OpenMP's count is per thread: a new one uses every core
        assert omp_workers_gained(apply=True) == 0
    finally:
        torch.set_num_threads(before)


def test_the_engine_thread_and_each_training_forward_pass_apply_the_nodes_torch_threads(tmp_path, monkeypatch,
                                                                                       redis_client):
    from gpu_runtime import engine as engine_module
    from gpu_runtime import trainer

    applied = []
    for module in (engine_module, trainer):
        monkeypatch.setattr(module, "use_torch_threads", lambda: applied.append(threading.current_thread().name))
    engine = Engine(tiny_base_model(learnable_base()), None, StreamWriter(redis_client, ttl_seconds=60))
    engine.start()
    try:
        engine.call(lambda: None).result(10)
    finally:
        engine.stop()
    assert applied == ["engine"]
    _, _, run = memorizing_run(tmp_path)
    assert run.micro_step() is True
    assert applied[1:] == [f"train-forward-{run.job_id}"]


def test_the_forwards_top_in_pieces_gives_autograds_loss_and_gradient(tmp_path, monkeypatch):
    """The vocabulary projection, the loss and the projection's backward taken piece by piece (a few columns,
    then a few rows at a time) equal autograd's on the whole top; every piece is a chance to give way."""
    model, _, _ = memorizing_run(tmp_path)
    torch.manual_seed(1)
    hidden = torch.randn(2, 6, model.config.hidden_size)
    targets = torch.tensor([[-100, 40, 41, 42, -100], [-100, -100, 50, 51, 52]])
    # 6 answer tokens: 2 rows a piece
    monkeypatch.setattr(answer_loss_module, "TOP_PIECE_LOGITS", 2 * model.config.vocab_size)
    asked = []
    loss_sum, grad, _ = answer_loss(model.lm_head, hidden, targets, 7, lambda: asked.append(1))

    whole = hidden.clone().requires_grad_(True)
    keep = targets != -100
    logits = model.lm_head(whole[:, :-1][keep])
    expected = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
    (expected / 7).backward()
    torch.testing.assert_close(loss_sum, expected.detach())
    torch.testing.assert_close(grad, whole.grad)
    assert grad[:, -1].abs().sum() == 0 and grad[0, 0].abs().sum() == 0  # no gradient where nothing is learnt
    columns = -(-model.config.vocab_size // max(1, 2 * model.config.vocab_size // 6))
    assert len(asked) == 2 * columns + 3 and columns > 1


def test_a_pass_paused_inside_the_forwards_top_goes_on_with_the_same_gradients(tmp_path, monkeypatch):
    monkeypatch.setattr(answer_loss_module, "TOP_PIECE_LOGITS", 64)  # the top in many pieces
    _, _, straight = memorizing_run(tmp_path)
    assert straight.micro_step() is True
    model, pool, run = memorizing_run(tmp_path)
    layers = len(model.model.layers)
    calls = []

    def arrival_in_the_top():  # asked at each layer, then before each piece of the top: yes at its third piece
        calls.append(1)
        return len(calls) == layers + 3

    assert run.micro_step(should_yield=arrival_in_the_top) is False
    assert run._forwarding is not None and run._pending is None and pool.trainable is None and run.paused == 1
    time.sleep(0.5)  # inference's turn: not the top's compute
    assert run.micro_step() is True
    for paused, whole in zip(run.lora.parameters(), straight.lora.parameters(), strict=True):
        torch.testing.assert_close(paused.grad, whole.grad, rtol=0, atol=0)
    assert run._step_loss == straight._step_loss and 0 < run.top_ms < 5  # ms a piece; the pause counted: > 12


def test_a_pass_gives_way_between_its_forward_and_its_backward(tmp_path):
    _, _, straight = memorizing_run(tmp_path)
    assert straight.micro_step() is True
    model, _, run = memorizing_run(tmp_path)
    last = len(model.model.layers) - 1

    def arrival_after_the_forward():  # asked once the forward pass (its top included) is done, before any backward
        return run._pending is not None and run._pending[1] == last

    assert run.micro_step(should_yield=arrival_after_the_forward) is False
    assert run._forwarding is None and run._pending[1] == last and run.paused == 1 and run._micro == 0
    assert run.micro_step() is True and run._micro == 1
    for paused, whole in zip(run.lora.parameters(), straight.lora.parameters(), strict=True):
        torch.testing.assert_close(paused.grad, whole.grad, rtol=0, atol=0)


def test_a_micro_step_gives_the_lora_gradients_of_one_whole_graph(tmp_path):
    """The pass in pieces (layer cuts, the top by hand, the backward layer by layer from the final norm) adds to
    A/B what autograd's one backward through the whole model would."""
    model, pool, run = memorizing_run(tmp_path)
    assert run.micro_step() is True
    _, reference_pool, reference = memorizing_run(tmp_path)  # the same model and A/B, trained by nothing yet
    ids, labels, mask = reference._tensors(run._chunks[0])
    reference_pool.groups, reference_pool.trainable = [], reference.lora
    try:
        with torch.enable_grad():
            logits = reference.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            targets = labels[:, 1:]
            keep = targets != -100
            loss = torch.nn.functional.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum")
            (loss / run._step_targets).backward()
    finally:
        reference_pool.trainable = None
    assert any(p.grad.abs().sum() > 0 for p in run.lora.parameters())
    for ours, whole in zip(run.lora.parameters(), reference.lora.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, whole.grad, rtol=1e-4, atol=1e-6)
    assert run._step_loss == pytest.approx(float(loss) / run._step_targets, rel=1e-5)
