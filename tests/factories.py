"""Rows the tests build, one function per thing: people and tenants, keys and clients, plans, base models, nodes,
adapters and their versions, datasets, training jobs and inference requests. Plain functions (keyword arguments
for what a test varies); the fixtures in tests/conftest.py call them for the named people."""

import hashlib
import itertools
import json
from datetime import UTC, datetime, timedelta

from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.utils import timezone
from rest_framework.test import APIClient

from adapters.models import Adapter, AdapterVersion, BaseModel
from fleet.models import Node
from serving.models import InferenceRequest
from tenants.models import Membership, Tenant, User
from tenants.roles import SCOPES
from training.models import Dataset, TrainingJob

PASSWORD = "correct horse battery staple"
TINY_ARCHITECTURE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2}  # tests/runtime_fixtures.py's tiny Llama
TRAINING_HP = {"learning_rate": 1e-4, "epochs": 3, "batch_size": 4, "micro_batch_size": 2}
_request_ids = itertools.count(1)


# ---- tenants and people ----------------------------------------------------------------------------------------

def make_tenant(slug, name=None):
    return Tenant.objects.create(name=name or slug.title(), slug=slug)


def make_member(email, tenant, role):
    user = User.objects.filter(email=email).first() or User.objects.create_user(email=email, password=PASSWORD)
    Membership.objects.create(user=user, tenant=tenant, role=role)
    return user


def session_client(user):
    client = APIClient()
    client.force_login(user)
    return client


def create_key(user, tenant, scopes=tuple(SCOPES), **kwargs):
    """An API key of ``tenant`` made by ``user``: (the key row, its secret)."""
    from tenants.models import APIKey

    key, secret = APIKey.objects.create_key(name=f"{user.email} key", tenant=tenant, created_by=user,
                                            scopes=list(scopes), **kwargs)
    return key, secret


def key_client(secret):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def put_on_plan(tenant, name="small", **quotas):
    """Puts ``tenant`` on a plan ``name`` (v1, in effect since 2020) with these quotas; the rest default."""
    from billing.models import BillingAccount, PricePlan

    plan = PricePlan.objects.create(name=name, version=1, effective_from=datetime(2020, 1, 1, tzinfo=UTC), **quotas)
    BillingAccount.objects.update_or_create(tenant=tenant, defaults={"plan_name": name})
    return plan


# ---- base models and nodes -------------------------------------------------------------------------------------

def make_base(name="tiny-llama", **fields):
    """A catalog row; tiny-llama gets the tiny Llama's architecture unless told otherwise."""
    if name == "tiny-llama":
        fields.setdefault("architecture", TINY_ARCHITECTURE)
    return BaseModel.objects.create(name=name, **fields)


def make_node(name="n1", *, base="tiny-llama", slots=10, on_device=0, pinned=0, resident=(), host=(), pins=(),
              age_s=0, status=Node.UP, max_batch=None, buckets=None, state=None, **fields):
    """A node as its last heartbeat (``age_s`` seconds ago) described it: ``slots`` adapter slots of which
    ``on_device`` are taken and ``pinned`` pinned, the adapter versions resident on its device and in host RAM, and
    ``pins`` pinned on its device (and so resident there); or ``state`` as given. ``fields``: other columns (device,
    started_at, ...)."""
    if state is not None:
        return Node.objects.create(name=name, base_model=base, status=status, state=state,
                                   last_heartbeat_at=timezone.now() - timedelta(seconds=age_s), **fields)
    adapters = {"slots": slots, "device": on_device, "pinned": pinned}
    if buckets:
        adapters["buckets"] = buckets
    state = {"adapters": adapters, "resident": {"device": [*resident, *pins], "host": list(host), "pinned": list(pins)}}
    if max_batch is not None:
        state["max_batch"] = max_batch
    return Node.objects.create(name=name, base_model=base, status=status, state=state,
                               last_heartbeat_at=timezone.now() - timedelta(seconds=age_s), **fields)


# ---- adapters and versions -------------------------------------------------------------------------------------

def make_adapter(tenant, base, name="support-bot", tier=Adapter.COLD, *, versions=0):
    """An adapter with ``versions`` ready versions (rows only, see make_version), the last one current."""
    adapter = Adapter.objects.create(tenant=tenant, base_model=base, name=name, tier=tier)
    for number in range(1, versions + 1):
        make_version(adapter, number)
    return adapter


def make_version(adapter, number=1, *, rank=8, current=True, **fields):
    """A ready version as a row only (no files in storage): enough for placement, pricing and the APIs that read
    the catalog."""
    fields = {"sha256": "0" * 64, "size_bytes": 1, "alpha": 16, "target_modules": ["q_proj"], "dtype": "F32",
              "storage_key": f"adapters/test/{adapter.tenant_id}/{adapter.name}/{number}", **fields}
    version = AdapterVersion.objects.create(adapter=adapter, number=number, status=AdapterVersion.READY, rank=rank,
                                            **fields)
    if current:
        adapter.current_version = version
        adapter.save(update_fields=["current_version"])
    return version


def store_version(adapter, root, number, *, r=4, modules=("q_proj", "v_proj"), current=True):
    """A ready version with real adapter files under the storage ``root`` (the adapter_storage fixture)."""
    from tests.adapter_files import write_adapter

    key = f"adapters/t{adapter.tenant_id}/v{adapter.pk}-{number}"
    write_adapter(root / key, r=r, modules=modules)
    weights = (root / key / "adapter_model.safetensors").read_bytes()
    return make_version(adapter, number, rank=r, current=current, sha256=hashlib.sha256(weights).hexdigest(),
                        size_bytes=len(weights), alpha=8.0, target_modules=sorted(modules), storage_key=key)


# ---- datasets and training jobs --------------------------------------------------------------------------------

def jsonl(records=10):
    return "".join(json.dumps({"prompt": f"question {i}", "completion": f"answer {i}"}) + "\n"
                   for i in range(records)).encode()


def make_dataset(tenant, records=10, data=None, tokens=None):
    """A stored dataset row and its file; ``tokens`` (default 12 a record) stands for the upload's count, which an
    estimate takes where the web has no tokenizer for the base model (tiny-llama has none in the model store)."""
    data = data if data is not None else jsonl(records)
    dataset_id = f"ds_{hashlib.sha256(data + tenant.slug.encode()).hexdigest()[:24]}"
    key = storages["adapters"].save(f"datasets/{tenant.pk}/{dataset_id}.jsonl", ContentFile(data))
    return Dataset.objects.create(id=dataset_id, tenant=tenant, name="train.jsonl", format=Dataset.COMPLETION,
                                  records=records, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                  storage_key=key, tokens=12 * records if tokens is None else tokens)


def make_job(tenant, adapter, dataset=None, *, status=TrainingJob.VALIDATING, base_version=None, job_id=None,
             **fields):
    """A training job row with TRAINING_HP; without ``dataset``, a dataset row of its own (no file)."""
    from gpu_runtime.training_spec import Hyperparameters

    job_id = job_id or f"ftjob_{TrainingJob.objects.count():024d}"
    if dataset is None:
        dataset = Dataset.objects.create(id=f"ds_{job_id}", tenant=tenant, name="chat.jsonl", format=Dataset.CHAT,
                                         records=10, size_bytes=100, sha256="0" * 64, storage_key=f"datasets/{job_id}")
    hp = Hyperparameters.from_json(TRAINING_HP)
    if base_version is not None:
        hp = Hyperparameters.from_json({**TRAINING_HP, "rank": base_version.rank, "alpha": base_version.alpha,
                                        "target_modules": base_version.target_modules})
    return TrainingJob.objects.create(id=job_id, tenant=tenant, base_model=adapter.base_model, adapter=adapter,
                                      dataset=dataset, status=status, base_version=base_version,
                                      hyperparameters=hp.to_json(), **fields)


# ---- inference requests ----------------------------------------------------------------------------------------

def make_request(tenant, base, *, request_id=None, tier="cold", max_tokens=8, **fields):
    """An inference request row (``fields``: status, node, api, adapter_version, payload, ...)."""
    return InferenceRequest.objects.create(id=request_id or f"req_test{next(_request_ids):028d}", tenant=tenant,
                                           base_model=base, tier=tier, max_tokens=max_tokens, **fields)


def make_principal(tenant, user, role=None):
    """Who a service acts for: ``user`` in ``tenant`` with ``role`` (default owner)."""
    from tenants.principal import Principal
    from tenants.roles import OWNER

    return Principal(tenant=tenant, user=user, role=role or OWNER)


def make_heartbeat(**overrides):
    """A node's heartbeat message as JSON (gpu_runtime.contract.Heartbeat), gpu-1 on CUDA with SmolLM2 loaded unless
    ``overrides`` say otherwise."""
    from gpu_runtime.contract import Heartbeat

    fields = dict(node="gpu-1", started_at="2026-11-24T07:00:00+00:00", sent_at="2026-11-24T07:00:05+00:00",
                  base_model="smollm2-135m-instruct", device="cuda", dtype="bfloat16", model_loaded=True)
    return Heartbeat(**{**fields, **overrides}).to_json()


def record_node_final(request_id, final):
    """Records ``final`` (the JSON a node sends) as the node's control task brings it, through the one intake for
    finals; the row when this call ended the request, None when it changed nothing."""
    from gpu_runtime.contract import Final
    from serving.finals import CONTROL_TASK, record_final

    return record_final(request_id, Final.from_json(final), source=CONTROL_TASK)
