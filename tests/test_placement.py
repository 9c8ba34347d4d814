"""Algorithm 2: candidates, scores (alpha load + beta locality + gamma affinity), scale-up signals, and
hot capacity; the tier rules before it (hot on its pin, warm on host-RAM holders, rank-bucket capacity)."""


import pytest

from adapters.models import Adapter, AdapterVersion, BaseModel
from fleet.models import Node, ScaleUpSignal
from fleet.placement import NoCapacity, pin_sent, place, place_hot, score_nodes
from serving.dispatch import inference_submit
from serving.models import InferenceRequest
from tenants.keys import principal_from_membership
from tenants.models import Membership
from tests.factories import make_node, make_request

SAMPLING = {"max_tokens": 8, "temperature": 0, "top_p": 1.0, "top_k": 0, "stop": [], "seed": None}


@pytest.fixture
def base(db):
    return BaseModel.objects.create(name="tiny-llama", architecture={}, context_length=256)


@pytest.fixture
def version(acme, base):
    adapter = Adapter.objects.create(tenant=acme, base_model=base, name="bot")
    v = AdapterVersion.objects.create(adapter=adapter, number=1, status="ready", sha256="0" * 64, size_bytes=1,
                                      rank=8, alpha=16, target_modules=["q_proj"], dtype="F32", storage_key="k")
    adapter.current_version = v
    adapter.save()
    return v


def test_load_decides_when_nothing_else_differs(acme, base, version):
    make_node("busy", on_device=8)
    make_node("idle", on_device=1)
    assert place(tenant=acme, base_model=base, version=version).name == "idle"


def test_requests_in_flight_count_as_load_so_a_burst_spreads_over_the_nodes(acme, base):
    """Heartbeats are seconds old: the request rows say how full each node's batch is now. One tenant's burst of
    base-model requests stays on the node its affinity favours until that node is half full, then spreads."""
    a, b = make_node("node-a", max_batch=8), make_node("node-b", max_batch=8)
    placed = []
    for i in range(8):
        where = place(tenant=acme, base_model=base)
        placed.append(where.name)
        make_request(acme, base, request_id=f"req_burst_{i}", max_tokens=1, node=where, status="running")
    assert placed[0] == "node-a" and set(placed) == {"node-a", "node-b"}
    assert abs(placed.count("node-a") - placed.count("node-b")) <= 4
    InferenceRequest.objects.update(status="succeeded")  # finished rows weigh nothing
    scored = {s.node.name: s for s in score_nodes(tenant=acme, base_model=base)}
    assert scored["node-a"].load == scored["node-b"].load == 1.0
    assert a.pk != b.pk


def test_locality_beats_a_little_load(acme, base, version):
    make_node("has-it", on_device=5, resident=[f"a{version.adapter_id}:1"])  # 0.5*0.5 + 0.3*1 = 0.55
    make_node("empty", on_device=2)  # 0.5*0.8 = 0.40
    scored = score_nodes(tenant=acme, base_model=base, version=version)
    assert [s.node.name for s in scored] == ["has-it", "empty"]
    assert scored[0].score == pytest.approx(0.55) and scored[0].locality == 1.0


def test_host_ram_counts_half_and_tenant_affinity_counts(acme, alice, base, version):
    warm = make_node("warm", on_device=4, host=[f"a{version.adapter_id}:1"])  # 0.5*0.6 + 0.3*0.5 = 0.45
    usual = make_node("usual", on_device=4)  # 0.5*0.6 + 0.2*affinity
    for i in range(4):
        make_request(acme, base, request_id=f"req_{i}", max_tokens=1, node=usual)
    scored = {s.node.name: s for s in score_nodes(tenant=acme, base_model=base, version=version)}
    assert scored["warm"].score == pytest.approx(0.45) and scored["usual"].affinity == 1.0
    assert scored["usual"].score == pytest.approx(0.5)
    assert place(tenant=acme, base_model=base, version=version) == usual
    del warm


def test_not_candidates_full_other_base_or_down(acme, base, version):
    make_node("full", on_device=10)
    make_node("other", base="llama-70b")
    make_node("silent", age_s=3600)
    make_node("down", status="down")
    with pytest.raises(NoCapacity):
        place(tenant=acme, base_model=base, version=version)
    make_node("full-but-resident", on_device=10, resident=[f"a{version.adapter_id}:1"])
    assert place(tenant=acme, base_model=base, version=version).name == "full-but-resident"
    assert place(tenant=acme, base_model=base).name == "full"  # base-only rows need no slot


def test_no_capacity_is_a_503_style_refusal_that_records_a_scale_up_signal(acme, alice, base, version):
    principal = principal_from_membership(Membership.objects.get(user=alice, tenant=acme))
    with pytest.raises(NoCapacity):
        inference_submit(principal=principal, base_model=base, version=version, prompt="hi", sampling=SAMPLING,
                         api="infer")
    assert InferenceRequest.objects.count() == 0  # the request itself wrote nothing
    assert ScaleUpSignal.objects.get().base_model == "tiny-llama"  # but the autoscaler hears about it


def test_hot_capacity_goes_to_the_node_with_most_room(acme, base, version, settings):
    settings.VAJRA_HOT_SLOT_SHARE = 0.5
    make_node("a", slots=10, pinned=4)
    make_node("b", slots=10, pinned=1)
    assert place_hot(base_model=base, adapter=version.adapter).name == "b"
    Node.objects.update(state={"adapters": {"slots": 10, "pinned": 5}})
    with pytest.raises(NoCapacity, match="hot capacity"):
        place_hot(base_model=base, adapter=version.adapter)


def test_request_status_moves_queued_running_terminal_once(acme, base, version):
    from serving.dispatch import inference_start
    from tests.factories import record_node_final

    up = make_node("n1")
    row = make_request(acme, base, request_id="req_s", max_tokens=4)
    inference_start(request_id=row.id, node_name="n1")
    row.refresh_from_db()
    assert row.status == "running" and row.node == up
    final = {"finish_reason": "length", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "cached_tokens": 0},
             "timings": {"queued_ms": 1.0, "adapter_ready_ms": 0.0, "first_token_ms": 5.0, "total_ms": 9.0},
             "gpu_ms": 8.0, "error": None}
    record_node_final(row.id, final)
    record_node_final(row.id, {**final, "usage": {"completion_tokens": 99}})  # a duplicate
    inference_start(request_id=row.id, node_name="n1")  # a late start never reopens it
    row.refresh_from_db()
    assert (row.status, row.completion_tokens, row.gpu_ms) == ("succeeded", 4, 8.0)


def in_flight(acme, base, where, n):
    for i in range(n):
        make_request(acme, base, request_id=f"req_{where.name}_{i}", max_tokens=1, node=where, status="running")


@pytest.fixture
def sent(monkeypatch):
    from vajra.celery import app

    calls = []
    monkeypatch.setattr(app, "send_task", lambda name, args=None, **options: calls.append((name, args, options)))
    return calls


def tier(version, name):
    version.adapter.tier = name
    version.adapter.save()
    return version


def test_hot_never_leaves_its_pin_while_the_pin_is_up_however_busy(acme, base, version, sent):
    """Load, locality elsewhere and the tenant's affinity all favour the other node: the hot request still runs
    on the node that pins its adapter, and nothing is re-pinned."""
    token = f"a{tier(version, 'hot').adapter_id}:1"
    pinned = make_node("pinned", on_device=9, max_batch=4, pins=[token])
    idle = make_node("idle", on_device=0, max_batch=4, host=[token])
    in_flight(acme, base, pinned, 4)  # its batch is full
    for i in range(10):  # and all the tenant's recent requests ran on the other
        make_request(acme, base, request_id=f"req_aff_{i}", max_tokens=1, node=idle, status="succeeded")
    assert place(tenant=acme, base_model=base, version=version) == pinned
    assert [s.node.name for s in score_nodes(tenant=acme, base_model=base, version=version)] == ["pinned"]
    assert place(tenant=acme, base_model=base) == idle  # a base-model request goes by load as ever
    assert sent == [] and pin_sent(token) is None


def test_a_hot_adapter_pinned_on_two_nodes_goes_to_the_less_busy_pin(acme, base, version):
    token = f"a{tier(version, 'hot').adapter_id}:1"
    busy = make_node("pin-busy", max_batch=4, pins=[token])
    spare = make_node("pin-spare", max_batch=4, pins=[token])
    make_node("no-pin", max_batch=4)
    in_flight(acme, base, busy, 3)
    assert place(tenant=acme, base_model=base, version=version) == spare


def test_a_hot_request_whose_pin_is_down_moves_the_pin_where_it_runs(acme, base, version, sent,
                                                                     django_capture_on_commit_callbacks):
    """The pinned node is down: the request runs on an up node (one holding the adapter in host RAM first) and the
    pin moves there (the failover pin), so the next request goes there before any heartbeat reports it."""
    token = f"a{tier(version, 'hot').adapter_id}:1"
    make_node("gone", pins=[token], status="down")
    make_node("empty", on_device=0)
    holder = make_node("holder", on_device=5, host=[token])
    with django_capture_on_commit_callbacks(execute=True):
        assert place(tenant=acme, base_model=base, version=version) == holder
    assert [(name, args[1], options["queue"]) for name, args, options in sent] == [
        ("runtime.set_tier", "hot", "node.holder")]
    assert pin_sent(token) == "holder"
    sent.clear()
    Node.objects.filter(name="holder").update(state={"adapters": {"slots": 10, "device": 10}, "resident": {}})
    with django_capture_on_commit_callbacks(execute=True):  # full, its heartbeat not yet showing the pin
        assert place(tenant=acme, base_model=base, version=version) == holder
    assert sent == []  # the pin is on its way: not sent again


def test_a_hot_request_whose_pin_is_down_runs_unpinned_where_no_node_has_hot_capacity(
        acme, base, version, sent, settings, django_capture_on_commit_callbacks):
    settings.VAJRA_HOT_SLOT_SHARE = 0.5
    token = f"a{tier(version, 'hot').adapter_id}:1"
    make_node("gone", pins=[token], status="down")
    spare = make_node("spare", slots=10, pinned=5)  # every hot slot of its share taken
    with django_capture_on_commit_callbacks(execute=True):
        assert place(tenant=acme, base_model=base, version=version) == spare
    assert sent == [] and pin_sent(token) is None


def test_warm_prefers_nodes_holding_it_in_host_ram_over_load(acme, base, version):
    token = f"a{tier(version, 'warm').adapter_id}:1"
    holder = make_node("holder", on_device=8, host=[token])  # 0.5*0.2 + 0.3*0.5 = 0.25
    make_node("idle", on_device=0)  # 0.5*1.0 = 0.5: Algorithm 2 alone would pick it
    assert place(tenant=acme, base_model=base, version=version) == holder
    Node.objects.filter(name="holder").update(state={"adapters": {"slots": 10, "device": 10},
                                                     "resident": {"host": [token]}})
    assert place(tenant=acme, base_model=base, version=version).name == "idle"  # the holder has no free slot
    tier(version, "cold")
    Node.objects.filter(name="holder").update(state={"adapters": {"slots": 10, "device": 8},
                                                     "resident": {"host": [token]}})
    assert place(tenant=acme, base_model=base, version=version).name == "idle"  # cold: Algorithm 2 alone


def test_rank_bucket_capacity_filters_candidates(acme, base, version):
    """A rank-16 adapter: a node whose pool has no bucket that large is no candidate, nor one whose fitting bucket
    is full of pinned adapters; a bigger bucket with an unpinned slot fits; an adapter already resident fits."""
    AdapterVersion.objects.filter(pk=version.pk).update(rank=16)
    version.refresh_from_db()
    make_node("small-buckets", buckets={"8": {"slots": 8, "pinned": 0}})
    make_node("pinned-full", buckets={"8": {"slots": 8, "pinned": 0}, "16": {"slots": 2, "pinned": 2}})
    with pytest.raises(NoCapacity):
        place(tenant=acme, base_model=base, version=version)
    assert place(tenant=acme, base_model=base).name in {"small-buckets", "pinned-full"}  # base-only: no slot
    make_node("resident", on_device=9, resident=[f"a{version.adapter_id}:1"], buckets={"8": {"slots": 10, "pinned": 0}})
    assert place(tenant=acme, base_model=base, version=version).name == "resident"
    make_node("big-bucket", on_device=9, buckets={"8": {"slots": 8, "pinned": 0}, "64": {"slots": 2, "pinned": 1}})
    assert {s.node.name for s in score_nodes(tenant=acme, base_model=base, version=version)} == {
        "resident", "big-bucket"}


def test_hot_capacity_needs_a_rank_bucket_that_fits(acme, base, version, settings):
    settings.VAJRA_HOT_SLOT_SHARE = 0.5
    AdapterVersion.objects.filter(pk=version.pk).update(rank=32)
    version.adapter.refresh_from_db()
    make_node("roomy-small", slots=20, buckets={"8": {"slots": 20, "pinned": 0}})
    make_node("fits", slots=10, pinned=3, buckets={"8": {"slots": 6, "pinned": 0}, "32": {"slots": 4, "pinned": 3}})
    assert place_hot(base_model=base, adapter=version.adapter).name == "fits"
