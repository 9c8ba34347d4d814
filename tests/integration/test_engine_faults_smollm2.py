"""Row-level fault isolation on the real SmolLM2 in fp32: a row whose adapter slot turns NaN (at its prefill or
between decode steps) ends alone with ``non_finite_logits``, and the other rows of its batch and its prefill group
(one with an adapter in the same rank bucket, one base-only) produce exactly the greedy tokens they produce
without it, whether the poisoned row is left-padded or the others are. A row at temperature 1e-37 is greedy."""

import os
import uuid
from collections import defaultdict

import pytest
import redis

from gpu_runtime.adapter_store import AdapterStore
from gpu_runtime.engine import Engine
from gpu_runtime.generation import AdapterRef, GenerationRequest, SamplingParams
from gpu_runtime.lora import SlotPool
from gpu_runtime.streams import StreamWriter
from tests.runtime_fixtures import hold_engine, poison_slot, runtime_model

pytestmark = pytest.mark.slow

MAX_TOKENS = 24
HEALTHY = [("The capital of France is", 0), ("List three colors:", None)]  # adapter 0 is rank 8, like adapter 3
BAD_ADAPTER = 3
BAD_PROMPTS = {"padded": "Water boils at",
               "longest": "Explain, in a few careful sentences for a curious child, why the sky looks blue:"}


def start_engine(smollm2, disk_dir):
    """An engine over a copy of SmolLM2 that records every token it accepts per request (``engine.tokens``) and
    the request ids of each prefill group (``engine.groups``)."""
    base, reference, _, facts = smollm2
    model = runtime_model(reference)
    store = AdapterStore(SlotPool(model, facts, {4: 1, 8: 2, 16: 1}), facts, disk_dir=disk_dir)
    engine = Engine(base.__class__(**{**base.__dict__, "model": model}), store,
                    StreamWriter(redis.Redis.from_url(os.environ["REDIS_URL"]), ttl_seconds=60), max_batch=8)
    engine.tokens, engine.groups = defaultdict(list), []
    accept, prefill_group = engine._accept_token, engine._prefill_group

    def accept_token(row, token):
        engine.tokens[row.handle.request.request_id].append(token)
        accept(row, token)

    def record_group(rows, cache, offset=0):
        engine.groups.append(sorted(row.handle.request.request_id for row in rows))
        return prefill_group(rows, cache, offset)

    engine._accept_token, engine._prefill_group = accept_token, record_group
    engine.start()
    return engine


def stop_engine(engine):
    engine.stop()
    engine.store.shutdown()


@pytest.fixture
def engine(smollm2, tmp_path):
    engine = start_engine(smollm2, tmp_path / "disk")
    yield engine
    stop_engine(engine)


def request(prompt, adapter, paths, **sampling):
    ref = AdapterRef(f"a{adapter}", 1, str(paths[adapter])) if adapter is not None else None
    return GenerationRequest(request_id=f"req_{uuid.uuid4().hex}", prompt=prompt, adapter=ref,
                            sampling=SamplingParams(**{"max_tokens": MAX_TOKENS, **sampling}))


def run_together(engine, paths, extra=None):
    """The healthy rows (and ``extra``) admitted in one prefill group; (healthy rows' tokens, extra's result)."""
    for adapter in (0, BAD_ADAPTER):  # in their slots already: nobody waits for a load
        assert engine.submit(request("Hi", adapter, paths, max_tokens=1)).wait(300)["finish_reason"] != "error"
    hold_engine(engine, 1.0)
    handles = [engine.submit(request(prompt, adapter, paths)) for prompt, adapter in HEALTHY]
    extra_handle = engine.submit(extra) if extra is not None else None
    results = [h.wait(600) for h in handles]
    assert all(r["finish_reason"] == "length" for r in results), results
    ids = sorted(h.request.request_id for h in handles + ([extra_handle] if extra_handle else []))
    assert ids in engine.groups  # one prefill group
    tokens = [engine.tokens[h.request.request_id] for h in handles]
    return tokens, (extra_handle.wait(600) if extra_handle else None)


@pytest.fixture(scope="module")
def without_bad_row(smollm2, tmp_path_factory):
    """The healthy rows' greedy tokens when they run together with nobody else."""
    paths = smollm2[2]
    engine = start_engine(smollm2, tmp_path_factory.mktemp("disk"))
    try:
        tokens, _ = run_together(engine, paths)
    finally:
        stop_engine(engine)
    assert all(len(t) == MAX_TOKENS for t in tokens)
    return tokens


@pytest.mark.parametrize("where", sorted(BAD_PROMPTS))
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_a_nan_adapter_row_fails_alone_and_the_others_are_token_identical(engine, smollm2, without_bad_row,
                                                                          monkeypatch, phase, where):
    _, _, paths, _ = smollm2
    bad = request(BAD_PROMPTS[where], BAD_ADAPTER, paths)
    if phase == "prefill":  # the slot turns NaN once the row holds it, before its prefill
        try_join = engine._try_join

        def poisoning_try_join(handle, draining):
            rows = try_join(handle, draining)  # the request's rows, one per choice
            if rows is not None and handle.request is bad:
                poison_slot(engine.pool, rows[0].slot)
            return rows

        monkeypatch.setattr(engine, "_try_join", poisoning_try_join)
    else:  # between two decode steps, once the row has 4 tokens
        decode_step = engine._decode_step

        def poisoning_decode_step():
            row = next((r for r in engine.rows if r.handle.request is bad), None)
            if row is not None and row.completion_tokens == 4:
                poison_slot(engine.pool, row.slot)
            decode_step()

        monkeypatch.setattr(engine, "_decode_step", poisoning_decode_step)
    tokens, result = run_together(engine, paths, bad)
    assert result["finish_reason"] == "error" and result["error"]["code"] == "non_finite_logits", result
    assert result["usage"]["completion_tokens"] == (0 if phase == "prefill" else 4)
    assert tokens == without_bad_row


def test_a_temperature_of_1e_37_is_greedy_and_leaves_the_others_alone(engine, smollm2, without_bad_row):
    _, _, paths, _ = smollm2
    greedy = request(BAD_PROMPTS["padded"], BAD_ADAPTER, paths)
    tokens, result = run_together(engine, paths, greedy)
    assert result["finish_reason"] in ("length", "stop") and tokens == without_bad_row
    tiny = request(BAD_PROMPTS["padded"], BAD_ADAPTER, paths, temperature=1e-37)
    tokens, result = run_together(engine, paths, tiny)
    assert result["finish_reason"] in ("length", "stop") and tokens == without_bad_row
    assert engine.tokens[tiny.request_id] == engine.tokens[greedy.request_id]
