"""Prefetch hit rate (VAJRA paper 4.1.2, Algorithm 1) on synthetic arrival traces, on a simulated clock.

    .venv/bin/python bench/prefetch.py [--seconds 3600] [--seed 7]

Three traces (periodic, bursty, random) run through a fake node whose tiers decay the way memory pressure
from other tenants would empty them, once without the prefetcher and once with it (the real Prefetcher
and PrefetchLoop, ticked every 100 ms of simulated time). A hit is a request that finds its adapter in
host RAM or on the device, i.e. adapter-ready within the warm target. Prints the figures side by side and
writes them to bench/results/prefetch.json. tests/test_prefetch.py runs the same simulator, shorter.
"""

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections import deque
from pathlib import Path

from gpu_runtime.prefetch import PREFETCH_LOOKAHEAD_MS, READY_TIERS, TIER_ORDER, Prefetcher, PrefetchLoop

RESULTS = Path(__file__).resolve().parent / "results" / "prefetch.json"

# The fake node's true hop times differ from LoadTimes' defaults, so that the prefetcher has to learn them.
TRUE_HOP_MS = {("object", "disk"): 1200.0, ("disk", "host"): 60.0, ("host", "device"): 5.0}
# A busy node: an adapter untouched this long loses its slot, its host copy, its disk copy.
DEVICE_IDLE_S, HOST_IDLE_S, DISK_IDLE_S = 0.5, 1.5, 60.0
SERVICE_S = 0.2  # a request holds its adapter this long after it is ready
TICK_S = 0.1


class FakeNode:
    """Tiers by idle time on a simulated clock (``now``), with moves timed and logged like AdapterStore."""

    def __init__(self, hop_ms=None):
        self.hop_ms = hop_ms or TRUE_HOP_MS
        self.now = 0.0
        self.reached = {}  # key -> rank (index in TIER_ORDER) reached when last touched
        self.touched = {}  # key -> when last used or moved
        self.inflight = {}  # key -> (from rank, to rank, done at)
        self.moves = deque(maxlen=1000)  # (key, from, to, ms), as AdapterStore.moves

    def _ms(self, source, target):
        return sum(self.hop_ms[(TIER_ORDER[r], TIER_ORDER[r + 1])] for r in range(source, target))

    def _log_hops(self, key, source, target):
        for r in range(source, target):
            hop = (TIER_ORDER[r], TIER_ORDER[r + 1])
            self.moves.append((key, *hop, self.hop_ms[hop]))

    def _rank(self, key):
        flight = self.inflight.get(key)
        if flight and flight[2] <= self.now:
            del self.inflight[key]
            self._log_hops(key, flight[0], flight[1])
            self.reached[key], self.touched[key] = flight[1], flight[2]
        if key not in self.reached:
            return 0
        idle = self.now - self.touched[key]
        allowed = 3 if idle < DEVICE_IDLE_S else 2 if idle < HOST_IDLE_S else 1 if idle < DISK_IDLE_S else 0
        return min(self.reached[key], allowed)

    def where(self, key):
        rank = self._rank(key)
        return "loading" if rank == 0 and key in self.inflight else TIER_ORDER[rank]

    def move(self, key, target):
        """A prefetch move from wherever the adapter is; one loader per adapter, so moves queue."""
        rank, current = TIER_ORDER.index(target), self._rank(key)
        flight = self.inflight.get(key)
        if flight and rank > flight[1]:
            self.inflight[key] = (flight[0], rank, flight[2] + self._ms(flight[1], rank) / 1000)
        elif not flight and rank > current:
            self.inflight[key] = (current, rank, self.now + self._ms(current, rank) / 1000)

    def request(self, key):
        """A request arrives: the tier it found its adapter in, and ms until the adapter was on the device."""
        tier, rank = self.where(key), self._rank(key)
        flight = self.inflight.pop(key, None)
        if flight:  # it waits for the load under way, then the rest of the way
            ready = flight[2] + self._ms(flight[1], 3) / 1000
            self._log_hops(key, flight[0], 3)
        else:
            ready = self.now + self._ms(rank, 3) / 1000
            self._log_hops(key, rank, 3)
        self.reached[key], self.touched[key] = 3, ready + SERVICE_S
        return tier, (ready - self.now) * 1000


def periodic(seconds, rng, adapters=20, period_s=3.0, jitter=0.02):
    """Every adapter every period_s, each gap off by up to +-jitter."""
    trace = []
    for a in range(adapters):
        t = rng.uniform(0, period_s)
        while t < seconds:
            trace.append((t, f"periodic-{a}"))
            t += period_s * (1 + rng.uniform(-jitter, jitter))
    return sorted(trace)


def bursty(seconds, rng, adapters=10, burst=5, spacing_s=0.2, every_s=20.0, jitter=0.05):
    """Bursts of ``burst`` requests spacing_s apart, a burst every every_s (+-jitter)."""
    trace = []
    for a in range(adapters):
        start = rng.uniform(0, every_s)
        while start < seconds:
            trace.extend((start + i * spacing_s, f"bursty-{a}") for i in range(burst))
            start += every_s * (1 + rng.uniform(-jitter, jitter))
    return sorted(x for x in trace if x[0] < seconds)


def poisson(seconds, rng, adapters=20, mean_gap_s=4.0):
    """Memoryless arrivals: nothing in the history says when the next one comes."""
    trace = []
    for a in range(adapters):
        t = rng.expovariate(1 / mean_gap_s)
        while t < seconds:
            trace.append((t, f"random-{a}"))
            t += rng.expovariate(1 / mean_gap_s)
    return sorted(trace)


TRACES = {"periodic": periodic, "bursty": bursty, "random": poisson}


def simulate(trace, *, prefetch, lookahead_ms=PREFETCH_LOOKAHEAD_MS, on_tick=None):
    """Runs one trace; ``on_tick(prefetcher, now, actions)`` sees every plan (tests check them)."""
    node = FakeNode()
    prefetcher = loop = None
    if prefetch:
        prefetcher = Prefetcher(lookahead_ms, tick_ms=TICK_S * 1000)
        loop = PrefetchLoop(prefetcher, node.where, to_device=lambda k: node.move(k, "device"),
                            to_host=lambda k: node.move(k, "host"), to_disk=lambda k: node.move(k, "disk"),
                            moves=node.moves, clock=lambda: node.now)
    hits, ready_ms, tick = 0, [], 0
    for t, key in trace:
        while loop and tick * TICK_S <= t:
            node.now = tick * TICK_S
            actions = loop.tick()
            if on_tick:
                on_tick(prefetcher, node.now, actions)
            tick += 1
        node.now = t
        tier, ms = node.request(key)
        hits += tier in READY_TIERS
        ready_ms.append(ms)
        if prefetcher:
            prefetcher.observe(key, t, tier=tier)
    stats = prefetcher.stats() if prefetcher else {"actions": 0}
    return {"arrivals": len(trace), "hit_rate": round(hits / len(trace), 4), "actions": stats["actions"],
            "ready_ms_mean": round(statistics.fmean(ready_ms), 2),
            "ready_ms_p99": round(_percentile(ready_ms, 0.99), 2), "prefetcher": stats if prefetcher else None}


def _percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3600.0, help="simulated seconds per trace")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    started = time.perf_counter()
    rows = {}
    for name, make in TRACES.items():
        trace = make(args.seconds, random.Random(args.seed))
        rows[name] = {"without": simulate(trace, prefetch=False), "with": simulate(trace, prefetch=True)}
    header = (f"{'trace':<10}{'arrivals':>10}{'hit rate w/o':>14}{'with prefetch':>15}{'actions':>9}"
              f"{'ready ms w/o':>14}{'with':>8}")
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        off, on = row["without"], row["with"]
        print(f"{name:<10}{off['arrivals']:>10}{off['hit_rate']:>14.3f}{on['hit_rate']:>15.3f}{on['actions']:>9}"
              f"{off['ready_ms_mean']:>14.1f}{on['ready_ms_mean']:>8.1f}")
    elapsed = time.perf_counter() - started
    print(f"\n{args.seconds:.0f} simulated s per trace, {elapsed:.1f} s wall; learned load ms (periodic): "
          f"{rows['periodic']['with']['prefetcher']['load_ms']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "prefetch", "simulated_seconds": args.seconds, "seed": args.seed, "wall_seconds": elapsed,
        "config": {"lookahead_ms": PREFETCH_LOOKAHEAD_MS, "tick_s": TICK_S, "service_s": SERVICE_S,
                   "idle_s": {"device": DEVICE_IDLE_S, "host": HOST_IDLE_S, "disk": DISK_IDLE_S},
                   "true_hop_ms": {f"{s}->{t}": ms for (s, t), ms in TRUE_HOP_MS.items()}},
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "traces": rows,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
