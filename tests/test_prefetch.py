"""Prefetcher (VAJRA paper 4.1.2, Algorithm 1): predictor, tier choice, load-time learning, hit accounting,
and hit rates on synthetic traces beside background traffic through bench/prefetch.py's simulated node, which
evicts by capacity like the AdapterStore (simulated clock, no sleeping). No model, no Redis, no Django."""

import logging
import random
import threading
from collections import deque

import pytest

from bench.prefetch import TRACES, TRUE_HOP_MS, FakeNode, background, run_all, simulate
from gpu_runtime.prefetch import ArrivalHistory, LoadTimes, Prefetcher, PrefetchLoop, predict_next

SIM_SECONDS = 600


def history(times):
    h = ArrivalHistory()
    for t in times:
        h.add(t)
    return h


def burst_times(bursts, start=0.0):
    return [start + b * 20.0 + i * 0.2 for b in range(bursts) for i in range(5)]


# ---- predictor ----------------------------------------------------------------------------------------------
def test_predict_needs_some_history():
    assert predict_next(history([0, 3, 6]), now=7) is None  # two gaps: too few
    assert predict_next(history([0, 3, 6, 9]), now=10) == pytest.approx(12)


def test_predict_periodic_is_last_plus_period():
    h = history([0.0])
    for i in range(30):
        h.add(h.last + 3.0 * (1.01 if i % 2 else 0.99))
    assert predict_next(h, now=h.last + 1) == pytest.approx(h.last + 3, abs=0.1)


def test_predict_bursty_expects_the_burst_then_the_next_burst():
    h = history(burst_times(4))
    assert predict_next(h, now=h.last + 0.05) == pytest.approx(h.last + 0.2)  # mid-burst: next one soon
    assert predict_next(h, now=h.last + 1.0) == pytest.approx(h.last + 19.2)  # burst over: the next burst


def test_predict_gives_up_once_waited_past_every_gap():
    h = history([0, 3, 6, 9, 12])
    assert predict_next(h, now=12 + 3.5) is None


def test_out_of_order_arrival_counts_as_simultaneous():
    h = history([0, 3, 6, 5.9])
    assert list(h.times) == [0, 3, 6, 6] and h.sorted_gaps == [0, 3, 3]


# ---- Algorithm 1 ------------------------------------------------------------------------------------------------
def test_target_tier_follows_algorithm_1():
    pf = Prefetcher(tick_ms=0)  # defaults: host->device 10 ms, disk->device 100 ms, object->device 2 s
    assert [pf.target_tier(ms) for ms in (5, 50, 1500, 2500)] == ["device", "host", "disk", "object"]
    assert Prefetcher(tick_ms=100).target_tier(150) == "host"  # a move starts a tick early


def periodic_prefetcher(period_s, **kwargs):
    pf = Prefetcher(**kwargs)
    for i in range(10):
        pf.observe("a", i * period_s)
    return pf, 9 * period_s


def test_plan_never_looks_past_the_lookahead():
    # object->device takes 8 s here, so Algorithm 1 alone would move the adapter to disk 8 s ahead.
    slow = {("object", "disk"): 7900.0}
    pf, last = periodic_prefetcher(10.0, lookahead_ms=5000, load_times=LoadTimes(slow))
    assert pf.plan(last + 4.0, lambda key: "object") == []  # due in 6 s: beyond 5 s
    assert pf.plan(last + 6.0, lambda key: "object") == [("a", "disk")]  # due in 4 s
    wide, last = periodic_prefetcher(10.0, lookahead_ms=10_000, load_times=LoadTimes(slow))
    assert wide.plan(last + 4.0, lambda key: "object") == [("a", "disk")]


def test_adapter_already_at_or_above_target_gets_no_action():
    pf, last = periodic_prefetcher(3.0)
    now = last + 3.0 - 0.15  # due in 150 ms: host is the target
    assert pf.plan(now, lambda key: "device") == []
    assert pf.plan(now, lambda key: "host") == []
    assert pf.plan(now, lambda key: "loading") == []
    assert pf.plan(now, lambda key: "failed") == []
    assert pf.plan(now, lambda key: "disk") == [("a", "host")]
    assert pf.plan(now + 0.01, lambda key: "disk") == []  # already sent, the move may be under way
    assert pf.stats()["actions"] == 1


def test_hits_count_only_predicted_arrivals():
    pf, last = periodic_prefetcher(3.0)
    pf.observe("b", 0.0, tier="object")  # never predicted
    assert pf.stats()["predictions"] == 0
    pf.plan(last + 2.0, lambda key: "disk")  # "a" is due within the lookahead
    pf.observe("a", last + 3.0, tier="host")
    pf.plan(last + 5.0, lambda key: "disk")
    pf.record_outcome("a", "disk")
    pf.observe("a", last + 6.0)
    stats = pf.stats()
    assert (stats["arrivals"], stats["predictions"], stats["hits"], stats["hit_rate"]) == (3, 2, 1, 0.5)


# ---- load times -------------------------------------------------------------------------------------------------
def move(source, target, ms):
    return ("a", source, target, ms)  # a new tuple per move, as AdapterStore._record makes


def test_load_times_learn_from_moves_once_each():
    times = LoadTimes(alpha=0.5)
    moves = deque(maxlen=4)
    moves.append(move("disk", "host", 30.0))
    times.learn(moves)
    assert times.hop_ms[("disk", "host")] == pytest.approx(60.0)
    times.learn(moves)  # nothing new
    assert times.hop_ms[("disk", "host")] == pytest.approx(60.0)
    for _ in range(6):  # equal values, distinct moves; more than the deque keeps between two learns
        moves.append(move("disk", "host", 30.0))
    moves.append(move("object", "disk", 900.0))
    times.learn(moves)
    assert times.hop_ms[("disk", "host")] == pytest.approx(60 / 8 + 30 * 7 / 8)  # three more (the deque's)
    assert times.to_device("object") == pytest.approx(1400 + times.hop_ms[("disk", "host")] + 10)


# ---- the simulated node ------------------------------------------------------------------------------------------
def test_fake_node_evicts_by_capacity_never_by_idleness():
    node = FakeNode(device_slots=2, host_adapters=3, disk_adapters=4, eviction_threshold=1.0)
    node.request("a")
    node.now = 10_000.0  # idle for hours: still where it was
    assert node.where("a") == "device"
    for key in ("b", "c"):
        node.now += 1.0
        node.request(key)
    assert node.where("a") == "host" and node.where("b") == "device"  # a's slot went to c, least recently used
    node.now += 1.0
    node.request("d")  # host RAM holds 3: a, the least recently used off the device, leaves it
    assert node.where("a") == "disk" and node.evictions["host by request"] == 1


def test_fake_node_keeps_a_slot_in_service():
    node = FakeNode(device_slots=1, eviction_threshold=1.0)
    node.request("a")  # in service until ready + SERVICE_S
    node.request("b")  # no idle slot: runs beyond capacity, a keeps its slot
    assert node.where("a") == "device" and node.evictions["no idle slot"] == 1


def test_a_prefetch_move_costs_capacity():
    node = FakeNode(device_slots=2, host_adapters=4, eviction_threshold=1.0)
    for key in ("a", "b"):
        node.request(key)
        node.now += 1.0
    node.move("c", "device")  # from object storage
    node.now += 2.0
    assert node.where("c") == "device" and node.where("a") == "host"
    assert node.evictions["device by prefetch"] == 1


# ---- synthetic traces beside background traffic -----------------------------------------------------------------
@pytest.fixture(scope="module")
def results():
    return run_all(SIM_SECONDS, 7)


def test_periodic_trace_hit_rate(results):
    off, on = results["periodic"]["without"], results["periodic"]["with"]
    assert off["hit_rate"] <= 0.05  # capacity pressure evicts every periodic adapter between its requests
    assert on["hit_rate"] >= 0.7


def test_bursty_trace_hit_rate(results):
    off, on = results["bursty"]["without"], results["bursty"]["with"]
    assert off["hit_rate"] <= 0.81  # in-burst requests hit anyway; each burst's first one is the cold start
    assert on["hit_rate"] >= off["hit_rate"] + 0.05
    assert on["ready_ms_mean"] <= off["ready_ms_mean"] / 4


def test_random_trace_adapter_ready_no_worse_than_without(results):
    # memoryless arrivals: prefetching churns capacity (the hit rate may drop) but must not slow adapters down
    assert results["random"]["with"]["ready_ms_mean"] <= results["random"]["without"]["ready_ms_mean"]


def test_baseline_evicts_for_requests_only_and_prefetch_moves_take_capacity(results):
    for row in results.values():
        assert not any(k.endswith("by prefetch") for k in row["without"]["evictions"])
        assert row["with"]["evictions"].get("device by prefetch", 0) > 0
        assert row["without"]["background_hit_rate"] is not None and row["with"]["background_hit_rate"] is not None


def test_prefetcher_learns_the_nodes_load_times(results):
    learned = results["periodic"]["with"]["prefetcher"]["load_ms"]
    for (source, target), ms in TRUE_HOP_MS.items():
        assert learned[f"{source}->{target}"] == pytest.approx(ms, rel=0.05)


def test_simulated_plans_stay_within_lookahead():
    seen = []

    def check(prefetcher, now, actions):
        for key, target in actions:
            due_ms = (predict_next(prefetcher.histories[key], now) - now) * 1000
            assert 0 <= due_ms <= 3000, (key, target, due_ms)
            seen.append(target)

    simulate(TRACES["bursty"](200, random.Random(3)), prefetch=True, background_trace=background(200, random.Random(4)),
             lookahead_ms=3000, on_tick=check)
    assert {"host", "device"} <= set(seen)


# ---- the loop ---------------------------------------------------------------------------------------------------
def test_loop_dispatches_actions_and_survives_a_failing_callback(caplog):
    pf, last = periodic_prefetcher(3.0)
    started = []

    def broken(key):
        raise RuntimeError("store is shutting down")

    loop = PrefetchLoop(pf, lambda key: "disk", to_device=started.append, to_host=broken,
                        clock=lambda: last + 3.0 - 0.15)
    with caplog.at_level(logging.ERROR, logger="vajra.runtime.prefetch"):
        assert loop.tick() == [("a", "host")]
    assert "prefetch of a to host failed" in caplog.text
    loop.clock = lambda: last + 3.0 - 0.05
    assert loop.tick() == [("a", "device")] and started == ["a"]


def test_loop_thread_ticks_until_stopped():
    pf, last = periodic_prefetcher(3.0, tick_ms=5)
    fired = threading.Event()
    loop = PrefetchLoop(pf, lambda key: "disk", to_device=lambda key: fired.set(), to_host=lambda key: fired.set(),
                        clock=lambda: last + 3.0 - 0.05)
    loop.start()
    try:
        assert fired.wait(5)
    finally:
        loop.stop()
    assert not loop._thread.is_alive()
