"""Adapter pre-fetching (VAJRA paper 4.1.2, Algorithm 1): move an adapter up the tiers just before its next
request is due, so that the request finds it in host RAM or on the device.

    T = PredictNextRequest(history, now) - now               (only when T <= PREFETCH_LOOKAHEAD_MS)
    T < load(host->device)   -> device now
    T < load(disk->device)   -> host RAM
    T < load(object->device) -> node-local disk
    otherwise                -> leave it in object storage

Each target is the cheapest tier from which the rest of the load still ends before the request, so an
adapter climbs in stages as T counts down and holds no RAM or slot earlier than it must. Load times are
measured from the store's timed moves. The AdapterStore stays the one owner of tiers:
this module only predicts, decides and counts, and acts through callbacks; it needs neither torch nor Django.
Times are seconds on one monotonic clock (``time.monotonic``); durations are milliseconds.
"""

import bisect
import logging
import threading
import time
from collections import OrderedDict, deque
from itertools import pairwise

log = logging.getLogger("vajra.runtime.prefetch")

PREFETCH_LOOKAHEAD_MS = 5000  # paper Table 6
TIER_ORDER = ("object", "disk", "host", "device")  # slowest to fastest
# "loading" means a load to host RAM is already under way: as good as host for deciding what to start.
_RANK = {"object": 0, "disk": 1, "loading": 2, "host": 2, "device": 3}
READY_TIERS = ("device", "host")  # a request finding its adapter here is within the warm target (<= 100 ms)
MIN_GAPS = 3
EARLY_QUANTILE = 0.05


class ArrivalHistory:
    """One adapter's recent request arrival times, in a bounded ring, with its gaps kept sorted."""

    def __init__(self, size=64):
        self.times = deque(maxlen=size)
        self.sorted_gaps = []

    def add(self, t):
        if self.times and t < self.times[-1]:
            t = self.times[-1]  # worker threads may report slightly out of order: count it as simultaneous
        self.times.append(t)
        self.sorted_gaps = sorted(b - a for a, b in pairwise(self.times))

    @property
    def last(self):
        return self.times[-1] if self.times else None


def predict_next(history, now, quantile=EARLY_QUANTILE):
    """The earliest plausible time of the adapter's next request, or None.

    Arrivals are treated as a renewal process: next = last + the low ``quantile`` of the past gaps that are
    longer than the time already waited (now - last). One rule covers the three shapes of traffic:
    periodic (the gaps are all alike, so the prediction is last + period), bursty (once the short in-burst
    gaps have been outwaited only the between-burst gaps remain, so it predicts the next burst) and random
    (memoryless gaps keep the prediction sliding just ahead of now, so an adapter requested often enough
    is kept warm and a rare one is left alone, which is all such a history allows). The low quantile errs
    early on purpose: a load that ends early costs some host RAM, one that ends late costs the request a
    cold start. None with fewer than MIN_GAPS gaps, or once the wait is longer than every gap seen (the
    pattern has stopped). O(log n) on the ring.
    """
    gaps = history.sorted_gaps
    if len(gaps) < MIN_GAPS:
        return None
    first_longer = bisect.bisect_right(gaps, now - history.last)
    longer = len(gaps) - first_longer
    if not longer:
        return None
    return history.last + gaps[first_longer + min(longer - 1, int(quantile * longer))]


class LoadTimes:
    """Time (ms) of each hop towards the device, smoothed (EWMA) from observed moves. The defaults meet the
    paper's targets: host->device 10 ms (hot), disk->device 100 ms (warm), object->device 2 s (cold)."""

    HOPS = (("object", "disk"), ("disk", "host"), ("host", "device"))
    DEFAULT_MS = {("object", "disk"): 1900.0, ("disk", "host"): 90.0, ("host", "device"): 10.0}

    def __init__(self, hop_ms=None, alpha=0.2):
        self.hop_ms = {**self.DEFAULT_MS, **(hop_ms or {})}
        self.alpha = alpha
        self._last_move = None

    def to_device(self, tier):
        """Milliseconds from ``tier`` (object, disk, host, device) to a device slot."""
        return sum(self.hop_ms[hop] for hop in self.HOPS[TIER_ORDER.index(tier):])

    def observe_move(self, source, target, ms):
        hop = (source, target)
        if hop in self.hop_ms and ms >= 0:
            self.hop_ms[hop] += self.alpha * (ms - self.hop_ms[hop])

    def learn(self, moves):
        """Folds in the moves not seen before from a store's ``moves`` deque of (key, from, to, ms), newest
        last. Entries are told apart by identity, since two moves can be equal in value."""
        if not moves or moves[-1] is self._last_move:
            return
        snapshot = moves.copy()  # one C call: safe against the loader thread appending meanwhile
        new = []
        for move in reversed(snapshot):
            if move is self._last_move:
                break
            new.append(move)
        self._last_move = snapshot[-1]
        for _key, source, target, ms in reversed(new):
            self.observe_move(source, target, ms)

    def to_json(self):
        return {f"{s}->{t}": round(ms, 2) for (s, t), ms in self.hop_ms.items()}


class Prefetcher:
    """Algorithm 1 over every adapter seen. ``observe`` on each request arrival, ``plan`` once per tick.

    ``tick_ms`` is how often plan() runs: a move is started one tick early, so that none starts late.
    An action already sent is not sent again for ``retry_ms`` while the move may still be under way.
    Thread-safe: requests arrive on worker threads while the loop plans on its own.
    """

    def __init__(self, lookahead_ms=PREFETCH_LOOKAHEAD_MS, load_times=None, *, tick_ms=100, retry_ms=1000,
                 history_size=64, max_adapters=10_000):
        self.lookahead_ms = lookahead_ms
        self.load_times = load_times or LoadTimes()
        self.tick_ms = tick_ms
        self.retry_s = retry_ms / 1000
        self.history_size = history_size
        self.max_adapters = max_adapters
        self.histories = OrderedDict()  # key -> ArrivalHistory, least recently requested first
        self._sent = {}  # key -> (target, at)
        self._armed = set()  # adapters whose next request was predicted within the lookahead
        self._counts = {"arrivals": 0, "predictions": 0, "hits": 0, "actions": 0}
        self._lock = threading.Lock()

    def observe(self, key, t, tier=None):
        """A request for ``key`` arrived at ``t``; ``tier`` (where its adapter was then) feeds the hit rate."""
        with self._lock:
            if tier is not None:
                self._record_outcome(key, tier)
            history = self.histories.get(key)
            if history is None:
                history = self.histories[key] = ArrivalHistory(self.history_size)
                if len(self.histories) > self.max_adapters:
                    forgotten, _ = self.histories.popitem(last=False)
                    self._sent.pop(forgotten, None)
                    self._armed.discard(forgotten)
            self.histories.move_to_end(key)
            history.add(t)
            self._sent.pop(key, None)

    def record_outcome(self, key, tier_at_arrival):
        """Hit accounting for one arrival, if observe() is not given the tier: call it before observe()."""
        with self._lock:
            self._record_outcome(key, tier_at_arrival)

    def _record_outcome(self, key, tier):
        self._counts["arrivals"] += 1
        if key in self._armed:  # only arrivals the prefetcher predicted count towards its hit rate
            self._armed.discard(key)
            self._counts["predictions"] += 1
            self._counts["hits"] += tier in READY_TIERS

    def target_tier(self, t_predict_ms):
        """Algorithm 1: the cheapest tier from which the rest of the load still ends within t_predict_ms."""
        budget = t_predict_ms - self.tick_ms
        if budget < self.load_times.to_device("host"):
            return "device"
        if budget < self.load_times.to_device("disk"):
            return "host"
        if budget < self.load_times.to_device("object"):
            return "disk"
        return "object"

    def plan(self, now, where):
        """[(key, target)] to start now; ``where(key)`` gives an adapter's current tier. Only adapters whose
        predicted request is within the lookahead are considered, and none already at or above its target."""
        with self._lock:
            due = []
            for key, history in self.histories.items():
                predicted = predict_next(history, now)
                if predicted is not None and (predicted - now) * 1000 <= self.lookahead_ms:
                    self._armed.add(key)
                    due.append((key, (predicted - now) * 1000))
        actions = []
        for key, t_predict_ms in due:
            current = where(key)  # outside our lock: it takes the store's
            target = self.target_tier(t_predict_ms)
            if current not in _RANK or _RANK[current] >= _RANK[target]:
                continue  # failed adapters are not retried here; "object" is never a move
            actions.append((key, target))
        with self._lock:
            actions = [(key, target) for key, target in actions if not self._recently_sent(key, target, now)]
            for key, target in actions:
                self._sent[key] = (target, now)
            self._counts["actions"] += len(actions)
        return actions

    def _recently_sent(self, key, target, now):
        sent = self._sent.get(key)
        return sent is not None and sent[0] == target and now - sent[1] < self.retry_s

    def stats(self):
        with self._lock:
            counts = dict(self._counts)
        counts["hit_rate"] = counts["hits"] / counts["predictions"] if counts["predictions"] else None
        counts["load_ms"] = self.load_times.to_json()
        return counts


class PrefetchLoop:
    """Calls ``plan`` every tick on a daemon thread and hands each action to its callback.

    It knows nothing of the store, the engine or Celery: ``where(key)`` reads an adapter's tier,
    ``to_device(key)`` / ``to_host(key)`` / ``to_disk(key)`` start a move and must return at once
    (``to_disk`` defaults to ``to_host``), and ``moves``, a store's deque of timed moves, teaches the load
    times. ``clock`` must be the clock that observe() times are read from.
    """

    def __init__(self, prefetcher, where, *, to_device, to_host, to_disk=None, moves=None, clock=time.monotonic):
        self.prefetcher = prefetcher
        self.where = where
        self.callbacks = {"device": to_device, "host": to_host, "disk": to_disk or to_host}
        self.moves = moves
        self.clock = clock
        self._stop = threading.Event()
        self._thread = None

    def tick(self):
        """One pass: learn load times, plan, start the moves. Returns the actions."""
        if self.moves is not None:
            self.prefetcher.load_times.learn(self.moves)
        actions = self.prefetcher.plan(self.clock(), self.where)
        for key, target in actions:
            try:
                self.callbacks[target](key)
            except Exception:  # one adapter's failed move must not stop the others' prefetching
                log.exception("prefetch of %s to %s failed", key, target)
        return actions

    def start(self):
        self._thread = threading.Thread(target=self._run, name="adapter-prefetch", daemon=True)
        self._thread.start()

    def stop(self, timeout=5):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    def _run(self):
        while not self._stop.wait(self.prefetcher.tick_ms / 1000):
            try:
                self.tick()
            except Exception:  # e.g. the store shutting down: keep the node serving, try next tick
                log.exception("prefetch tick failed")
