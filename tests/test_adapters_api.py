"""/api/v1/adapters: upload (validated with the runtime's checks, archives unpacked safely), immutable versions,
tiers with hot capacity, delete, quotas, scopes and roles, and tenant isolation. Refusals write nothing: no
row and no file in storage."""

import base64
import hashlib
import json
import zipfile

import pytest
from django.db import connection

from adapters import access, services, uploads
from adapters.models import Adapter, AdapterVersion, BaseModel
from adapters.storage_quota import storage_used
from gpu_runtime.adapter_validation import CONFIG_FILE, WEIGHTS_FILE
from serving.models import InferenceRequest
from tenants.roles import BILLING_VIEWER
from tests.adapter_files import in_folder, stored_files, tar_bytes, zip_bytes, zipped
from tests.factories import create_key, key_client, make_member, make_node, make_request, put_on_plan, session_client
from tests.helpers import ADAPTERS_URL, assert_error, upload_adapter

pytestmark = pytest.mark.usefixtures("adapter_storage")

URL = ADAPTERS_URL
upload = upload_adapter


# Upload and versions

@pytest.mark.parametrize("shape", ["zip", "tar.gz", "two files"])
def test_upload_creates_the_adapter_and_version_1(alice_api, tiny_llama, peft_v1, adapter_storage, shape):
    files = {"zip": zipped(peft_v1), "tar.gz": [("a.tar.gz", tar_bytes(in_folder(peft_v1)))],
             "two files": list(peft_v1.items())}[shape]
    response = upload(alice_api, files, description="Answers support tickets")
    assert response.status_code == 201, response.json()
    body = response.json()
    version = body["current_version"]
    sha = hashlib.sha256(peft_v1[WEIGHTS_FILE]).hexdigest()
    assert (body["name"], body["base_model"], body["model"]) == ("support-bot", "tiny-llama", "support-bot@v1")
    assert body["description"] == "Answers support tickets"
    assert body["tier"] == {"tier": "cold", "units_per_query": 1, "usd_per_query": 0.0001,
                            "micro_usd_per_query": 100, "plan": "standard", "adapter_ready_ms_guarantee": 2000}
    assert (version["number"], version["status"], version["sha256"]) == (1, "ready", sha)
    assert (version["rank"], version["alpha"], version["target_modules"]) == (4, 8.0, ["q_proj", "v_proj"])
    assert version["size_bytes"] == len(peft_v1[WEIGHTS_FILE]) and version["dtype"] == "F32"

    row = AdapterVersion.objects.get()
    assert row.adapter.tenant.slug == "acme" and row.adapter.current_version == row
    assert stored_files(adapter_storage) == [f"{row.storage_key}/{CONFIG_FILE}", f"{row.storage_key}/{WEIGHTS_FILE}"]
    for name, data in peft_v1.items():
        assert (adapter_storage / row.storage_key / name).read_bytes() == data


def test_upload_with_a_session(alice_client, tiny_llama, peft_v1):
    response = upload(alice_client, zipped(peft_v1))
    assert response.status_code == 201, response.json()
    assert AdapterVersion.objects.get().created_by.email == "alice@acme.test"


def test_second_upload_is_version_2_and_version_1_is_kept(alice_api, uploaded_adapter, peft_v1, peft_v2,
        adapter_storage):
    v1 = AdapterVersion.objects.get()
    response = upload(alice_api, list(peft_v2.items()))
    assert response.status_code == 201, response.json()
    assert response.json()["model"] == "support-bot@v2"
    assert response.json()["current_version"]["rank"] == 8

    v2 = AdapterVersion.objects.get(number=2)
    assert Adapter.objects.get().current_version == v2
    assert v2.storage_key != v1.storage_key
    assert AdapterVersion.objects.get(number=1).sha256 == v1.sha256 == hashlib.sha256(peft_v1[WEIGHTS_FILE]).hexdigest()
    assert (adapter_storage / v1.storage_key / WEIGHTS_FILE).read_bytes() == peft_v1[WEIGHTS_FILE]  # never overwritten
    assert (adapter_storage / v2.storage_key / WEIGHTS_FILE).read_bytes() == peft_v2[WEIGHTS_FILE]
    assert len(stored_files(adapter_storage)) == 4

    versions = alice_api.get(f"{URL}/support-bot/versions").json()["data"]
    assert [v["number"] for v in versions] == [2, 1]


@pytest.mark.parametrize("code", ["bad_rank", "unknown_target_modules", "base_mismatch", "not_lora", "non_finite",
                                  "missing_weights"])
def test_validator_refusal_is_a_400_with_its_code(alice_api, tiny_llama, bad_adapters, adapter_storage,
                                                  unchanged_db, code):
    with unchanged_db():
        error = assert_error(upload(alice_api, bad_adapters[code]), 400, code=code, param="file")
    assert f"[{code}]" in error["message"]
    assert stored_files(adapter_storage) == []


def test_refused_second_upload_leaves_version_1_current(alice_api, uploaded_adapter, bad_adapters, adapter_storage,
                                                        unchanged_db):
    before = stored_files(adapter_storage)
    with unchanged_db():
        assert_error(upload(alice_api, bad_adapters["bad_rank"]), 400, code="bad_rank")
    assert stored_files(adapter_storage) == before
    assert alice_api.get(f"{URL}/support-bot").json()["model"] == "support-bot@v1"


def _unsafe_uploads(adapter):
    link = zipfile.ZipInfo(f"my-adapter/{WEIGHTS_FILE}")
    link.external_attr = 0o120777 << 16
    folder = in_folder(adapter)
    return {
        "unsafe_archive": [("a.zip", zip_bytes([("../adapter_config.json", adapter[CONFIG_FILE]), *folder[1:]]))],
        "unsafe_archive:link": [("a.zip", zip_bytes([folder[0], (link, b"/etc/passwd")]))],
        "nested_archive": [("a.zip", zip_bytes([*folder, ("my-adapter/more.tar.gz", tar_bytes(folder))]))],
        "too_many_files": [("a.tgz", tar_bytes([(f"x/{i}.txt", b"1") for i in range(uploads.MAX_FILES + 1)]))],
        "pickle_refused": [("a.zip", zip_bytes([*folder, ("my-adapter/adapter_model.bin", b"\x80\x04")]))],
        "unexpected_files": [("a.zip", zip_bytes([*folder, ("my-adapter/notes.txt", b"hi")]))],
        "duplicate_file": [("a.zip", zip_bytes([*folder, ("copy/adapter_config.json", adapter[CONFIG_FILE])]))],
        "invalid_archive": [("a.zip", b"PK\x03\x04 truncated")],
    }


@pytest.mark.parametrize("case", ["unsafe_archive", "unsafe_archive:link", "nested_archive", "too_many_files",
                                  "pickle_refused", "unexpected_files", "duplicate_file", "invalid_archive"])
def test_archive_safety_refusals(alice_api, tiny_llama, peft_v1, adapter_storage, unchanged_db, case):
    with unchanged_db():
        assert_error(upload(alice_api, _unsafe_uploads(peft_v1)[case]), 400, code=case.split(":")[0], param="file")
    assert stored_files(adapter_storage) == []


def test_decompression_bomb_is_refused(alice_api, tiny_llama, adapter_storage, unchanged_db, monkeypatch):
    monkeypatch.setattr(uploads, "MAX_EXPANDED_BYTES", 1 << 20)
    bomb = zip_bytes([(f"my-adapter/{WEIGHTS_FILE}", bytes(4 << 20))])
    with unchanged_db():
        assert_error(upload(alice_api, [("a.zip", bomb)]), 400, code="archive_too_large")
    assert stored_files(adapter_storage) == []


def test_same_name_for_another_base_is_refused(alice_api, uploaded_adapter, peft_v1, adapter_storage, unchanged_db):
    # Same architecture and an alias, so the validator accepts it: the refusal is the adapter's base.
    BaseModel.objects.create(name="tiny-llama-chat", aliases=["tiny-llama"],
                             architecture=uploaded_adapter.base_model.architecture)
    before = stored_files(adapter_storage)
    with unchanged_db():
        assert_error(upload(alice_api, zipped(peft_v1), base_model="tiny-llama-chat"), 400, code="base_mismatch",
                     param="base_model")
    assert stored_files(adapter_storage) == before  # the files saved before the check were removed


def test_unknown_base_model_is_404(alice_api, tiny_llama, peft_v1, adapter_storage, unchanged_db):
    with unchanged_db():
        assert_error(upload(alice_api, zipped(peft_v1), base_model="gpt-9"), 404)
    assert stored_files(adapter_storage) == []


@pytest.mark.parametrize("fields,code,param", [
    ({"name": "Support Bot"}, "invalid", "name"),
    ({"extra": "x"}, "unknown_field", "extra"),
])
def test_bad_fields(alice_api, tiny_llama, peft_v1, unchanged_db, fields, code, param):
    with unchanged_db():
        assert_error(upload(alice_api, zipped(peft_v1), **fields), 400, code=code, param=param)


def test_no_file(alice_api, tiny_llama, unchanged_db):
    with unchanged_db():
        assert_error(upload(alice_api, []), 400, code="no_file", param="file")


# Tiers

def node_messages(queue):
    """The tasks waiting in a node's queue: kombu's Redis transport keeps a list named after the queue."""
    from vajra.celery import app

    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        raw = client.lrange(queue, 0, -1)
        client.delete(queue)
    messages = []
    for item in raw:
        message = json.loads(item)
        args, _, _ = json.loads(base64.b64decode(message["body"]))
        messages.append((message["headers"]["task"], args))
    return messages


def patch_tier(client, tier, name="support-bot"):
    return client.patch(f"{URL}/{name}", {"tier": tier}, format="json")


def test_cold_to_warm_moves_it_on_the_nodes(alice_api, uploaded_adapter, django_capture_on_commit_callbacks):
    node = make_node("test-adapters-warm")
    node_messages(node.queue)
    with django_capture_on_commit_callbacks(execute=True):
        response = patch_tier(alice_api, "warm")
    assert response.status_code == 200, response.json()
    assert response.json()["tier"]["tier"] == "warm" and response.json()["tier"]["units_per_query"] == 5
    assert Adapter.objects.get().tier == "warm"
    [(task, (ref, tier))] = node_messages(node.queue)
    assert (task, tier, ref["adapter_id"], ref["version"]) == ("runtime.set_tier", "warm", f"a{uploaded_adapter.pk}", 1)
    assert ref["uri"].startswith("file://")


def test_hot_without_capacity_is_409(alice_api, uploaded_adapter, unchanged_db):
    make_node("test-adapters-full", slots=10, pinned=5)  # hot may take half the slots: none left
    with unchanged_db():
        error = assert_error(patch_tier(alice_api, "hot"), 409, code="no_hot_capacity", param="tier")
    assert "hot capacity" in error["message"]


def test_hot_with_capacity(alice_api, uploaded_adapter, django_capture_on_commit_callbacks):
    make_node("test-adapters-full", slots=10, pinned=5)
    roomy = make_node("test-adapters-roomy", slots=10, pinned=1)
    node_messages(roomy.queue)
    with django_capture_on_commit_callbacks(execute=True):
        response = patch_tier(alice_api, "hot")
    assert response.status_code == 200, response.json()
    assert response.json()["tier"]["adapter_ready_ms_guarantee"] == 10
    assert Adapter.objects.get().tier == "hot"
    assert [(task, args[1]) for task, args in node_messages(roomy.queue)] == [("runtime.set_tier", "hot")]


def test_invalid_tier(alice_api, uploaded_adapter, unchanged_db):
    with unchanged_db():
        assert_error(patch_tier(alice_api, "platinum"), 400, code="invalid_choice", param="tier")


def test_tier_change_and_delete_lock_inside_a_transaction(alice_api, uploaded_adapter, monkeypatch):
    # SQLite ignores FOR UPDATE; PostgreSQL refuses it outside a transaction, so check we are inside one.
    outer = len(connection.atomic_blocks)
    locked = []
    real = access.access_adapter

    def checked(**kwargs):
        if kwargs.get("lock"):
            locked.append(len(connection.atomic_blocks) > outer)
        return real(**kwargs)

    monkeypatch.setattr(access, "access_adapter", checked)
    assert patch_tier(alice_api, "warm").status_code == 200
    assert alice_api.delete(f"{URL}/support-bot").status_code == 204
    assert locked == [True, True]


# Delete

def test_delete_hides_the_adapter_keeps_its_versions_and_removes_their_files(alice_api, acme, uploaded_adapter, peft_v1,
                                                                              adapter_storage,
                                                                              django_capture_on_commit_callbacks):
    # The version rows stay for the request history and invoices; the files go, since nothing can load a deleted
    # adapter's version any more, and their bytes leave the storage quota with them.
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.delete(f"{URL}/support-bot")
    assert response.status_code == 204
    assert alice_api.get(URL).json()["data"] == []
    assert_error(alice_api.get(f"{URL}/support-bot"), 404)
    assert AdapterVersion.objects.filter(adapter=uploaded_adapter).count() == 1
    assert stored_files(adapter_storage) == [] and storage_used(acme) == 0
    # The name is free again: a new adapter, starting at version 1.
    again = upload(alice_api, zipped(peft_v1))
    assert again.status_code == 201 and again.json()["model"] == "support-bot@v1"
    assert Adapter.objects.count() == 2


def test_a_deleted_adapters_files_stay_and_count_while_a_request_uses_them(alice_api, acme, uploaded_adapter, peft_v1,
                                                                           peft_v2, adapter_storage):
    version = uploaded_adapter.current_version
    running = make_request(acme, uploaded_adapter.base_model, request_id="req_running", adapter_version=version,
                           tier=uploaded_adapter.tier, max_tokens=4, status=InferenceRequest.RUNNING)
    assert alice_api.delete(f"{URL}/support-bot").status_code == 204
    assert len(stored_files(adapter_storage)) == 2 and storage_used(acme) == version.size_bytes
    InferenceRequest.objects.filter(pk=running.pk).update(status=InferenceRequest.SUCCEEDED)
    # the next storage check gives the bytes back once nothing uses the files
    assert upload(alice_api, zipped(peft_v2), name="another").status_code == 201
    assert not (adapter_storage / version.storage_key / WEIGHTS_FILE).exists()
    assert len(stored_files(adapter_storage)) == 2
    assert AdapterVersion.objects.get(pk=version.pk).storage_key == ""


def test_upload_and_delete_in_a_loop_stays_within_the_storage_quota(alice_api, acme, tiny_llama, peft_v1,
                                                                    adapter_storage,
                                                                    django_capture_on_commit_callbacks):
    put_on_plan(acme, storage_max_bytes=len(peft_v1[WEIGHTS_FILE]))
    for _ in range(5):
        assert upload(alice_api, zipped(peft_v1)).status_code == 201
        with django_capture_on_commit_callbacks(execute=True):
            assert alice_api.delete(f"{URL}/support-bot").status_code == 204
    assert stored_files(adapter_storage) == [] and storage_used(acme) == 0


# Quotas, scopes, roles, tenants

def test_adapter_quota_is_the_plans(alice_api, acme, uploaded_adapter, peft_v1, peft_v2, adapter_storage, unchanged_db,
                                    charlie, contoso):
    put_on_plan(acme, max_adapters=1)
    before = stored_files(adapter_storage)
    with unchanged_db():
        error = assert_error(upload(alice_api, zipped(peft_v1), name="another"), 409, code="adapter_quota",
                             param="name")
    assert "The plan 'small' allows 1 adapters" in error["message"]
    assert stored_files(adapter_storage) == before
    assert upload(alice_api, list(peft_v2.items())).status_code == 201  # a new version is not a new adapter
    # charlie's tenant, on the standard plan, is not held to acme's
    charlie_api = key_client(create_key(charlie, contoso)[1])
    assert upload(charlie_api, zipped(peft_v1), name="one").status_code == 201
    assert upload(charlie_api, zipped(peft_v1), name="two").status_code == 201


def test_key_without_adapters_scope_is_refused(alice, acme, tiny_llama, peft_v1, unchanged_db):
    client = key_client(create_key(alice, acme, scopes=["infer"])[1])
    with unchanged_db():
        assert_error(upload(client, zipped(peft_v1)), 403, code="missing_scope")
        assert_error(client.get(URL), 403, code="missing_scope")


def test_other_tenant_gets_404_everywhere(charlie, contoso, uploaded_adapter, unchanged_db):
    client = key_client(create_key(charlie, contoso)[1])
    with unchanged_db():
        for response in (client.get(f"{URL}/support-bot"), patch_tier(client, "warm"),
                         client.delete(f"{URL}/support-bot"), client.get(f"{URL}/support-bot/versions")):
            error = assert_error(response, 404)
            assert "acme" not in error["message"]
        assert client.get(URL).json()["data"] == []


def test_developer_can_upload(bob, acme, tiny_llama, peft_v1):
    for client, name in ((session_client(bob), "bobs"), (key_client(create_key(bob, acme)[1]), "bobs-key")):
        response = upload(client, zipped(peft_v1), name=name)
        assert response.status_code == 201, response.json()


def test_billing_viewer_cannot_upload_or_list(acme, alice, tiny_llama, peft_v1, unchanged_db):
    client = session_client(make_member("vera@acme.test", acme, BILLING_VIEWER))
    with unchanged_db():
        assert_error(upload(client, zipped(peft_v1)), 403, code="role_forbidden")
        assert_error(client.get(URL), 403, code="role_forbidden")


# Uploads stream from temporary files, and malformed weights are a 400 with nothing stored.

def test_uploaded_files_reach_the_service_as_temporary_files_on_disk(alice_api, tiny_llama, peft_v1, monkeypatch):
    from django.core.files.uploadedfile import TemporaryUploadedFile


    seen = []
    unpack = services.unpack_upload

    def spy(files, dest, **kwargs):
        seen.extend(f for _, f in files)
        return unpack(files, dest, **kwargs)

    monkeypatch.setattr(services, "unpack_upload", spy)
    assert upload(alice_api, list(peft_v1.items())).status_code == 201
    assert len(seen) == 2 and all(isinstance(f, TemporaryUploadedFile) for f in seen)


def _with_header(adapter, change):
    """The adapter's two files with its safetensors header changed by ``change(header)``; data kept."""
    raw = adapter[WEIGHTS_FILE]
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    change(header)
    encoded = json.dumps(header).encode()
    return [(CONFIG_FILE, adapter[CONFIG_FILE]),
            (WEIGHTS_FILE, len(encoded).to_bytes(8, "little") + encoded + raw[8 + length:])]


def _first_tensor(header):
    return header[min(k for k in header if k != "__metadata__")]


@pytest.mark.parametrize("field,value", [
    ("dtype", ["F32"]), ("data_offsets", ["0", "64"]), ("shape", ["four", 64]), ("shape", [4.5, 64])])
def test_malformed_header_fields_are_a_400(alice_api, tiny_llama, peft_v1, adapter_storage, unchanged_db, field,
                                           value):
    files = _with_header(peft_v1, lambda h: _first_tensor(h).update({field: value}))
    with unchanged_db():
        assert_error(upload(alice_api, files), 400, code="invalid_safetensors", param="file")
    assert stored_files(adapter_storage) == []


def test_empty_layers_to_transform_is_a_400(alice_api, tiny_llama, peft_v1, adapter_storage, unchanged_db):
    config = json.loads(peft_v1[CONFIG_FILE])
    config["layers_to_transform"] = []
    files = [(CONFIG_FILE, json.dumps(config).encode()), (WEIGHTS_FILE, peft_v1[WEIGHTS_FILE])]
    with unchanged_db():
        assert_error(upload(alice_api, files), 400, code="bad_layers", param="file")
    assert stored_files(adapter_storage) == []


def test_valid_tensors_followed_by_zeros_are_a_400(alice_api, tiny_llama, peft_v1, adapter_storage, unchanged_db):
    files = [(CONFIG_FILE, peft_v1[CONFIG_FILE]), (WEIGHTS_FILE, peft_v1[WEIGHTS_FILE] + bytes(256 << 10))]
    with unchanged_db():
        error = assert_error(upload(alice_api, files), 400, code="invalid_safetensors", param="file")
    assert "after the last tensor" in error["message"]
    assert stored_files(adapter_storage) == []


def test_upload_past_the_base_models_largest_adapter_is_refused(alice_api, tiny_llama, peft_v1, adapter_storage,
                                                                 unchanged_db):
    from adapters.services import base_facts
    from adapters.uploads import upload_cap

    cap = upload_cap(base_facts(tiny_llama))
    files = [(CONFIG_FILE, peft_v1[CONFIG_FILE]), (WEIGHTS_FILE, bytes(cap))]
    with unchanged_db():
        assert_error(upload(alice_api, files), 400, code="archive_too_large", param="file")
    assert stored_files(adapter_storage) == []


def test_storage_quota_is_the_plans(alice_api, acme, uploaded_adapter, peft_v1, peft_v2, adapter_storage, unchanged_db,
                                    charlie, contoso):
    used = uploaded_adapter.current_version.size_bytes
    put_on_plan(acme, storage_max_bytes=used + len(peft_v1[WEIGHTS_FILE]) - 1)  # one byte short of a second copy
    before = stored_files(adapter_storage)
    with unchanged_db():
        error = assert_error(upload(alice_api, zipped(peft_v1), name="another"), 413, code="storage_quota_exceeded",
                             param="file")
    assert f"uses {used} of the {used + len(peft_v1[WEIGHTS_FILE]) - 1} bytes" in error["message"]
    assert stored_files(adapter_storage) == before
    # deleting the adapter gives its bytes back
    assert alice_api.delete(f"{URL}/support-bot").status_code == 204
    assert upload(alice_api, zipped(peft_v1), name="another").status_code == 201
    # charlie's tenant, on the standard plan, is not held to acme's
    assert upload(key_client(create_key(charlie, contoso)[1]), zipped(peft_v1)).status_code == 201


def test_storage_quota_is_checked_again_under_the_tenants_lock(alice_api, acme, tiny_llama, peft_v1,
                                                               adapter_storage, unchanged_db, monkeypatch):
    """Room seen before storing may be gone by the time the version is recorded: the files stored are removed."""

    put_on_plan(acme, storage_max_bytes=len(peft_v1[WEIGHTS_FILE]))
    checks = []
    require = services.require_storage

    def shrinking(*, tenant, adding, lock=False):
        checks.append(lock)
        if lock:  # another upload took the room meanwhile
            from billing.models import PricePlan

            PricePlan.objects.filter(name="small").update(storage_max_bytes=1)
            from billing.plans import _forget_display_plans

            _forget_display_plans()
        return require(tenant=tenant, adding=adding, lock=lock)

    monkeypatch.setattr(services, "require_storage", shrinking)
    assert_error(upload(alice_api, zipped(peft_v1)), 413, code="storage_quota_exceeded")
    assert checks == [False, True]
    assert stored_files(adapter_storage) == []
    assert not Adapter.objects.exists()
