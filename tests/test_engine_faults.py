"""Row-level fault isolation on the tiny Llama: a fault of one row (its logits not finite because of its adapter's
slot, its sampler, its detokenizer, its stop strings), at prefill or at decode, ends that row alone with a typed
error; the other rows of its batch and of its prefill group go on with exactly the tokens PEFT gives each alone.
Sampling is safe for every accepted parameter value."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gpu_runtime.row_sampling as row_sampling
from gpu_runtime.detokenize import IncrementalText
from gpu_runtime.generation import SamplingParams
from gpu_runtime.sampling import GREEDY_BELOW, SamplingError, sample_token
from tests.runtime_fixtures import hold_engine, poison_slot, ref, reference_tokens, request, streamed_text, words

# ---- the sampler --------------------------------------------------------------------------------------------------

HUGE = torch.tensor([1e38, -1e38, 3e38, 2.9e38, -3.4e38, 0.0, 1e30])  # finite, far beyond any model's logits


@pytest.mark.parametrize("temperature", [1e-37, 1e-30, GREEDY_BELOW / 2, GREEDY_BELOW, 1e-3, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (3, 1.0), (0, 0.5), (2, 0.1), (0, 1e-50)])
def test_sampling_is_safe_for_every_accepted_temperature(temperature, top_k, top_p):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    generator = torch.Generator().manual_seed(7)
    ordinary = torch.randn(50, generator=torch.Generator().manual_seed(1)) * 10
    for logits in (HUGE, ordinary, ordinary.to(torch.bfloat16), torch.full((5,), 1e38)):
        token = sample_token(logits, params, generator)
        assert 0 <= token < logits.shape[-1]
    # the two biggest are 3e38 and 2.9e38: at any temperature below ~1e36 only the best survives in fp32
    assert {sample_token(HUGE, params, generator) for _ in range(20)} == {2}


def test_very_small_temperatures_are_greedy():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(3))
    best = int(torch.argmax(logits))
    for temperature in (1e-37, 1e-12, GREEDY_BELOW / 10):
        params = SamplingParams(temperature=temperature, top_p=0.9, top_k=40)
        assert {sample_token(logits, params, torch.Generator().manual_seed(s)) for s in range(10)} == {best}


FP32_MAX = float(torch.finfo(torch.float32).max)


@settings(max_examples=300, deadline=None)
@given(temperature=st.floats(0, 2), top_p=st.floats(0, 1, exclude_min=True), top_k=st.integers(0, 1_000_000),
       seed=st.integers(0, 2**63 - 1),
       logits=st.lists(st.floats(-FP32_MAX, FP32_MAX, width=32) | st.just(-math.inf), min_size=1, max_size=40))
def test_any_accepted_parameters_over_any_finite_logits_pick_a_best_candidate(temperature, top_p, top_k, seed,
                                                                              logits):
    """Every accepted parameter value over any finite logits (some -inf, masked) picks a token, never a masked one,
    and below GREEDY_BELOW the best one."""
    if all(value == -math.inf for value in logits):
        logits[0] = 0.0
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    values = torch.tensor(logits, dtype=torch.float32)
    token = sample_token(values, params, torch.Generator().manual_seed(seed))
    assert values[token] > -math.inf
    if temperature < GREEDY_BELOW:
        assert values[token] == values.max()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("temperature", [0, 1e-37, 0.7])
def test_non_finite_logits_are_a_sampling_error(bad, temperature):
    logits = torch.randn(20)
    logits[4] = bad
    with pytest.raises(SamplingError) as caught:
        sample_token(logits, SamplingParams(temperature=temperature), torch.Generator().manual_seed(0))
    assert caught.value.code == "non_finite_logits"
    with pytest.raises(SamplingError):
        sample_token(torch.full((20,), -math.inf), SamplingParams(temperature=temperature))


# ---- the engine: one row's fault ends that row alone -----------------------------------------------------------

HEALTHY = [([5, 6, 7], 0), ([3, 4, 5, 6], None), ([10, 11, 12], 1)]  # (prompt, adapter index or None)
BAD_PROMPT = [8, 9]  # shorter than the others: left-padded in their prefill group
BAD_ADAPTER = 2  # rank 4, in the rank-4 bucket beside the healthy row of adapter 0
MAX_TOKENS = 16
FAULT_AT = {"prefill": 1, "decode": 4}  # the bad row's n-th token is where its fault strikes
MARK = "BOOM"  # the bad row's stop string, which the tiny vocabulary (t0..t127) never spells


class FaultyText(IncrementalText):
    """The engine's detokenizer, but the bad row's (the one with the MARK stop) raises at its FAULT-th token."""

    fault = None  # (where: "add" or "stop", at: n-th token)

    def add(self, token_id):
        where, at = self.fault
        if where == "add" and MARK in self.stop and len(self.tokens) + 1 >= at:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte (test)")
        return super().add(token_id)

    def _visible(self):
        where, at = self.fault
        if where == "stop" and MARK in self.stop and len(self.tokens) >= at:
            raise RuntimeError("stop-string matching failed (test)")
        return super()._visible()


def run_with_a_bad_row(engine, paths, bad, inject, monkeypatch):
    """Submits the healthy rows and ``bad`` so that they join one prefill group, ``inject(bad)`` having set the
    fault up; returns the healthy rows' handles and the bad row's."""
    for i in {a for _, a in HEALTHY if a is not None} | {BAD_ADAPTER}:  # adapters ready: nobody waits for a load
        assert engine.submit(request([1], ref(paths[i], i), max_tokens=1)).wait(60)["finish_reason"] != "error"
    inject(bad)
    groups, real = [], engine._prefill_group

    def prefill_group(rows, cache, offset=0):
        groups.append([row.handle.request.request_id for row in rows])
        return real(rows, cache, offset)

    monkeypatch.setattr(engine, "_prefill_group", prefill_group)
    hold_engine(engine, 0.3)
    handles = [engine.submit(request(ids, ref(paths[a], a) if a is not None else None, max_tokens=MAX_TOKENS))
               for ids, a in HEALTHY[:2]]
    bad_handle = engine.submit(bad)
    handles.append(engine.submit(request(HEALTHY[2][0], ref(paths[HEALTHY[2][1]], HEALTHY[2][1]),
                                         max_tokens=MAX_TOKENS)))
    bad_handle.wait(60)
    assert sorted(h.request.request_id for h in [*handles, bad_handle]) in [sorted(g) for g in groups]
    return handles, bad_handle


def assert_healthy_rows_untouched(engine, adapters, redis_client, handles):
    base, paths = adapters
    for (ids, a), handle in zip(HEALTHY, handles, strict=True):
        result = handle.wait(60)
        assert result["finish_reason"] == "length", result
        expected = reference_tokens(base, paths[a] if a is not None else None, ids, MAX_TOKENS)
        assert streamed_text(redis_client, handle.request.request_id)[0] == words(expected)
    assert not engine.rows or all(row.finish_reason is None for row in engine.rows)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("fault, code", [("sampler", "sampling_error"), ("detokenizer", "detokenize_error"),
                                         ("stop", "detokenize_error"), ("adapter_nan", "non_finite_logits")])
def test_a_fault_in_one_row_ends_that_row_alone(engine, adapters, redis_client, monkeypatch, fault, code, phase):
    _, paths = adapters
    at = FAULT_AT[phase]
    bad = request(BAD_PROMPT, ref(paths[BAD_ADAPTER], BAD_ADAPTER), max_tokens=MAX_TOKENS, stop=[MARK])

    def inject(bad):
        if fault == "sampler":
            calls = []
            real = row_sampling.sample_token

            def sampler(logits, params, generator=None):
                if params is bad.sampling:
                    calls.append(1)
                    if len(calls) >= at:
                        raise RuntimeError("the sampler failed (test)")
                return real(logits, params, generator)

            monkeypatch.setattr(row_sampling, "sample_token", sampler)
        elif fault in ("detokenizer", "stop"):
            monkeypatch.setattr(FaultyText, "fault", ("add" if fault == "detokenizer" else "stop", at))
            monkeypatch.setattr(row_sampling, "IncrementalText", FaultyText)
        elif phase == "prefill":  # the slot turns NaN as the row activates it, before its prefill
            real = engine.store.activate

            def activate(key, acquire=True):
                slot = real(key, acquire)
                if key == bad.adapter.key:
                    poison_slot(engine.pool, slot)
                return slot

            monkeypatch.setattr(engine.store, "activate", activate)
        else:  # the slot turns NaN between two decode steps, once the row has its first tokens
            real = engine._decode_step

            def decode_step():
                row = next((r for r in engine.rows if r.handle.request is bad), None)
                if row is not None and row.completion_tokens == at - 1:
                    poison_slot(engine.pool, row.slot)
                real()

            monkeypatch.setattr(engine, "_decode_step", decode_step)

    handles, bad_handle = run_with_a_bad_row(engine, paths, bad, inject, monkeypatch)
    result = bad_handle.wait(60)
    assert result["finish_reason"] == "error" and result["error"]["code"] == code, result
    assert streamed_text(redis_client, bad.request_id)[1]["error"]["code"] == code  # the final on its stream
    # a row whose token could not be chosen has one token fewer than one whose token could not be rendered
    failed_token = 1 if fault in ("sampler", "adapter_nan") else 0
    assert result["usage"]["completion_tokens"] == at - failed_token
    assert_healthy_rows_untouched(engine, adapters, redis_client, handles)
    monkeypatch.undo()
    after = engine.submit(request([3, 4, 5, 6], max_tokens=4))  # the engine serves on
    assert after.wait(60)["finish_reason"] == "length"


def test_a_temperature_of_1e_37_is_greedy_and_leaves_the_batch_alone(engine, adapters, redis_client, monkeypatch):
    base, paths = adapters
    bad = request(BAD_PROMPT, ref(paths[BAD_ADAPTER], BAD_ADAPTER), max_tokens=MAX_TOKENS, temperature=1e-37)
    handles, tiny = run_with_a_bad_row(engine, paths, bad, lambda bad: None, monkeypatch)
    assert tiny.wait(60)["finish_reason"] == "length"
    assert streamed_text(redis_client, bad.request_id)[0] == words(
        reference_tokens(base, paths[BAD_ADAPTER], BAD_PROMPT, MAX_TOKENS))
    assert_healthy_rows_untouched(engine, adapters, redis_client, handles)


def test_a_final_that_fails_to_render_ends_its_row_in_error_and_the_others_get_theirs(engine, adapters,
                                                                                       redis_client, monkeypatch):
    """The held-back tail of a row's text is rendered when the row ends; if that raises, the row's final says so
    and the finals of the rows retired with it still go out."""
    _, paths = adapters

    class FailingTail(IncrementalText):
        def finish(self):
            if MARK in self.stop:
                raise RuntimeError("rendering the tail failed (test)")
            return super().finish()

    monkeypatch.setattr(row_sampling, "IncrementalText", FailingTail)
    bad = request(BAD_PROMPT, max_tokens=MAX_TOKENS, stop=[MARK])
    handles, bad_handle = run_with_a_bad_row(engine, paths, bad, lambda bad: None, monkeypatch)
    result = bad_handle.wait(60)
    assert result["finish_reason"] == "error" and result["error"]["code"] == "detokenize_error"
    assert result["usage"]["completion_tokens"] == MAX_TOKENS
    assert_healthy_rows_untouched(engine, adapters, redis_client, handles)


def test_a_final_that_cannot_be_sent_still_ends_its_task_and_the_others_get_theirs(engine, adapters, redis_client,
                                                                                  monkeypatch):
    """Ending a row fails outside its text (here releasing its adapter raises): its waiting task still gets an
    error final, and the rows retired in the same step get their own."""
    _, paths = adapters
    bad = request(BAD_PROMPT, ref(paths[BAD_ADAPTER], BAD_ADAPTER), max_tokens=MAX_TOKENS)

    def inject(bad):
        release = engine.store.release

        def failing_release(key):
            if key == bad.adapter.key:
                raise RuntimeError("release failed (test)")
            release(key)

        monkeypatch.setattr(engine.store, "release", failing_release)

    handles, bad_handle = run_with_a_bad_row(engine, paths, bad, inject, monkeypatch)
    result = bad_handle.wait(60)
    assert result["finish_reason"] == "error" and result["error"]["code"] == "engine_error"
    assert_healthy_rows_untouched(engine, adapters, redis_client, handles)


def test_a_decode_forward_that_raises_fails_the_batch_and_the_engine_serves_on(engine, adapters, redis_client,
                                                                               monkeypatch):
    """Not one row's fault: the last decoder layer raises in a decode step, after the first has appended the step's
    column to the batch KV. Every running row ends with engine_error; the next request decodes from a fresh batch."""
    base, paths = adapters
    for _, a in HEALTHY[::2]:  # adapters ready: every row joins the one prefill
        assert engine.submit(request([1], ref(paths[a], a), max_tokens=1)).wait(60)["finish_reason"] == "length"
    layer = engine.model.model.layers[-1]
    real, raised = layer.forward, []

    def forward(hidden_states, *args, **kwargs):
        if hidden_states.shape[1] == 1 and not raised:
            raised.append(1)
            raise RuntimeError("device fault (test)")
        return real(hidden_states, *args, **kwargs)

    monkeypatch.setattr(layer, "forward", forward)
    hold_engine(engine, 0.3)
    handles = [engine.submit(request(ids, ref(paths[a], a) if a is not None else None, max_tokens=MAX_TOKENS))
               for ids, a in HEALTHY]
    results = [h.wait(60) for h in handles]
    assert [r["error"]["code"] for r in results] == ["engine_error"] * len(HEALTHY)
    assert all(r["usage"]["completion_tokens"] == 1 for r in results)  # the prefill's token, then the fault
    assert not engine.rows and len(engine.kv) == 0
    after = engine.submit(request([3, 4, 5, 6], max_tokens=MAX_TOKENS))
    assert after.wait(60)["finish_reason"] == "length"
    assert streamed_text(redis_client, after.request.request_id)[0] == words(
        reference_tokens(base, None, [3, 4, 5, 6], MAX_TOKENS))
