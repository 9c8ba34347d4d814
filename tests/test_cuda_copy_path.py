"""The adapter store's CUDA branch (slot writes on a side copy stream from pinned host memory), driven on a CPU
with a recording stand-in for ``torch.cuda``: host copies are pinned, writes go on the copy stream, the copy
stream waits for the compute stream before it overwrites a reused slot (a queued forward may still read it),
and the compute stream waits for the copy before a forward uses the slot. The tensors themselves are real
CPU tensors, so the slots' contents are checked against the plain CPU path too."""

import itertools
from contextlib import contextmanager

import pytest
import torch

from gpu_runtime.adapter_entry import adapter_key
from gpu_runtime.adapter_store import AdapterStore
from gpu_runtime.generation import AdapterRef
from gpu_runtime.lora import SlotPool
from tests.runtime_fixtures import BASE_FACTS, runtime_model, save_peft_adapter, tiny_base


class FakeStream:
    def __init__(self, cuda, name):
        self.cuda, self.name = cuda, name

    def wait_stream(self, other):
        self.cuda.log.append(("wait_stream", self.name, other.name))

    def wait_event(self, event):
        self.cuda.log.append(("wait_event", self.name, event.name))


class FakeEvent:
    def __init__(self, cuda, name):
        self.cuda, self.name = cuda, name

    def record(self, stream):
        self.cuda.log.append(("record", self.name, stream.name))


class FakeCuda:
    """Records, in order, what the store asks of torch.cuda; ``active`` is the thread's current stream."""

    def __init__(self):
        self.log = []
        self.compute = FakeStream(self, "compute")
        self.active = self.compute
        self._ids = itertools.count(1)

    def Stream(self, device=None):  # noqa: N802  (torch.cuda's names)
        return FakeStream(self, f"copy{next(self._ids)}")

    def Event(self):  # noqa: N802
        return FakeEvent(self, f"event{next(self._ids)}")

    def current_stream(self, device=None):
        return self.active

    @contextmanager
    def stream(self, stream):
        previous, self.active = self.active, stream
        try:
            yield
        finally:
            self.active = previous


@pytest.fixture
def pinning(monkeypatch):
    """Tensor.pin_memory needs a CUDA build; this one marks the copy it returns, and is_pinned reads the mark."""
    def pin_memory(self):
        pinned = self.clone()
        pinned.fake_pinned = True
        return pinned

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: getattr(self, "fake_pinned", False))


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    base = tiny_base()
    root = tmp_path_factory.mktemp("objects")
    return base, [AdapterRef(f"a{i}", 1, str(save_peft_adapter(base, root / f"a{i}", seed=i, r=4))) for i in range(3)]


@pytest.fixture
def build(objects, tmp_path):
    base, _ = objects
    made = []

    def make(buckets, cuda=None):
        model = runtime_model(base)
        pool = SlotPool(model, BASE_FACTS, buckets)
        store = AdapterStore(pool, BASE_FACTS, disk_dir=tmp_path / f"disk{len(made)}", eviction_threshold=1.0,
                             cuda=cuda)
        store.model = model
        made.append(store)
        if cuda is not None:
            record(store, cuda)
        return store

    yield make
    for store in made:
        store.shutdown()


def record(store, cuda):
    """Logs each slot write and clear with the stream it was issued on, and each forward pass of the model."""
    pool = store.pool
    write, clear = pool.write, pool.clear

    def logged_write(slot, weights, scaling, non_blocking=False):
        cuda.log.append(("write", slot, cuda.active.name, non_blocking))
        return write(slot, weights, scaling, non_blocking=non_blocking)

    def logged_clear(slot):
        cuda.log.append(("clear", slot, cuda.active.name))
        return clear(slot)

    pool.write, pool.clear = logged_write, logged_clear
    store.model.register_forward_pre_hook(lambda *_: cuda.log.append(("forward", cuda.active.name)))


def ready(store, ref):
    store.prepare(ref).result(timeout=30)
    return adapter_key(ref)


IDS = torch.tensor([[5, 9, 17, 33, 4, 60]])


def logits(store, key):
    store.pool.set_rows([store.slot(key)])
    with torch.no_grad():
        return store.model(IDS).logits


def at(log, entry):
    return log.index(entry)


def test_host_copies_are_pinned_and_writes_go_on_the_copy_stream_before_compute_reads(build, objects, pinning):
    cuda = FakeCuda()
    store = build({4: 1}, cuda=cuda)
    copy_stream = store._copy_stream.name
    key = ready(store, objects[1][0])
    weights = store.host_adapter(key).weights
    assert weights and all(A.is_pinned() and B.is_pinned() for A, B in weights.values())

    slot = store.activate(key)
    out = logits(store, key)
    log = cuda.log
    write = ("write", slot, copy_stream, True)  # non-blocking, on the side stream
    assert write in log and ("wait_stream", "compute", copy_stream) in log
    assert at(log, write) < at(log, ("wait_stream", "compute", copy_stream)) < at(log, ("forward", "compute"))
    assert not any(entry[0] == "wait_event" for entry in log)  # a fresh slot: nothing queued can read it

    plain = build({4: 1})  # the CPU path: same weights in the slot, same logits
    plain.activate(ready(plain, objects[1][0]))
    assert torch.equal(out, logits(plain, adapter_key(objects[1][0])))


def test_a_reused_slot_is_overwritten_only_after_the_compute_stream_is_done_with_it(build, objects, pinning):
    cuda = FakeCuda()
    store = build({4: 1}, cuda=cuda)  # one slot: the second adapter must reuse it
    copy_stream = store._copy_stream.name
    first, second = (ready(store, ref) for ref in objects[1][:2])
    slot = store.activate(first)
    logits(store, first)  # a forward reading the slot, queued on the compute stream
    store.release(first)
    del cuda.log[:]

    assert store.activate(second) == slot
    log = cuda.log
    clear = ("clear", slot, "compute")
    record_at = next(i for i, e in enumerate(log) if e[0] == "record" and e[2] == "compute")
    event = log[record_at][1]
    wait = ("wait_event", copy_stream, event)
    write = ("write", slot, copy_stream, True)
    compute_waits = ("wait_stream", "compute", copy_stream)
    # clear (after the queued forward, on compute) -> event there -> copy stream waits on it -> write -> compute waits
    assert at(log, clear) < record_at < at(log, wait) < at(log, write) < at(log, compute_waits)

    plain = build({4: 1})
    plain.activate(ready(plain, objects[1][1]))
    assert torch.equal(logits(store, second), logits(plain, adapter_key(objects[1][1])))


def test_a_slot_freed_by_defragmentation_is_written_after_the_move(build, objects, pinning):
    cuda = FakeCuda()
    store = build({4: 1, 8: 1}, cuda=cuda)
    copy_stream = store._copy_stream.name
    a0, a1, a2 = (ready(store, ref) for ref in objects[1])
    store.activate(a0, acquire=False)
    big = store.activate(a1, acquire=False)  # rank 4 padded into the rank-8 slot
    store.evict(a0)
    moving = len(cuda.log)
    assert store.defragment(tau=0.1)["moved"] == 1  # a1 moves (on compute) into the rank-4 slot
    recorded = [e[1] for e in cuda.log[moving:] if e[0] == "record" and e[2] == "compute"]
    assert recorded  # the move's clear of the old slot, marked on the compute stream

    start = len(cuda.log)
    assert store.activate(a2) == big  # the slot the move just vacated
    log = cuda.log[start:]
    assert at(log, ("wait_event", copy_stream, recorded[-1])) < at(log, ("write", big, copy_stream, True))
