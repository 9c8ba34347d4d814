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
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from . import object_io
from .adapter_validation import WEIGHTS_FILE, AdapterRejected, validate_adapter
from .lora import adapter_weights_from_tensors

log = logging.getLogger("vajra.runtime.adapters")

TIERS = ("hot", "warm", "cold")


class NoFreeSlot(RuntimeError):
    """Every fitting slot holds a pinned or in-use adapter; the request waits for the next step."""


@dataclass
class HostAdapter:
    key: tuple
    facts: object
    weights: dict
    nbytes: int


def adapter_key(ref):
    return (ref.adapter_id, int(ref.version))


def fetch_adapter(uri, dest):
    """Copies an adapter version's files from object storage (gpu_runtime.object_io) to ``dest``; a missing
    folder or an unknown scheme is the adapter's typed refusal."""
    try:
        object_io.fetch_folder(uri, dest)
    except object_io.ObjectNotFound:
        raise AdapterRejected("adapter_not_found", f"no adapter files at {uri}") from None
    except object_io.UnsupportedStorage as exc:
        raise AdapterRejected("unsupported_storage", str(exc)) from None


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
        self.device = OrderedDict()  # key -> slot id, least recently used first
        self.host = OrderedDict()  # key -> HostAdapter
        self.disk = OrderedDict()  # key -> bytes on disk
        self.pinned = set()
        self.tiers = {}  # key -> tier asked for
        self.in_use = Counter()
        self.uses = Counter()  # activations per adapter: the access frequency F of Algorithm 4
        self.failed = {}  # key -> AdapterRejected
        self.loading = {}  # key -> Future
        self.moves = deque(maxlen=1000)  # (key, from, to, ms)
        self.counters = Counter()
        self._lock = threading.RLock()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adapter-loader")
        # ``cuda`` is torch.cuda on a CUDA pool; tests pass a recording stand-in to drive this path on a CPU.
        self._cuda = cuda if cuda is not None else (torch.cuda if pool.device.type == "cuda" else None)
        self._pin_memory = self._cuda is not None
        self._copy_stream = self._cuda.Stream(device=pool.device) if self._cuda is not None else None
        self._vacated = None  # event on the compute stream after its last slot clear or move

    # ---- state -------------------------------------------------------------------------------------
    def where(self, key):
        with self._lock:
            if key in self.failed:
                return "failed"
            for tier, table in (("device", self.device), ("host", self.host), ("disk", self.disk)):
                if key in table:
                    return tier
            return "loading" if key in self.loading else "object"

    def resident(self, limit=200):
        """Which adapter versions sit on the device and in host RAM, and which of those on the device are pinned
        (hot), as "id:version", for placement."""
        with self._lock:
            held = {tier: [f"{k[0]}:{k[1]}" for k in list(table)[-limit:]]
                    for tier, table in (("device", self.device), ("host", self.host))}
            held["pinned"] = sorted(f"{k[0]}:{k[1]}" for k in self.pinned if k in self.device)[:limit]
            return held

    def buckets(self):
        """Per rank bucket: its slots and how many hold a pinned adapter (placement's rank-bucket capacity).
        Keys are ranks as strings (JSON object keys)."""
        with self._lock:
            pinned = Counter(self.pool.bucket_rank(slot) for key, slot in self.device.items() if key in self.pinned)
            return {str(rank): {"slots": count, "pinned": pinned[rank]} for rank, count in self.pool.buckets.items()}

    def summary(self):
        """Adapters per tier and the timing of recent tier moves, for heartbeats."""
        with self._lock:
            by_move = {}
            for _, source, target, ms in self.moves:
                by_move.setdefault(f"{source}->{target}", []).append(ms)
            return {"device": len(self.device), "host": len(self.host), "disk": len(self.disk),
                    "pinned": len(self.pinned), "failed": len(self.failed), "slots": self.pool.capacity,
                    "buckets": self.buckets(),
                    "host_bytes": sum(h.nbytes for h in self.host.values()),
                    "fragmentation": round(self.fragmentation_index(), 4),
                    "moves": {move: {"count": len(v), "p50_ms": round(sorted(v)[len(v) // 2], 3),
                                     "max_ms": round(max(v), 3)} for move, v in by_move.items()}}

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
            if key in self.failed:
                future = Future()
                future.set_exception(self.failed[key])
                return future
            if key in self.host:
                self.host.move_to_end(key)
                future = Future()
                future.set_result(self.host[key])
                return future
            if key not in self.loading:
                self.tiers.setdefault(key, ref.tier)
                self.loading[key] = self._loader.submit(self._load_to_host, ref, key)
            return self.loading[key]

    def _load_to_host(self, ref, key):
        try:
            path = self._ensure_disk(ref, key)
            started = time.perf_counter()
            facts = validate_adapter(path, self.base_facts, max_rank=self.max_rank)
            if facts.rank > max(self.pool.buckets):
                raise AdapterRejected("rank_too_large", f"rank {facts.rank} exceeds this node's largest slot "
                                      f"bucket {max(self.pool.buckets)}")
            tensors = load_file(str(path / WEIGHTS_FILE))
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
                self.host[key] = adapter
                self._record(key, "disk", "host", started)
                self._trim_host()
            return adapter
        except AdapterRejected as exc:
            with self._lock:
                self.failed[key] = exc
            raise
        finally:
            with self._lock:
                self.loading.pop(key, None)

    def _ensure_disk(self, ref, key):
        path = self.disk_dir / ref.adapter_id / str(ref.version)
        with self._lock:
            if key in self.disk and path.is_dir():
                self.disk.move_to_end(key)
                return path
        started = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        fetch_adapter(ref.uri, path)
        size = sum(f.stat().st_size for f in path.iterdir())
        with self._lock:
            self.disk[key] = size
            self._record(key, "object", "disk", started)
            self._trim_disk()
        return path

    def _trim_host(self):
        while sum(h.nbytes for h in self.host.values()) > self.host_budget:
            victim = next((k for k in self.host if k not in self.device and self.tiers.get(k) != "hot"), None)
            if victim is None:
                return
            del self.host[victim]
            self.counters["host evictions"] += 1

    def _trim_disk(self):
        while sum(self.disk.values()) > self.disk_budget:
            victim = next((k for k in self.disk if k not in self.host and self.tiers.get(k) == "cold"), None)
            if victim is None:
                return
            self._drop_disk(victim)

    def _drop_disk(self, key):
        self.disk.pop(key, None)
        shutil.rmtree(self.disk_dir / key[0] / str(key[1]), ignore_errors=True)

    # ---- device slots (engine thread only) -------------------------------------------------------------
    def activate(self, key, acquire=True):
        """The adapter's slot id, copying it in from host RAM if needed, and (``acquire``) held for a row
        until ``release``: a held adapter is never evicted. Raises NoFreeSlot."""
        with self._lock:
            if key in self.device:
                self.device.move_to_end(key)
                self.counters["device hits"] += 1
                if acquire:
                    self.in_use[key] += 1
                self.uses[key] += 1
                return self.device[key]
            adapter = self.host[key]  # the engine only activates host-ready adapters
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
            self.device[key] = slot
            self.uses[key] += 1
            if acquire:
                self.in_use[key] += 1
            self._record(key, "host", "device", started)
            self._keep_below_threshold(keep=key)
            return slot

    def _free_slot(self, rank):
        fitting = self.pool.slots_for_rank(rank)
        used = set(self.device.values())
        free = [s for s in fitting if s not in used]
        if free:
            return min(free, key=lambda s: (self.pool.bucket_rank(s), s))  # best fit
        for key, slot in self.device.items():  # least recently used first
            if slot in fitting and key not in self.pinned and not self.in_use[key]:
                self._evict_device(key)
                return slot
        raise NoFreeSlot(f"no free slot for rank {rank}: all fitting slots are pinned or in use")

    def holding_slots_for(self, key):
        """The unpinned adapters in the device slots that host-ready ``key`` could take. When ``activate(key)``
        raised NoFreeSlot they are all in use: as long as no new row takes them, the least recently used one is
        released with its last row and its slot goes to ``key``. Empty when every fitting slot is pinned."""
        with self._lock:
            fitting = set(self.pool.slots_for_rank(self.host[key].facts.rank))
            return {k for k, slot in self.device.items() if slot in fitting and k not in self.pinned}

    def _keep_below_threshold(self, keep):
        """Past LRU_EVICTION_THRESHOLD of the slots, evicts least recently used idle adapters to host RAM."""
        limit = int(self.pool.capacity * self.eviction_threshold)
        for key in list(self.device):
            if len(self.device) <= limit:
                return
            if key != keep and key not in self.pinned and not self.in_use[key]:
                self._evict_device(key)

    def _evict_device(self, key):
        slot = self.device.pop(key)
        self.pool.clear(slot)
        self._mark_vacated()
        self.counters["device evictions"] += 1

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
            occupied = [(self.pool.bucket_rank(slot), self.pool.slot_rank.get(slot, 0))
                        for slot in self.device.values()]
        total = sum(bucket for bucket, _ in occupied)
        return (sum(bucket - rank for bucket, rank in occupied) / total) if total else 0.0

    def defragment(self, tau=0.3):
        """While the index is over tau: compact active adapters into best-fit free slots (device-to-device
        copies), then evict the coldest misplaced adapters to host RAM. Returns what it did."""
        before = self.fragmentation_index()
        moved = evicted = 0
        with self._lock:
            # cold = used no more than the median device adapter (fixed for this run); hot ones never leave
            uses = sorted(self.uses[k] for k in self.device)
            median = uses[len(uses) // 2] if uses else 0
            while self.fragmentation_index() > tau:
                used = set(self.device.values())
                misplaced = [(key, slot) for key, slot in self.device.items()
                             if self.pool.slot_rank.get(slot, 0) < self.pool.bucket_rank(slot)]
                progress = False
                for key, slot in sorted(misplaced, key=lambda item: -self.uses[item[0]]):  # hot ones first
                    rank = self.pool.slot_rank[slot]
                    better = [s for s in self.pool.slots_for_rank(rank)
                              if s not in used and self.pool.bucket_rank(s) < self.pool.bucket_rank(slot)]
                    if better and not self.in_use[key]:
                        target = min(better, key=lambda s: (self.pool.bucket_rank(s), s))
                        self.pool.move(slot, target)
                        self._mark_vacated()
                        self.device[key] = target
                        used.discard(slot)
                        used.add(target)
                        moved += 1
                        progress = True
                if self.fragmentation_index() <= tau:
                    break
                cold = [key for key, slot in misplaced if self.device.get(key) == slot and key not in self.pinned
                        and not self.in_use[key] and self.uses[key] <= median]
                if cold:
                    self._evict_device(min(cold, key=lambda k: self.uses[k]))  # least used: back to host RAM
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
            self.in_use[key] -= 1
            if self.in_use[key] <= 0:
                del self.in_use[key]

    # ---- tier changes -----------------------------------------------------------------------------------
    def set_tier(self, ref, tier):
        """hot: pinned on device (activated by the engine); warm: disk + host; cold: object storage only."""
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}")
        key = adapter_key(ref)
        with self._lock:
            self.tiers[key] = tier
            if tier == "hot":
                self.pinned.add(key)
            else:
                self.pinned.discard(key)
            if tier == "cold":
                self.host.pop(key, None)
                if not self.in_use[key] and key in self.device:
                    self._evict_device(key)
                if key not in self.device:
                    self._drop_disk(key)
        if tier in ("hot", "warm"):
            return self.prepare(ref)
        return None

    def evict(self, key, to="host"):
        """Moves an adapter down to host RAM (``to="host"``) or to node-local disk (``to="disk"``); an
        adapter a running row holds stays on the device until the row ends."""
        with self._lock:
            self.pinned.discard(key)
            if key in self.device and not self.in_use[key]:
                self._evict_device(key)
            if to == "disk":
                self.host.pop(key, None)

    def forget_failure(self, key):
        """A corrected upload (new version) is a new key anyway; this is for an operator's retry."""
        with self._lock:
            self.failed.pop(key, None)

    def shutdown(self):
        self._loader.shutdown(wait=False, cancel_futures=True)
