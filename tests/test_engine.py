"""The engine on a tiny Llama: mixed-adapter continuous batching matches PEFT alone per adapter, rows join
and leave at step boundaries, events land on real Redis Streams, GPU-ms adds up, cancel works."""

import json
import time

import pytest

from gpu_runtime.contract import attempt_key, cancel_key, stream_key
from gpu_runtime.generation import AdapterRef, GenerationRequest, SamplingParams
from tests.runtime_fixtures import hold_engine, ref, reference_tokens, request, streamed_text, words


def test_mixed_adapter_batch_matches_peft_alone(engine, adapters, redis_client):
    base, paths = adapters
    prompts = [[5 + i, 17, 33 + i, 9] for i in range(len(paths) + 1)]
    handles = [engine.submit(request(prompts[i], ref(p, i))) for i, p in enumerate(paths)]
    handles.append(engine.submit(request(prompts[-1])))  # a base-only row in the same batch
    for handle in handles:
        assert handle.wait(120) is not None
    for i, handle in enumerate(handles):
        path = paths[i] if i < len(paths) else None
        expected = reference_tokens(base, path, prompts[i], 32)
        text, final = streamed_text(redis_client, handle.request.request_id)
        assert text.split() == [f"t{t}" for t in expected], f"row {i}"
        assert final["finish_reason"] == ("length" if len(expected) == 32 else "stop")
        assert final["usage"] == {"prompt_tokens": 4, "completion_tokens": len(expected), "cached_tokens": 0}
        assert final["timings"]["first_token_ms"] <= final["timings"]["total_ms"]
    assert engine.steps < sum(h.result["usage"]["completion_tokens"] for h in handles)  # rows shared steps


def test_gpu_ms_adds_up_to_busy_time(engine, adapters):
    _, paths = adapters
    before = engine.busy_ms
    handles = [engine.submit(request([7, 8, 9 + i], ref(paths[i % 4], i % 4), max_tokens=8 + 3 * i))
               for i in range(6)]
    results = [h.wait(120) for h in handles]
    attributed = sum(r["gpu_ms"] for r in results)
    assert attributed == pytest.approx(engine.busy_ms - before, rel=0.01)


def test_rows_join_a_running_batch_and_leave_when_done(engine):
    long = engine.submit(request([3, 4, 5], max_tokens=60, temperature=0.8, seed=1))
    while engine.tokens_out == 0 or not engine.rows:
        pass
    short = engine.submit(request([6, 7, 8, 9, 10, 11], max_tokens=3, temperature=0.8, seed=2))
    short_result = short.wait(60)
    assert short_result["usage"]["completion_tokens"] <= 3
    assert not long.done.is_set() or long.result["usage"]["completion_tokens"] > 3
    long.wait(60)


def test_seeded_sampling_is_reproducible(engine, redis_client):
    first = engine.submit(request([9, 9, 9], temperature=1.0, top_p=0.9, top_k=50, seed=42, max_tokens=16))
    second = engine.submit(request([9, 9, 9], temperature=1.0, top_p=0.9, top_k=50, seed=42, max_tokens=16))
    first.wait(60), second.wait(60)
    assert streamed_text(redis_client, first.request.request_id)[0] == \
        streamed_text(redis_client, second.request.request_id)[0]


def test_stop_sequences_end_the_text_before_the_stop(engine, adapters, redis_client):
    base, _ = adapters
    expected = reference_tokens(base, None, [5, 6, 7], 32)
    assert len(expected) >= 4
    full = words(expected)
    stop = " " + words(expected[2:4])
    handle = engine.submit(request([5, 6, 7], stop=[stop]))
    text, final = streamed_text(redis_client, handle.request.request_id)
    assert final["finish_reason"] == "stop"
    assert text == full[: full.find(stop)] and stop not in text


def test_cancel_removes_the_row_within_a_step(engine, redis_client):
    handle = engine.submit(request([1, 2, 3], max_tokens=200, temperature=1.0, seed=3))
    while handle.request.request_id not in [r.handle.request.request_id for r in engine.rows]:
        pass
    redis_client.set(cancel_key(handle.request.request_id), 1, ex=60)
    result = handle.wait(30)
    assert result["finish_reason"] == "cancelled" and result["usage"]["completion_tokens"] < 200


def test_a_superseded_attempt_is_dropped_within_a_step_and_writes_nothing_more(engine, redis_client):
    """Failover sent the request to another node (attempt 2) while this one still ran attempt 1: its row leaves
    the batch without a final event, and later attempts' entries say which attempt wrote them."""
    handle = engine.submit(request([1, 2, 3], max_tokens=200, temperature=1.0, seed=3))
    rid = handle.request.request_id
    while rid not in [r.handle.request.request_id for r in engine.rows]:
        pass
    redis_client.set(attempt_key(rid), 2, ex=60)
    result = handle.wait(30)
    assert result == {"finish_reason": "superseded", "attempt": 1}
    entries = redis_client.xrange(stream_key(rid))
    assert entries and {f[b"type"] for _, f in entries} == {b"delta"}  # no final: the current attempt ends it
    written = len(entries)
    again = engine.submit(GenerationRequest(request_id=rid, prompt=words([1, 2, 3]), attempt=2,
                                           sampling=SamplingParams(max_tokens=4)))
    final = again.wait(30)
    assert final["attempt"] == 2 and final["finish_reason"] in ("stop", "length")
    later = [json.loads(f[b"data"]) for _, f in redis_client.xrange(stream_key(rid))[written:]]
    assert later and all(data["attempt"] == 2 for data in later)


def test_bad_requests_get_typed_errors_and_the_engine_keeps_serving(engine, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_model.bin").write_bytes(b"pickle")
    bad = engine.submit(request([1, 2], AdapterRef("broken", 1, str(broken))))
    missing = engine.submit(request([1, 2], AdapterRef("missing", 1, str(tmp_path / "nowhere"))))
    too_long = engine.submit(request([1] * 250, max_tokens=32))
    other_base = engine.submit(GenerationRequest(request_id="req_other_base", prompt="t1", base_model="llama-70b"))
    fine = engine.submit(request([4, 5, 6], max_tokens=4))
    assert bad.wait(30)["error"]["code"] == "pickle_refused"
    assert missing.wait(30)["error"]["code"] == "adapter_not_found"
    assert too_long.wait(30)["error"]["code"] == "context_length_exceeded"
    assert other_base.wait(30)["error"]["code"] == "unknown_base_model"
    assert fine.wait(30)["finish_reason"] in {"length", "stop"}
    # a broken adapter fails fast the second time, from memory
    again = engine.submit(request([1, 2], AdapterRef("broken", 1, str(broken))))
    assert again.wait(30)["error"]["code"] == "pickle_refused"
    assert engine.store.where("broken:1") == "failed"


def test_prefix_cache_reuses_a_shared_prompt_prefix_per_adapter_version(engine, adapters, redis_client):
    base, paths = adapters
    system = [11, 12, 13, 14, 15, 16, 17, 18, 19]  # 9 tokens: two 4-token blocks are cacheable
    first = engine.submit(request(system + [40, 41], ref(paths[0], 0), max_tokens=12))
    assert first.wait(60)["usage"]["cached_tokens"] == 0
    second = engine.submit(request(system + [50, 51, 52], ref(paths[0], 0), max_tokens=12))
    assert second.wait(60)["usage"]["cached_tokens"] == 8
    expected = reference_tokens(base, paths[0], system + [50, 51, 52], 12)
    assert streamed_text(redis_client, second.request.request_id)[0].split() == [f"t{t}" for t in expected]
    # the same prefix under another adapter was computed by other weights: no reuse
    other = engine.submit(request(system + [50, 51, 52], ref(paths[1], 1), max_tokens=4))
    assert other.wait(60)["usage"]["cached_tokens"] == 0
    stats = engine.prefix_cache.stats()
    assert stats["hits"] >= 1 and 0 < stats["hit_rate"] < 1 and stats["bytes"] > 0
    # a prompt sharing only the first block reuses that block, whatever follows it
    partial = engine.submit(request(system[:5] + [60, 61, 62, 63, 64], ref(paths[0], 0), max_tokens=4))
    assert partial.wait(60)["usage"]["cached_tokens"] == 4


SYSTEM = [11, 12, 13, 14, 15, 16, 17, 18, 19]  # 9 tokens: two 4-token blocks for the prefix cache


def warm_prefix_cache(engine):
    assert engine.submit(request(SYSTEM + [40, 41], max_tokens=4)).wait(60)["finish_reason"] != "error"


def test_rows_from_the_prefix_cache_and_fresh_rows_admitted_together_into_an_empty_batch(engine, adapters,
                                                                                         redis_client):
    """Regressions (seen under locust): an idle engine admitting at once a row prefilled from the prefix cache and
    others kept only the last group's KV and mask, and the next decode step failed every row with "Sizes of tensors
    must match"; and rows admitted cached, fresh, cached, fresh took the KV of another row (the batch cache holds the
    cached rows first), so their text went wrong without any error."""
    base, _ = adapters
    warm_prefix_cache(engine)
    while engine.rows:  # the batch is empty again
        time.sleep(0.01)
    hold_engine(engine, 0.5)
    prompts = [SYSTEM + [50, 51, 52], [3, 4, 5], SYSTEM + [60, 61], [6, 7]]
    handles = [engine.submit(request(ids, max_tokens=12)) for ids in prompts]
    results = [h.wait(60) for h in handles]
    assert [r["finish_reason"] for r in results if r["finish_reason"] == "error"] == [], results
    assert [r["usage"]["cached_tokens"] for r in results] == [8, 0, 8, 0]
    got = [streamed_text(redis_client, h.request.request_id)[0].split() for h in handles]
    want = [[f"t{t}" for t in reference_tokens(base, None, ids, 12)] for ids in prompts]
    assert got == want


def test_a_failed_admission_leaves_the_running_rows_and_their_cache_as_they_were(engine, adapters, redis_client,
                                                                                  monkeypatch):
    """A prefill that fails after a prefix-cached row's KV joined the batch cache (here the fresh group's forward
    raises): the new rows fail with engine_error, the running row decodes on, its text unchanged."""
    base, _ = adapters
    warm_prefix_cache(engine)
    running_ids = [3, 4, 5, 6]
    running = engine.submit(request(running_ids, max_tokens=60))
    deadline = time.monotonic() + 30
    while not engine.rows and time.monotonic() < deadline:
        time.sleep(0.001)
    real = engine._prefill_group

    def fresh_group_fails(rows, cache, offset=0):
        if not offset:
            raise RuntimeError("out of memory (test)")
        return real(rows, cache, offset)

    hold_engine(engine, 0.3)
    assert engine.rows and not running.done.is_set()  # the first row decodes in the batch the others join
    monkeypatch.setattr(engine, "_prefill_group", fresh_group_fails)
    joining = [engine.submit(request(ids, max_tokens=8)) for ids in (SYSTEM + [50, 51, 52], [3, 4])]
    failed = [h.wait(60) for h in joining]
    monkeypatch.setattr(engine, "_prefill_group", real)
    assert [r["error"]["code"] for r in failed] == ["engine_error", "engine_error"]
    result = running.wait(60)
    assert result["finish_reason"] != "error", result
    expected = reference_tokens(base, None, running_ids, 60)
    assert streamed_text(redis_client, running.request.request_id)[0].split() == [f"t{t}" for t in expected]


def test_adapter_ready_time_is_the_adapters_wait_not_the_wait_for_a_row(engine, adapters):
    """The tier's adapter-ready time counts waiting for the adapter (host RAM, a slot, the copy); a request whose
    adapter already sits in its slot and waits for the engine's step under way is queued, not loading."""
    _, paths = adapters
    assert engine.submit(request([5, 6, 7], ref(paths[0], 0), max_tokens=2)).wait(120)["finish_reason"]
    hold_engine(engine, 0.5)
    timings = engine.submit(request([5, 6, 8], ref(paths[0], 0), max_tokens=2)).wait(120)["timings"]
    assert timings["queued_ms"] >= 400  # it waited for the engine
    assert timings["adapter_ready_ms"] < timings["queued_ms"] / 4  # not for its adapter, already in its slot
