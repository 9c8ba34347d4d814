"""Prefetch hit rate (VAJRA paper 4.1.2, Algorithm 1) on synthetic arrival traces, on a simulated clock.

    .venv/bin/python bench/prefetch.py [--seconds 3600] [--seed 7]

Three traces (periodic, bursty, random) each run beside the same background traffic of other tenants'
adapters through a fake node whose tiers evict by capacity as the AdapterStore does: device slots least
recently used first among the idle ones (a slot held by a request in service is never taken) and kept
below the eviction threshold, host RAM least recently used first among those not on the device, the disk
cache least recently used first among those not in host RAM. Each trace runs once without the prefetcher
(the baseline: the same capacity eviction, no prediction) and once with it (the real Prefetcher and
PrefetchLoop, ticked every 100 ms of simulated time). A prefetch move costs capacity like a request's
load: the prefetched adapter takes a slot or host RAM when it lands and can evict another adapter, the
background's included, so the background's hit rate is reported beside the trace's. A hit is a request
that finds its adapter in host RAM or on the device, i.e. adapter-ready within the warm target. Prints the
figures side by side and writes them to bench/results/prefetch.json. tests/test_prefetch.py runs the same
simulator, shorter.
"""

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections import Counter, OrderedDict, deque
from pathlib import Path

from gpu_runtime.prefetch import PREFETCH_LOOKAHEAD_MS, READY_TIERS, TIER_ORDER, Prefetcher, PrefetchLoop

RESULTS_DIR = Path(os.environ.get("VAJRA_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
RESULTS = RESULTS_DIR / "prefetch.json"

# The fake node's true hop times differ from LoadTimes' defaults, so that the prefetcher has to learn them.
TRUE_HOP_MS = {("object", "disk"): 1200.0, ("disk", "host"): 60.0, ("host", "device"): 5.0}
# A busy node's capacity, in adapters of one size (r=8): device slots, host RAM, the disk cache.
DEVICE_SLOTS, HOST_ADAPTERS, DISK_ADAPTERS = 8, 24, 64
EVICTION_THRESHOLD = 0.9  # LRU_EVICTION_THRESHOLD: idle adapters leave the device past this share of slots
SERVICE_S = 0.2  # a request holds its adapter's slot this long after the adapter is ready
TICK_S = 0.1
# Other tenants: requests spread uniformly over this many adapters, at this rate (per second, Poisson).
BACKGROUND_ADAPTERS, BACKGROUND_RATE = 100, 8.0
BACKGROUND_PREFIX = "background-"


class FakeNode:
    """Tiers by capacity on a simulated clock (``now``), with moves timed and logged like AdapterStore."""

    def __init__(self, hop_ms=None, *, device_slots=DEVICE_SLOTS, host_adapters=HOST_ADAPTERS,
                 disk_adapters=DISK_ADAPTERS, eviction_threshold=EVICTION_THRESHOLD):
        self.hop_ms = hop_ms or TRUE_HOP_MS
        self.device_slots, self.host_adapters, self.disk_adapters = device_slots, host_adapters, disk_adapters
        self.keep_device = int(device_slots * eviction_threshold)
        self.now = 0.0
        self.device = OrderedDict()  # key -> in service until (s); least recently used first
        self.host = OrderedDict()  # key -> None; least recently used first (an adapter on the device is here too)
        self.disk = OrderedDict()
        self.inflight = {}  # key -> (from rank, to rank, done at): a prefetch move under way
        self.moves = deque(maxlen=1000)  # (key, from, to, ms), as AdapterStore.moves
        self.evictions = Counter()  # "<tier> by <request|prefetch>" -> count

    def _ms(self, source, target):
        return sum(self.hop_ms[(TIER_ORDER[r], TIER_ORDER[r + 1])] for r in range(source, target))

    def _log_hops(self, key, source, target):
        for r in range(source, target):
            hop = (TIER_ORDER[r], TIER_ORDER[r + 1])
            self.moves.append((key, *hop, self.hop_ms[hop]))

    def _rank(self, key):
        return 3 if key in self.device else 2 if key in self.host else 1 if key in self.disk else 0

    def _settle(self):
        """Lands the prefetch moves that are done by now, in the order they finish."""
        for key, (source, target, done) in sorted(self.inflight.items(), key=lambda item: item[1][2]):
            if done <= self.now:
                del self.inflight[key]
                self._log_hops(key, source, target)
                self._place(key, target, "prefetch", busy_until=done)

    def _place(self, key, rank, cause, busy_until):
        """Puts ``key`` in every tier up to ``rank`` (most recently used), evicting by capacity as the store
        does; ``cause`` says whose move made room."""
        if rank >= 1:
            self._touch(self.disk, key)
            self._trim(self.disk, self.disk_adapters, keep=lambda k: k in self.host or k == key,
                       label=f"disk by {cause}")
        if rank >= 2:
            self._touch(self.host, key)
            self._trim(self.host, self.host_adapters, keep=lambda k: k in self.device or k == key,
                       label=f"host by {cause}")
        if rank >= 3:
            if key not in self.device and len(self.device) >= self.device_slots:
                if not self._evict_idle_slot(cause, exclude=key):
                    self.evictions["no idle slot"] += 1  # every slot in service: this one runs beyond capacity
            self.device[key] = max(self.device.get(key, 0.0), busy_until)
            self.device.move_to_end(key)
            while len(self.device) > self.keep_device and self._evict_idle_slot(cause, exclude=key):
                pass

    @staticmethod
    def _touch(table, key):
        table[key] = None
        table.move_to_end(key)

    def _trim(self, table, capacity, *, keep, label):
        while len(table) > capacity:
            victim = next((k for k in table if not keep(k)), None)
            if victim is None:
                return
            del table[victim]
            self.evictions[label] += 1

    def _evict_idle_slot(self, cause, exclude):
        victim = next((k for k, until in self.device.items() if k != exclude and until <= self.now), None)
        if victim is None:
            return False
        del self.device[victim]
        self.evictions[f"device by {cause}"] += 1
        return True

    def where(self, key):
        self._settle()
        rank = self._rank(key)
        return "loading" if rank == 0 and key in self.inflight else TIER_ORDER[rank]

    def move(self, key, target):
        """A prefetch move from wherever the adapter is; one loader per adapter, so moves queue."""
        self._settle()
        rank, current = TIER_ORDER.index(target), self._rank(key)
        flight = self.inflight.get(key)
        if flight and rank > flight[1]:
            self.inflight[key] = (flight[0], rank, flight[2] + self._ms(flight[1], rank) / 1000)
        elif not flight and rank > current:
            self.inflight[key] = (current, rank, self.now + self._ms(current, rank) / 1000)

    def request(self, key):
        """A request arrives: the tier it found its adapter in, and ms until the adapter was on the device."""
        tier = self.where(key)
        rank = self._rank(key)
        flight = self.inflight.pop(key, None)
        if flight:  # it waits for the load under way, then the rest of the way
            ready = flight[2] + self._ms(flight[1], 3) / 1000
            self._log_hops(key, flight[0], 3)
        else:
            ready = self.now + self._ms(rank, 3) / 1000
            self._log_hops(key, rank, 3)
        self._place(key, 3, "request", busy_until=ready + SERVICE_S)
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


def background(seconds, rng, adapters=BACKGROUND_ADAPTERS, rate=BACKGROUND_RATE):
    """Other tenants' requests: Poisson at ``rate`` per second, each on one of ``adapters`` chosen uniformly."""
    trace, t = [], rng.expovariate(rate)
    while t < seconds:
        trace.append((t, f"{BACKGROUND_PREFIX}{rng.randrange(adapters)}"))
        t += rng.expovariate(rate)
    return trace


TRACES = {"periodic": periodic, "bursty": bursty, "random": poisson}


def simulate(trace, *, prefetch, background_trace=(), lookahead_ms=PREFETCH_LOOKAHEAD_MS, on_tick=None, **node):
    """Runs one trace beside ``background_trace`` on one node (``node``: FakeNode's capacities);
    ``on_tick(prefetcher, now, actions)`` sees every plan (tests check them). Hit rates and adapter-ready
    times are the trace's own requests; the background's hit rate is reported beside them."""
    node = FakeNode(**node)
    prefetcher = loop = None
    if prefetch:
        prefetcher = Prefetcher(lookahead_ms, tick_ms=TICK_S * 1000)
        loop = PrefetchLoop(prefetcher, node.where, to_device=lambda k: node.move(k, "device"),
                            to_host=lambda k: node.move(k, "host"), to_disk=lambda k: node.move(k, "disk"),
                            moves=node.moves, clock=lambda: node.now)
    hits, ready_ms, tick = Counter(), [], 0
    arrivals = Counter()
    for t, key in sorted([*trace, *background_trace]):
        while loop and tick * TICK_S <= t:
            node.now = tick * TICK_S
            actions = loop.tick()
            if on_tick:
                on_tick(prefetcher, node.now, actions)
            tick += 1
        node.now = t
        tier, ms = node.request(key)
        group = "background" if key.startswith(BACKGROUND_PREFIX) else "trace"
        arrivals[group] += 1
        hits[group] += tier in READY_TIERS
        if group == "trace":
            ready_ms.append(ms)
        if prefetcher:
            prefetcher.observe(key, t, tier=tier)
    stats = prefetcher.stats() if prefetcher else {"actions": 0}
    return {"arrivals": arrivals["trace"], "hit_rate": round(hits["trace"] / arrivals["trace"], 4),
            "background_arrivals": arrivals["background"],
            "background_hit_rate": round(hits["background"] / arrivals["background"], 4)
            if arrivals["background"] else None,
            "actions": stats["actions"], "evictions": dict(sorted(node.evictions.items())),
            "ready_ms_mean": round(statistics.fmean(ready_ms), 2),
            "ready_ms_p99": round(_percentile(ready_ms, 0.99), 2), "prefetcher": stats if prefetcher else None}


def _percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_all(seconds, seed):
    """Every trace without and with the prefetcher, each beside the same background."""
    rows = {}
    for name, make in TRACES.items():
        trace = make(seconds, random.Random(seed))
        others = background(seconds, random.Random(seed + 1))
        rows[name] = {"without": simulate(trace, prefetch=False, background_trace=others),
                      "with": simulate(trace, prefetch=True, background_trace=others)}
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3600.0, help="simulated seconds per trace")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    started = time.perf_counter()
    rows = run_all(args.seconds, args.seed)
    header = (f"{'trace':<10}{'arrivals':>10}{'hit rate w/o':>14}{'with prefetch':>15}{'background w/o':>16}"
              f"{'with':>7}{'actions':>9}{'evicted by prefetch':>21}{'ready ms w/o':>14}{'with':>8}")
    print(f"capacity: {DEVICE_SLOTS} device slots (threshold {EVICTION_THRESHOLD}), {HOST_ADAPTERS} adapters in host "
          f"RAM, {DISK_ADAPTERS} on disk; background {BACKGROUND_RATE}/s over {BACKGROUND_ADAPTERS} adapters")
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        off, on = row["without"], row["with"]
        by_prefetch = sum(v for k, v in on["evictions"].items() if k.endswith("by prefetch"))
        print(f"{name:<10}{off['arrivals']:>10}{off['hit_rate']:>14.3f}{on['hit_rate']:>15.3f}"
              f"{off['background_hit_rate']:>16.3f}{on['background_hit_rate']:>7.3f}{on['actions']:>9}"
              f"{by_prefetch:>21}{off['ready_ms_mean']:>14.1f}{on['ready_ms_mean']:>8.1f}")
    elapsed = time.perf_counter() - started
    print(f"\n{args.seconds:.0f} simulated s per trace, {elapsed:.1f} s wall; learned load ms (periodic): "
          f"{rows['periodic']['with']['prefetcher']['load_ms']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "prefetch", "simulated_seconds": args.seconds, "seed": args.seed, "wall_seconds": elapsed,
        "config": {"lookahead_ms": PREFETCH_LOOKAHEAD_MS, "tick_s": TICK_S, "service_s": SERVICE_S,
                   "capacity": {"device_slots": DEVICE_SLOTS, "eviction_threshold": EVICTION_THRESHOLD,
                                "host_adapters": HOST_ADAPTERS, "disk_adapters": DISK_ADAPTERS},
                   "background": {"adapters": BACKGROUND_ADAPTERS, "rate_per_s": BACKGROUND_RATE},
                   "true_hop_ms": {f"{s}->{t}": ms for (s, t), ms in TRUE_HOP_MS.items()}},
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "notes": ["Baseline and prefetch run on the same capacity-evicting node with the same background traffic; "
                  "nothing leaves a tier by idleness alone.",
                  "hit_rate and ready_ms are the trace's own requests; background_hit_rate shows what the "
                  "prefetcher's moves cost the other tenants (its moves evict them when capacity is full).",
                  "evictions counts every eviction by tier and by the move that made room (a request's load or a "
                  "prefetch move landing)."],
        "traces": rows,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
