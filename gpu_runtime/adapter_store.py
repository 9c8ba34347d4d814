"""The one owner of every adapter's lifecycle on a node, across tiers:

    object storage --fetch--> node-local disk --validate+read--> host RAM --copy--> device slot

Hot adapters are pinned in a device slot and never evicted; warm ones are kept on disk and in host RAM;
cold ones live in object storage only. Loading and validating happen off the engine thread (a loader
thread fills host RAM); the engine thread alone copies into slots. A new adapter is validated before
anything is evicted, and one that failed is remembered so it fails fast. Every move is timed.

On CUDA a slot write runs on one side copy stream, non-blocking from pinned host memory, ordered both ways
against the compute stream: the compute stream waits for the copy before the next forward reads the slot,
and the copy stream waits for the compute stream's last slot clear or move before it overwrites a reused
slot (a forward still queued there may read the old weights until the clear runs). The paper's per-request
streams (4.2.2) would not help here: one engine thread runs one batched forward for all rows, so there is one
compute stream to isolate from, and every host-to-device copy shares one link to the device, so several copy
streams would split its bandwidth, not add to it; one side stream gives the overlap there is to get.
"""

import logging
import shutil
import threading
import time
from collections import Counter, OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from .adapter_entry import Adapter, HostAdapter, NoFreeSlot, State, adapter_key, fetch_adapter
from .adapter_read import read_adapter_tensors
from .adapter_validation import WEIGHTS_FILE, AdapterRejected, validate_adapter
from .contract import TIERS, split_version_key
from .lora import adapter_weights_from_tensors

log = logging.getLogger("vajra.runtime.adapters")


class AdapterStore:
    def __init__(self, pool, base_facts, *, disk_dir, host_budget_bytes=2 << 30, disk_budget_bytes=20 << 30,
                 eviction_threshold=0.9, max_rank=64, cuda=None):
        self.pool = pool
        self.base_facts = base_facts
        self.disk_dir = Path(disk_dir)
        self.disk_dir.mkdir(parents=True, exist_ok=True)
        self.host_budget = host_budget_bytes
        self.disk_budget = disk_budget_bytes
        self.eviction_threshold = eviction_threshold
        self.max_rank = max_rank
        self._adapters = {}  # key -> Adapter: every adapter version this node has seen
        # Least recently used first, per copy: which one an eviction takes (keys of self._adapters).
        self._lru = {State.DEVICE: OrderedDict(), State.HOST: OrderedDict(), State.DISK: OrderedDict()}
        self.moves = deque(maxlen=1000)  # (key, from, to, ms)
        self.counters = Counter()
        self._lock = threading.RLock()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adapter-loader")
        # ``cuda`` is torch.cuda on a CUDA pool; tests pass a recording stand-in to drive this path on a CPU.
        self._cuda = cuda if cuda is not None else (torch.cuda if pool.device.type == "cuda" else None)
        self._pin_memory = self._cuda is not None
        self._copy_stream = self._cuda.Stream(device=pool.device) if self._cuda is not None else None
        self._vacated = None  # event on the compute stream after its last slot clear or move

    # ---- transitions: the only code that changes an adapter's copies -------------------------------------------
    def _entry(self, key):
        entry = self._adapters.get(key)
        if entry is None:
            entry = self._adapters[key] = Adapter(key)
        return entry

    def _held(self, state):
        """The adapters holding a copy in ``state`` (DEVICE, HOST or DISK), least recently used first."""
        return [self._adapters[key] for key in self._lru[state]]

    def _touch(self, entry, state):
        self._lru[state].move_to_end(entry.key)

    def _enter(self, entry, state):
        self._lru[state].setdefault(entry.key)  # a copy made again keeps its place in the order

    def _to_disk(self, entry, nbytes):
        entry.disk_bytes = nbytes
        self._enter(entry, State.DISK)

    def _off_disk(self, entry):
        entry.disk_bytes = None
        self._lru[State.DISK].pop(entry.key, None)
        adapter_id, version = split_version_key(entry.key)
        shutil.rmtree(self.disk_dir / adapter_id / str(version), ignore_errors=True)

    def _to_host(self, entry, adapter):
        entry.host = adapter
        self._enter(entry, State.HOST)

    def _off_host(self, entry):
        entry.host = None
        self._lru[State.HOST].pop(entry.key, None)

    def _to_slot(self, entry, slot):
        entry.slot = slot
        self._enter(entry, State.DEVICE)

    def _off_slot(self, entry):
        """Clears the adapter's slot (it keeps its host RAM copy, if it has one)."""
        self.pool.clear(entry.slot)
        entry.slot = None
        self._lru[State.DEVICE].pop(entry.key, None)
        self._mark_vacated()
        self.counters["device evictions"] += 1

    def _fail(self, entry, exc):
        entry.failed = exc

    # ---- state -------------------------------------------------------------------------------------------------
    def where(self, key):
        with self._lock:
            entry = self._adapters.get(key)
            return (entry.state if entry is not None else State.OBJECT).value

    def slot(self, key):
        """The device slot holding the adapter, or None."""
        with self._lock:
            entry = self._adapters.get(key)
            return entry.slot if entry is not None else None

    def host_adapter(self, key):
        """The adapter's host RAM copy (HostAdapter), or None."""
        with self._lock:
            entry = self._adapters.get(key)
            return entry.host if entry is not None else None

    def tier(self, key):
        with self._lock:
            entry = self._adapters.get(key)
            return entry.tier if entry is not None and entry.tier is not None else "unknown"

    def census(self):
        """How many adapters hold each copy, are pinned, failed or loading."""
        with self._lock:
            entries = self._adapters.values()
            return {"device": len(self._lru[State.DEVICE]), "host": len(self._lru[State.HOST]),
                    "disk": len(self._lru[State.DISK]),
                    "pinned": sum(1 for e in entries if e.pinned),
                    "failed": sum(1 for e in entries if e.failed is not None),
                    "loading": sum(1 for e in entries if e.loading is not None)}

    def resident(self, limit=200):
        """Which adapter versions sit on the device and in host RAM, and which of those on the device are pinned
        (hot), as their contract version keys, for placement."""
        with self._lock:
            held = {state.value: list(self._lru[state])[-limit:]
                    for state in (State.DEVICE, State.HOST)}
            held["pinned"] = sorted(e.key for e in self._held(State.DEVICE) if e.pinned)[:limit]
            return held

    def buckets(self):
        """Per rank bucket: its slots and how many hold a pinned adapter (placement's rank-bucket capacity).
        Keys are ranks as strings (JSON object keys)."""
        with self._lock:
            pinned = Counter(self.pool.bucket_rank(e.slot) for e in self._held(State.DEVICE) if e.pinned)
            return {str(rank): {"slots": count, "pinned": pinned[rank]} for rank, count in self.pool.buckets.items()}

    def summary(self):
        """Adapters per tier and the timing of recent tier moves, for heartbeats."""
        with self._lock:
            by_move = {}
            for _, source, target, ms in self.moves:
                by_move.setdefault(f"{source}->{target}", []).append(ms)
            census = self.census()
            return {"device": census["device"], "host": census["host"], "disk": census["disk"],
                    "pinned": census["pinned"], "failed": census["failed"], "slots": self.pool.capacity,
                    "buckets": self.buckets(),
                    "host_bytes": self._host_bytes(),
                    "fragmentation": round(self.fragmentation_index(), 4),
                    "moves": {move: {"count": len(v), "p50_ms": round(sorted(v)[len(v) // 2], 3),
                                     "max_ms": round(max(v), 3)} for move, v in by_move.items()}}

    def _host_bytes(self):
        return sum(e.host.nbytes for e in self._held(State.HOST))

    def _record(self, key, source, target, started):
        ms = (time.perf_counter() - started) * 1000
        self.moves.append((key, source, target, ms))
        self.counters[f"{source}->{target}"] += 1
        return ms

    # ---- loading to host (loader thread) ---------------------------------------------------------------
    def prepare(self, ref):
        """Makes the adapter host-ready in the background; returns a Future of the HostAdapter."""
        key = adapter_key(ref)
        with self._lock:
            entry = self._entry(key)
            if entry.failed is not None:
                future = Future()
                future.set_exception(entry.failed)
                return future
            if entry.host is not None:
                self._touch(entry, State.HOST)
                future = Future()
                future.set_result(entry.host)
                return future
            if entry.loading is None:
                if entry.tier is None:
                    entry.tier = ref.tier
                entry.loading = self._loader.submit(self._load_to_host, ref, entry)
            return entry.loading

    def _load_to_host(self, ref, entry):
        key = entry.key
        try:
            path = self._ensure_disk(ref, entry)
            started = time.perf_counter()
            # the files' structure first, then one read that checks each value once (adapter_read.py)
            facts = validate_adapter(path, self.base_facts, max_rank=self.max_rank, check_values=False)
            if facts.rank > max(self.pool.buckets):
                raise AdapterRejected("rank_too_large", f"rank {facts.rank} exceeds this node's largest slot "
                                      f"bucket {max(self.pool.buckets)}")
            tensors = read_adapter_tensors(path / WEIGHTS_FILE, facts)
            weights = {}
            nbytes = 0
            for module_key, (A, B) in adapter_weights_from_tensors(tensors, facts).items():
                A, B = A.to(self.pool.dtype).contiguous(), B.to(self.pool.dtype).contiguous()
                if self._pin_memory:
                    A, B = A.pin_memory(), B.pin_memory()
                weights[module_key] = (A, B)
                nbytes += A.numel() * A.element_size() + B.numel() * B.element_size()
            adapter = HostAdapter(key, facts, weights, nbytes)
            with self._lock:
                self._to_host(entry, adapter)
                self._record(key, "disk", "host", started)
                self._trim_host()
            return adapter
        except AdapterRejected as exc:
            with self._lock:
                self._fail(entry, exc)
            raise
        finally:
            with self._lock:
                entry.loading = None

    def _ensure_disk(self, ref, entry):
        path = self.disk_dir / ref.adapter_id / str(ref.version)
        with self._lock:
            if entry.disk_bytes is not None and path.is_dir():
                self._touch(entry, State.DISK)
                return path
        started = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        fetch_adapter(ref.uri, path)
        size = sum(f.stat().st_size for f in path.iterdir())
        with self._lock:
            self._to_disk(entry, size)
            self._record(entry.key, "object", "disk", started)
            self._trim_disk()
        return path

    def _trim_host(self):
        while self._host_bytes() > self.host_budget:
            victim = next((e for e in self._held(State.HOST) if e.slot is None and e.tier != "hot"), None)
            if victim is None:
                return
            self._off_host(victim)
            self.counters["host evictions"] += 1

    def _trim_disk(self):
        while sum(e.disk_bytes for e in self._held(State.DISK)) > self.disk_budget:
            victim = next((e for e in self._held(State.DISK) if e.host is None and e.tier == "cold"), None)
            if victim is None:
                return
            self._off_disk(victim)

    # ---- device slots (engine thread only) -------------------------------------------------------------
    def activate(self, key, acquire=True):
        """The adapter's slot id, copying it in from host RAM if needed, and (``acquire``) held for a row
        until ``release``: a held adapter is never evicted. Raises NoFreeSlot."""
        with self._lock:
            entry = self._entry(key)
            if entry.slot is not None:
                self._touch(entry, State.DEVICE)
                self.counters["device hits"] += 1
                if acquire:
                    entry.in_use += 1
                entry.uses += 1
                return entry.slot
            adapter = entry.host
            if adapter is None:  # the engine only activates host-ready adapters
                raise KeyError(key)
            started = time.perf_counter()
            slot = self._free_slot(adapter.facts.rank)
            if self._copy_stream is not None:
                if self._vacated is not None:  # a reused slot: queued forwards and its clear go first
                    self._copy_stream.wait_event(self._vacated)
                with self._cuda.stream(self._copy_stream):
                    self.pool.write(slot, adapter.weights, adapter.facts.scaling, non_blocking=True)
                self._cuda.current_stream(self.pool.device).wait_stream(self._copy_stream)
            else:
                self.pool.write(slot, adapter.weights, adapter.facts.scaling)
            self._to_slot(entry, slot)
            entry.uses += 1
            if acquire:
                entry.in_use += 1
            self._record(key, "host", "device", started)
            self._keep_below_threshold(keep=entry)
            return slot

    def _free_slot(self, rank):
        fitting = self.pool.slots_for_rank(rank)
        used = {e.slot for e in self._held(State.DEVICE)}
        free = [s for s in fitting if s not in used]
        if free:
            return min(free, key=lambda s: (self.pool.bucket_rank(s), s))  # best fit
        for entry in self._held(State.DEVICE):  # least recently used first
            if entry.slot in fitting and not entry.pinned and not entry.in_use:
                slot = entry.slot
                self._off_slot(entry)
                return slot
        raise NoFreeSlot(f"no free slot for rank {rank}: all fitting slots are pinned or in use")

    def holding_slots_for(self, key):
        """The unpinned adapters in the device slots that host-ready ``key`` could take. When ``activate(key)``
        raised NoFreeSlot they are all in use: as long as no new row takes them, the least recently used one is
        released with its last row and its slot goes to ``key``. Empty when every fitting slot is pinned."""
        with self._lock:
            fitting = set(self.pool.slots_for_rank(self._adapters[key].host.facts.rank))
            return {e.key for e in self._held(State.DEVICE) if e.slot in fitting and not e.pinned}

    def _keep_below_threshold(self, keep):
        """Past LRU_EVICTION_THRESHOLD of the slots, evicts least recently used idle adapters to host RAM."""
        limit = int(self.pool.capacity * self.eviction_threshold)
        for entry in self._held(State.DEVICE):
            if len(self._lru[State.DEVICE]) <= limit:
                return
            if entry is not keep and not entry.pinned and not entry.in_use:
                self._off_slot(entry)

    def _mark_vacated(self):
        """Records where the compute stream is after a slot clear or move, for the next copy to wait on."""
        if self._cuda is not None:
            self._vacated = self._cuda.Event()
            self._vacated.record(self._cuda.current_stream(self.pool.device))

    # ---- defragmentation (VAJRA paper, Algorithm 4; engine thread only) ------------------------------------
    def fragmentation_index(self):
        """The share of occupied slot memory that is rank padding: adapters sitting in bigger buckets than
        their rank needs (because the fitting bucket was full when they arrived)."""
        with self._lock:
            occupied = [(self.pool.bucket_rank(e.slot), self.pool.slot_rank.get(e.slot, 0))
                        for e in self._held(State.DEVICE)]
        total = sum(bucket for bucket, _ in occupied)
        return (sum(bucket - rank for bucket, rank in occupied) / total) if total else 0.0

    def defragment(self, tau=0.3):
        """While the index is over tau: compact active adapters into best-fit free slots (device-to-device
        copies), then evict the coldest misplaced adapters to host RAM. Returns what it did."""
        before = self.fragmentation_index()
        moved = evicted = 0
        with self._lock:
            # cold = used no more than the median device adapter (fixed for this run); hot ones never leave
            uses = sorted(e.uses for e in self._held(State.DEVICE))
            median = uses[len(uses) // 2] if uses else 0
            while self.fragmentation_index() > tau:
                used = {e.slot for e in self._held(State.DEVICE)}
                misplaced = [(e, e.slot) for e in self._held(State.DEVICE)
                             if self.pool.slot_rank.get(e.slot, 0) < self.pool.bucket_rank(e.slot)]
                progress = False
                for entry, slot in sorted(misplaced, key=lambda item: -item[0].uses):  # hot ones first
                    rank = self.pool.slot_rank[slot]
                    better = [s for s in self.pool.slots_for_rank(rank)
                              if s not in used and self.pool.bucket_rank(s) < self.pool.bucket_rank(slot)]
                    if better and not entry.in_use:
                        target = min(better, key=lambda s: (self.pool.bucket_rank(s), s))
                        self.pool.move(slot, target)
                        self._mark_vacated()
                        entry.slot = target  # the same copy in another slot: its place in the order stays
                        used.discard(slot)
                        used.add(target)
                        moved += 1
                        progress = True
                if self.fragmentation_index() <= tau:
                    break
                cold = [entry for entry, slot in misplaced if entry.slot == slot and not entry.pinned
                        and not entry.in_use and entry.uses <= median]
                if cold:
                    self._off_slot(min(cold, key=lambda e: e.uses))  # least used: back to host RAM
                    evicted += 1
                    progress = True
                if not progress:
                    break
        result = {"before": round(before, 4), "after": round(self.fragmentation_index(), 4), "moved": moved,
                  "evicted": evicted}
        if moved or evicted:
            log.info("defragmented slots: %s", result)
        return result

    def release(self, key):
        with self._lock:
            entry = self._adapters[key]
            entry.in_use = max(entry.in_use - 1, 0)

    # ---- tier changes -----------------------------------------------------------------------------------
    def set_tier(self, ref, tier):
        """hot: pinned on device (activated by the engine); warm: disk + host; cold: object storage only."""
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}")
        with self._lock:
            entry = self._entry(adapter_key(ref))
            entry.tier = tier
            entry.pinned = tier == "hot"
            if tier == "cold":
                self._off_host(entry)
                if not entry.in_use and entry.slot is not None:
                    self._off_slot(entry)
                if entry.slot is None:
                    self._off_disk(entry)
        if tier in ("hot", "warm"):
            return self.prepare(ref)
        return None

    def evict(self, key, to="host"):
        """Moves an adapter down to host RAM (``to="host"``) or to node-local disk (``to="disk"``); an
        adapter a running row holds stays on the device until the row ends."""
        with self._lock:
            entry = self._entry(key)
            entry.pinned = False
            if entry.slot is not None and not entry.in_use:
                self._off_slot(entry)
            if to == "disk":
                self._off_host(entry)

    def forget_failure(self, key):
        """A corrected upload (new version) is a new key anyway; this is for an operator's retry."""
        with self._lock:
            entry = self._adapters.get(key)
            if entry is not None:
                entry.failed = None

    def shutdown(self):
        self._loader.shutdown(wait=False, cancel_futures=True)

