"""The adapter store owns every tier move: object storage -> disk -> host RAM -> device slot, with LRU
eviction past the threshold, pinned hot adapters, fail-fast memory of broken adapters, timed moves, and
Algorithm 4's defragmentation."""

import shutil

import pytest
import torch

from gpu_runtime.adapter_entry import NoFreeSlot, adapter_key
from gpu_runtime.adapter_store import AdapterStore
from gpu_runtime.adapter_validation import AdapterRejected
from gpu_runtime.generation import AdapterRef
from gpu_runtime.lora import SlotPool
from tests.runtime_fixtures import BASE_FACTS, runtime_model, save_peft_adapter, tiny_base


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    base = tiny_base()
    root = tmp_path_factory.mktemp("objects")
    ranks = [4, 4, 4, 8, 8, 2]
    return base, [save_peft_adapter(base, root / f"a{i}", seed=i, r=r) for i, r in enumerate(ranks)]


def refs(paths):
    return [AdapterRef(f"a{i}", 1, str(p)) for i, p in enumerate(paths)]


@pytest.fixture
def store_for(objects, tmp_path):
    base, _ = objects
    made = []

    def build(buckets, **kwargs):
        model = runtime_model(base)
        pool = SlotPool(model, BASE_FACTS, buckets)
        store = AdapterStore(pool, BASE_FACTS, disk_dir=tmp_path / f"disk{len(made)}",
                             **{"eviction_threshold": 1.0, **kwargs})
        store.model = model  # for tests that run the model
        made.append(store)
        return store

    yield build
    for store in made:
        store.shutdown()


def ready(store, ref):
    store.prepare(ref).result(timeout=30)
    return adapter_key(ref)


def test_tiers_in_order_and_every_move_is_timed(store_for, objects):
    store = store_for({4: 2})
    ref = refs(objects[1])[0]
    key = adapter_key(ref)
    assert store.where(key) == "object"
    ready(store, ref)
    assert store.where(key) == "host" and (store.disk_dir / "a0" / "1").is_dir()
    slot = store.activate(key)
    assert store.where(key) == "device" and slot in (1, 2)
    assert [(m[1], m[2]) for m in store.moves] == [("object", "disk"), ("disk", "host"), ("host", "device")]
    assert all(m[3] >= 0 for m in store.moves)
    assert store.activate(key) == slot and store.counters["device hits"] == 1


def test_lru_eviction_past_threshold_spares_pinned_in_use_and_the_newcomer(store_for, objects):
    store = store_for({4: 2, 8: 2}, eviction_threshold=0.5)  # past 2 of 4 slots, idle adapters go to host
    r = refs(objects[1])
    a0, a1, a2, a5 = [ready(store, ref) for ref in (r[0], r[1], r[2], r[5])]
    store.set_tier(AdapterRef(r[0].adapter_id, r[0].version, r[0].uri, "hot"), "hot").result(timeout=30)  # pinned
    store.activate(a0, acquire=False)
    store.activate(a1)  # held by a running row
    store.activate(a2, acquire=False)  # 3 > 2, but everything else is pinned or in use: a2 stays
    assert [store.where(k) for k in (a0, a1, a2)] == ["device"] * 3
    store.activate(a5, acquire=False)  # now a2 is the least recently used idle one
    assert store.where(a2) == "host" and store.where(a5) == "device"
    assert store.where(a0) == "device" and store.where(a1) == "device"


def test_full_bucket_evicts_least_recently_used_idle_adapter(store_for, objects):
    store = store_for({4: 2})
    a0, a1, a2 = [ready(store, r) for r in refs(objects[1])[:3]]
    store.activate(a0, acquire=False)
    store.activate(a1, acquire=False)
    store.activate(a0, acquire=False)  # a1 is now least recently used
    store.activate(a2, acquire=False)
    assert store.where(a1) == "host" and store.where(a0) == "device" and store.where(a2) == "device"
    assert store.counters["device evictions"] == 1


def test_no_free_slot_when_all_are_pinned_or_in_use(store_for, objects):
    store = store_for({4: 1})
    a0, a1 = [ready(store, r) for r in refs(objects[1])[:2]]
    store.activate(a0)  # held by a running row
    with pytest.raises(NoFreeSlot):
        store.activate(a1)
    store.release(a0)
    store.activate(a1)
    assert store.where(a0) == "host"


def test_broken_adapter_fails_fast_and_is_never_placed(store_for, tmp_path):
    store = store_for({4: 1})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 999, "target_modules": ["q_proj"]}')
    ref = AdapterRef("broken", 3, str(broken))
    with pytest.raises(AdapterRejected) as first:
        store.prepare(ref).result(timeout=30)
    assert first.value.code == "bad_rank" and store.where(ref.key) == "failed"
    moves = len(store.moves)
    with pytest.raises(AdapterRejected):
        store.prepare(ref).result(timeout=1)
    assert len(store.moves) == moves  # no second fetch


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_nan_or_inf_value_is_refused_as_it_is_read_and_never_placed(store_for, objects, tmp_path, value):
    """The store checks the values once, on the tensors it reads into host RAM (the file scan is skipped)."""
    from safetensors.torch import load_file, save_file

    _, paths = objects
    bad = tmp_path / "bad"
    shutil.copytree(paths[0], bad)
    tensors = load_file(str(bad / "adapter_model.safetensors"))
    name = sorted(tensors)[-1]
    tensors[name][0, 0] = value
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    store = store_for({4: 1})
    ref = AdapterRef("bad", 1, str(bad))
    with pytest.raises(AdapterRejected) as info:
        store.prepare(ref).result(timeout=30)
    assert info.value.code == "non_finite" and name in info.value.message
    assert store.where(ref.key) == "failed" and store.pool.slot_modules == {}


def test_rank_above_every_bucket_is_refused_before_touching_slots(store_for, objects):
    store = store_for({4: 2})
    with pytest.raises(AdapterRejected) as info:
        store.prepare(refs(objects[1])[3]).result(timeout=30)  # rank 8
    assert info.value.code == "rank_too_large" and store.census()["device"] == 0


def test_set_tier_cold_drops_host_and_disk(store_for, objects):
    store = store_for({4: 2})
    ref = refs(objects[1])[0]
    store.set_tier(ref, "warm").result(timeout=30)
    assert store.where(adapter_key(ref)) == "host"
    store.set_tier(ref, "cold")
    assert store.where(adapter_key(ref)) == "object" and not (store.disk_dir / "a0" / "1").exists()


def test_host_budget_evicts_least_recently_used(store_for, objects):
    store = store_for({4: 2}, host_budget_bytes=1)  # room for nothing beyond the newest
    first, second = refs(objects[1])[:2]
    ready(store, first)
    ready(store, second)
    assert store.where(adapter_key(first)) == "disk" and store.counters["host evictions"] >= 1


def test_defragmentation_compacts_misplaced_adapters_and_keeps_their_output(store_for, objects):
    store = store_for({2: 1, 4: 1, 8: 2})
    r = refs(objects[1])
    a0, a1, a2, a5 = [ready(store, ref) for ref in (r[0], r[1], r[2], r[5])]  # ranks 4, 4, 4, 2
    for key in (a0, a1, a2, a5):
        store.activate(key, acquire=False)
    assert store.pool.bucket_rank(store.slot(a0)) == 4 and store.pool.bucket_rank(store.slot(a5)) == 2
    store.evict(a0)  # frees the rank-4 slot; a1 and a2 still pad rank 4 to 8
    assert store.fragmentation_index() == pytest.approx(8 / 18)
    ids = torch.randint(3, 100, (1, 6))

    def logits(key):
        store.pool.set_rows([store.slot(key)])
        with torch.no_grad():
            return store.model(ids).logits

    before = {key: logits(key) for key in (a1, a2)}
    result = store.defragment(tau=0.3)
    assert result == {"before": pytest.approx(0.4444, abs=1e-4), "after": pytest.approx(4 / 14, abs=1e-4),
                      "moved": 1, "evicted": 0}
    assert sorted(store.pool.bucket_rank(store.slot(k)) for k in (a1, a2)) == [4, 8]
    for key in (a1, a2):
        assert torch.allclose(logits(key), before[key], atol=1e-6)  # the moved adapter computes as before


def test_defragmentation_evicts_the_coldest_when_compaction_cannot_help(store_for, objects):
    store = store_for({4: 1, 8: 3})
    r = refs(objects[1])
    keys = [ready(store, ref) for ref in (r[0], r[1], r[2], r[5])]  # ranks 4, 4, 4, 2
    for key in keys:
        store.activate(key, acquire=False)
    store.activate(keys[1], acquire=False)  # used twice: hotter than keys[2] and keys[3]
    result = store.defragment(tau=0.3)
    # the 4-bucket is full, so nothing can move; the two cold misplaced adapters go back to host RAM and
    # the hot one stays even though the index is still above tau
    assert result["moved"] == 0 and result["evicted"] == 2
    assert result["after"] == pytest.approx(4 / 12, abs=1e-4)
    assert store.where(keys[1]) == "device" and store.where(keys[2]) == store.where(keys[3]) == "host"


def test_s3_compatible_object_storage(store_for, objects, monkeypatch):
    """A real S3 API on loopback (moto's server) stands in for AWS/MinIO: S3 lies outside the project."""
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.processes import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        creds = dict(aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
        s3 = boto3.client("s3", endpoint_url=endpoint, **creds)
        s3.create_bucket(Bucket="adapters")
        source = objects[1][0]
        for path in source.iterdir():
            s3.upload_file(str(path), "adapters", f"tenant-a/a0/v1/{path.name}")
        monkeypatch.setenv("VAJRA_S3_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        store = store_for({4: 2})  # builds its own boto3 client from the environment
        ref = AdapterRef("a0", 1, "s3://adapters/tenant-a/a0/v1")
        key = ready(store, ref)
        assert store.where(key) == "host" and sorted(p.name for p in (store.disk_dir / "a0" / "1").iterdir()) == \
            sorted(p.name for p in source.iterdir())
        with pytest.raises(AdapterRejected) as missing:
            store.prepare(AdapterRef("nope", 1, "s3://adapters/tenant-a/nope/v1")).result(timeout=30)
        assert missing.value.code == "adapter_not_found"
    finally:
        server.stop()


def test_summary_reports_tiers_and_timed_moves(store_for, objects):
    store = store_for({4: 2})
    key = ready(store, refs(objects[1])[0])
    store.activate(key, acquire=False)
    summary = store.summary()
    assert (summary["device"], summary["host"], summary["disk"], summary["slots"]) == (1, 1, 1, 2)
    assert set(summary["moves"]) == {"object->disk", "disk->host", "host->device"}
    assert all(m["count"] == 1 and m["max_ms"] >= m["p50_ms"] >= 0 for m in summary["moves"].values())


def test_heartbeat_reports_pins_on_device_and_pinned_slots_per_rank_bucket(store_for, objects):
    """What placement needs from a node: which versions are pinned on its device (a hot pin only counts once it
    is there) and, per rank bucket, its slots and how many of them pinned adapters hold."""
    store = store_for({4: 2, 8: 1})
    r0, r1, r3 = (refs(objects[1])[i] for i in (0, 1, 3))  # ranks 4, 4, 8
    for ref in (r0, r3):
        store.set_tier(AdapterRef(ref.adapter_id, ref.version, ref.uri, "hot"), "hot").result(timeout=30)
    assert store.resident()["pinned"] == []  # pinned in name, not yet on the device
    store.activate(adapter_key(r0), acquire=False)
    store.activate(adapter_key(r3), acquire=False)
    store.activate(ready(store, r1), acquire=False)  # on the device, not pinned
    resident = store.resident()
    assert resident["pinned"] == ["a0:1", "a3:1"] and set(resident["device"]) == {"a0:1", "a1:1", "a3:1"}
    assert store.summary()["buckets"] == {"4": {"slots": 2, "pinned": 1}, "8": {"slots": 1, "pinned": 1}}
