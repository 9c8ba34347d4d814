"""A decode step's stream entries go to Redis together (``StreamWriter.held``): one round trip per step, every
entry in order, and a request's final in Redis before its task hears it ended."""

import threading
import uuid

from gpu_runtime.contract import stream_key
from gpu_runtime.streams import StreamWriter, read_events
from tests.runtime_fixtures import request


def ids(n):
    return [f"req_{uuid.uuid4().hex}" for _ in range(n)]


def lengths(client, request_ids):
    return [client.xlen(stream_key(r)) for r in request_ids]


def counting(client, monkeypatch):
    """Counts the pipelines the writer executes against ``client``."""
    executed = []
    real = client.pipeline

    def pipeline(*args, **kwargs):
        pipe = real(*args, **kwargs)
        execute = pipe.execute
        pipe.execute = lambda *a, **k: executed.append(1) or execute(*a, **k)
        return pipe

    monkeypatch.setattr(client, "pipeline", pipeline)
    return executed


def test_entries_added_while_held_are_written_together_in_order_when_the_block_ends(redis_client, monkeypatch):
    writer = StreamWriter(redis_client, ttl_seconds=60)
    executed = counting(redis_client, monkeypatch)
    a, b = ids(2)
    with writer.held():
        for i in range(3):
            writer.delta(a, f"a{i}")
            writer.delta(b, f"b{i}")
        with writer.held():  # nested: only the outermost block writes
            writer.final(b, {"finish_reason": "stop"})
        assert lengths(redis_client, [a, b]) == [0, 0] and executed == []
    assert executed == [1]
    assert [data["text"] for _, kind, data in read_events(redis_client, b, block_ms=100) if kind == "delta"] == \
        ["b0", "b1", "b2"]
    entries = redis_client.xrange(stream_key(a))
    assert [int(fields[b"seq"]) for _, fields in entries] == [0, 1, 2]


def test_another_threads_write_takes_the_held_entries_with_it_keeping_their_order(redis_client):
    writer = StreamWriter(redis_client, ttl_seconds=60)
    (a,) = ids(1)
    with writer.held():
        writer.delta(a, "first")
        thread = threading.Thread(target=writer.delta, args=(a, "second"))
        thread.start()
        thread.join()
        assert lengths(redis_client, [a]) == [2]  # not held on that thread: it wrote both, in order
        writer.delta(a, "third")
        assert lengths(redis_client, [a]) == [2]
    texts = [fields[b"data"] for _, fields in redis_client.xrange(stream_key(a))]
    assert [t.decode().split('"')[3] for t in texts] == ["first", "second", "third"]


def test_an_engine_step_writes_once_for_all_its_rows_and_a_final_is_in_redis_when_the_task_hears(
        engine, redis_client, monkeypatch):
    prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11], [12]]
    monkeypatch.setattr(engine, "eos_ids", set())  # every row makes its 6 tokens
    steps = engine.steps
    executed = counting(redis_client, monkeypatch)
    handles = [engine.submit(request(p, max_tokens=6)) for p in prompts]
    for handle in handles:
        result = handle.wait(60)
        final = redis_client.xrevrange(stream_key(handle.request.request_id), count=1)  # read as soon as it is done
        assert final and final[0][1][b"type"] == b"final", result
    assert sum(h.result["usage"]["completion_tokens"] for h in handles) == 24
    # one write per decode step, per prefill (at most one per request) and per final: not one per token
    decode_steps = engine.steps - steps
    assert len(executed) <= decode_steps + 2 * len(prompts) < 24, (len(executed), decode_steps)
