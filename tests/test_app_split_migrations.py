"""A database migrated before the inference app was split into adapters, fleet, serving and training keeps every row:
rows written through the historical models of the last migrations before the split are read, with their foreign keys,
through the new apps' models once the database is migrated forward (SQLite here, PostgreSQL with DATABASE_URL)."""

from datetime import date
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

BEFORE_SPLIT = [("tenants", "0002_audit_log"), ("inference", "0004_request_failover"),
                ("billing", "0007_gradient_per_token_price"),
                ("adapters", None), ("fleet", None), ("serving", None), ("training", None)]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()  # what was applied
    return executor.loader


def write_before_the_split(old):
    """The rows of each moved model, through the historical models of the inference app."""
    now = timezone.now()
    tenant = old.get_model("tenants", "Tenant").objects.create(name="Acme", slug="acme")
    node = old.get_model("inference", "Node").objects.create(
        name="gpu-1", base_model="tiny", state={"queue_depth": 2}, last_heartbeat_at=now)
    base = old.get_model("inference", "BaseModel").objects.create(name="tiny", architecture={"layers": 2})
    adapter = old.get_model("inference", "Adapter").objects.create(tenant=tenant, base_model=base, name="bot",
                                                                   tier="warm")
    version = old.get_model("inference", "AdapterVersion").objects.create(
        adapter=adapter, number=1, status="ready", sha256="a" * 64, size_bytes=1234, rank=8, alpha=16.0,
        target_modules=["q_proj"], dtype="F32", storage_key="adapters/t1/x")
    adapter.current_version = version
    adapter.save()
    request = old.get_model("inference", "InferenceRequest").objects.create(
        id="req_before", tenant=tenant, base_model=base, adapter_version=version, tier="warm", node=node,
        status="succeeded", max_tokens=16, completion_tokens=5, gpu_ms=12.5)
    dataset = old.get_model("inference", "Dataset").objects.create(
        id="ds_before", tenant=tenant, name="train.jsonl", format="chat", records=3, size_bytes=99, sha256="b" * 64,
        storage_key="datasets/x")
    job = old.get_model("inference", "TrainingJob").objects.create(
        id="ftjob_before", tenant=tenant, base_model=base, adapter=adapter, base_version=version, dataset=dataset,
        status="succeeded", node=node, trained_steps=1)
    old.get_model("inference", "TrainingStep").objects.create(job=job, step=1, gradients=10, micro_batches=1,
                                                              tokens=5, compute_ms=3.0, loss=1.5)
    old.get_model("inference", "ScaleUpSignal").objects.create(base_model="tiny", reason="no node")
    # The seeded plan, or one of its own where a transactional test before this one flushed the seeded rows.
    plans = old.get_model("billing", "PricePlan").objects
    plan = plans.order_by("pk").first() or plans.create(name="standard", version=1, effective_from=now)
    old.get_model("billing", "UsageEvent").objects.create(
        key="inference:req_before", tenant=tenant, kind="inference", plan=plan, occurred_at=now,
        period=date(now.year, now.month, 1), tier="warm", adapter=adapter, adapter_version=version, request=request,
        units=5, cost=Decimal("0.0005"))
    old.get_model("billing", "UsageEvent").objects.create(
        key="training:ftjob_before:1", tenant=tenant, kind="training", plan=plan, occurred_at=now,
        period=date(now.year, now.month, 1), adapter=adapter, job=job, step=1, cost=Decimal("0.0001"))


@pytest.mark.django_db(transaction=True)
def test_rows_written_before_the_split_are_read_through_the_new_apps():
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    try:
        loader = migrate(BEFORE_SPLIT)
        assert ("adapters", "0001_initial") not in loader.applied_migrations
        write_before_the_split(loader.project_state(BEFORE_SPLIT[:3]).apps)
    finally:
        migrate(latest)  # the other tests' schema, whatever happened above

    from adapters.models import Adapter, AdapterVersion, BaseModel
    from billing.models import UsageEvent
    from fleet.models import Node, ScaleUpSignal
    from serving.models import InferenceRequest
    from training.models import Dataset, TrainingJob, TrainingStep

    node = Node.objects.get()
    assert (node.name, node.base_model, node.state) == ("gpu-1", "tiny", {"queue_depth": 2})
    assert BaseModel.objects.get().architecture == {"layers": 2}
    adapter = Adapter.objects.get()
    assert (adapter.name, adapter.tier, adapter.tenant.slug, adapter.base_model.name) == ("bot", "warm", "acme", "tiny")
    version = AdapterVersion.objects.get()
    assert adapter.current_version == version and (version.rank, version.size_bytes) == (8, 1234)
    request = InferenceRequest.objects.get()
    assert (request.pk, request.node, request.adapter_version, request.gpu_ms) == ("req_before", node, version, 12.5)
    assert list(node.requests.all()) == [request] and list(version.requests.all()) == [request]
    dataset = Dataset.objects.get()
    job = TrainingJob.objects.get()
    assert (job.pk, job.dataset, job.adapter, job.base_version, job.node) == ("ftjob_before", dataset, adapter,
                                                                             version, node)
    assert TrainingStep.objects.get().job == job and list(adapter.training_jobs.all()) == [job]
    assert ScaleUpSignal.objects.get().reason == "no node"
    inference, training = UsageEvent.objects.order_by("key")
    assert (inference.request, inference.adapter, inference.adapter_version) == (request, adapter, version)
    assert (training.job, training.step) == (job, 1)

    # the moved models write too, into the same tables (new rows get ids after the old ones)
    again = Node.objects.create(name="gpu-2", last_heartbeat_at=timezone.now())
    assert again.pk > node.pk and Node.objects.count() == 2
