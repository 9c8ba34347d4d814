"""Tenants sharing one engine (the tiny Llama, real Redis Streams): the prefix cache never answers one tenant from
another's prompts, and a tenant's flood of requests cannot hold another tenant's lone request behind it, nor keep
its adapter out of the slots."""

import os
import threading
import time
import uuid

import pytest
import redis

from gpu_runtime.adapter_store import AdapterStore
from gpu_runtime.engine import Engine
from gpu_runtime.generation import AdapterRef, GenerationRequest, SamplingParams
from gpu_runtime.lora import SlotPool
from gpu_runtime.prefix_cache import PrefixCache
from gpu_runtime.streams import StreamWriter
from tests.runtime_fixtures import (
    BASE_FACTS,
    hold_engine,
    runtime_model,
    save_peft_adapter,
    tiny_base,
    tiny_base_model,
    words,
)


@pytest.fixture(scope="module")
def base():
    return tiny_base()


def start_engine(base, **options):
    streams = StreamWriter(redis.Redis.from_url(os.environ["REDIS_URL"]), ttl_seconds=60)
    engine = Engine(tiny_base_model(base), None, streams, prefix_cache=PrefixCache(block=4), **options)
    engine.start()
    return engine


@pytest.fixture
def engine(base):
    engine = start_engine(base, max_batch=8)
    yield engine
    engine.stop()


def request(tenant, prompt_ids, **sampling):
    return GenerationRequest(request_id=f"req_{uuid.uuid4().hex}", prompt=words(prompt_ids), tenant=tenant,
                            sampling=SamplingParams(**{"max_tokens": 4, **sampling}))


def cached_tokens(engine, tenant, prompt_ids):
    final = engine.submit(request(tenant, prompt_ids)).wait(60)
    assert final["finish_reason"] in ("stop", "length"), final
    return final["usage"]["cached_tokens"]


SECRET = [31, 32, 33, 34, 35, 36, 37, 38, 39]  # acme's system prompt: two 4-token blocks are cacheable


def test_another_tenant_guessing_a_system_prompt_learns_nothing_from_cached_tokens(engine):
    """contoso guesses acme's system prompt: what it sees is what it would see had acme never sent it (its own
    earlier guesses only), so a right guess tells it nothing."""
    assert cached_tokens(engine, "acme", SECRET + [40]) == 0
    assert cached_tokens(engine, "acme", SECRET + [41, 42]) == 8  # acme's own prompts share its prefix
    guesses = [SECRET[:4] + [99, 98, 97, 96, 95], SECRET + [40], SECRET + [41, 42]]

    def contoso_sees():
        return [cached_tokens(engine, "contoso", guess) for guess in guesses]

    beside_acme = contoso_sees()
    engine.prefix_cache = PrefixCache(block=4)  # the same guesses on a cache acme never used
    alone = contoso_sees()
    assert beside_acme == alone == [0, 4, 8]  # 4 and 8: blocks of contoso's own earlier guesses


def test_a_request_without_a_tenant_is_never_cached(engine):
    assert cached_tokens(engine, "", SECRET + [40]) == 0
    assert cached_tokens(engine, "", SECRET + [40]) == 0
    assert engine.prefix_cache.stats()["bytes"] == 0



def admission_rounds(engine, monkeypatch):
    """The tenants of the rows each admission round let in, round by round."""
    rounds, real = [], engine._prefill

    def recorded(rows):
        rounds.append([row.handle.request.tenant for row in rows])
        return real(rows)

    monkeypatch.setattr(engine, "_prefill", recorded)
    return rounds


def flood_then_lone_request(engine, monkeypatch):
    """acme fills the batch and queues more; while acme's rows run, contoso sends one request. Returns the
    admission rounds that came after contoso's submit."""
    rounds = admission_rounds(engine, monkeypatch)
    flood = [engine.submit(request("acme", [5, 6, 7 + i], max_tokens=24, temperature=1.0, seed=i))
             for i in range(10)]
    deadline = time.monotonic() + 30
    while not engine.rows and time.monotonic() < deadline:
        time.sleep(0.001)
    hold_engine(engine, 0.3)
    before = len(rounds)
    assert before >= 1 and engine.queue_depth > 0  # acme's requests wait for a row
    lone = engine.submit(request("contoso", [8, 9, 10], max_tokens=4))
    assert lone.wait(60)["finish_reason"] in ("stop", "length")
    for handle in flood:
        assert handle.wait(60)["finish_reason"] in ("stop", "length")
    return rounds[before:]


def test_a_lone_request_is_admitted_in_the_next_round_ahead_of_a_flood(base, monkeypatch):
    engine = start_engine(base, max_batch=2)
    try:
        after = flood_then_lone_request(engine, monkeypatch)
    finally:
        engine.stop()
    assert "contoso" in after[0], after  # the first row that freed went to contoso, ahead of acme's waiting ones
    assert after[0][0] == "contoso"


def test_first_come_first_served_holds_the_lone_request_behind_the_flood(base, monkeypatch):
    """The same scenario with fair admission off: contoso waits for every queued acme request (what the fair
    queue prevents; bench/fairness.py measures both)."""
    engine = start_engine(base, max_batch=2, fair_admission=False)
    try:
        after = flood_then_lone_request(engine, monkeypatch)
    finally:
        engine.stop()
    assert [tenant for batch in after for tenant in batch][-1] == "contoso", after


def test_a_tenant_holding_every_slot_of_a_rank_does_not_keep_another_tenants_adapter_out(base, tmp_path, monkeypatch):
    """Two rank-4 slots, both held by acme's running rows (adapters a and b). contoso's adapter needs one of them:
    acme's next requests on a and b wait while one of those slots drains, so contoso's row is admitted before them
    (taking a and b again each round would keep both slots in use for as long as acme keeps sending)."""
    model = runtime_model(base)
    store = AdapterStore(SlotPool(model, BASE_FACTS, buckets={4: 2}), BASE_FACTS, disk_dir=tmp_path / "disk")
    streams = StreamWriter(redis.Redis.from_url(os.environ["REDIS_URL"]), ttl_seconds=60)
    engine = Engine(tiny_base_model(model), store, streams, max_batch=8)
    engine.start()
    refs = {name: AdapterRef(adapter_id=name, version=1, uri=str(save_peft_adapter(base, tmp_path / name, seed=seed)))
            for seed, name in enumerate(("acme-a", "acme-b", "contoso-c"))}
    rounds, real = [], engine._prefill
    monkeypatch.setattr(engine, "_prefill", lambda rows: (rounds.append(
        [row.handle.request.adapter.adapter_id for row in rows]), real(rows))[1])

    def on(tenant, name, tokens):
        return engine.submit(GenerationRequest(request_id=f"req_{uuid.uuid4().hex}", prompt=words([5, 6, 7]),
                                              tenant=tenant, adapter=refs[name],
                                              sampling=SamplingParams(max_tokens=tokens)))
    try:
        first = [on("acme", "acme-a", 24), on("acme", "acme-b", 24)]
        deadline = time.monotonic() + 60
        while len(engine.rows) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        holding = threading.Event()
        engine.call(lambda: (holding.set(), time.sleep(0.5)))
        assert holding.wait(10)
        lone = on("contoso", "contoso-c", 4)
        later = [on("acme", "acme-a", 24), on("acme", "acme-b", 24)]
        for handle in [*first, lone, *later]:
            assert handle.wait(120)["finish_reason"] in ("stop", "length"), handle.result
    finally:
        engine.stop()
        store.shutdown()
    order = [name for batch in rounds for name in batch]
    assert order[:2] == ["acme-a", "acme-b"] or order[:2] == ["acme-b", "acme-a"], rounds
    assert order[2] == "contoso-c", rounds  # ahead of acme's second requests on the adapters it held
