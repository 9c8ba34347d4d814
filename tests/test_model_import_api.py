"""Staff imports of base models (/api/v1/base-models/imports, the Base models page, ``manage.py import_model``):
staff only and session only; a source is a path inside VAJRA_MODEL_IMPORT_DIR or an s3:// URL, and hostile ones
(``..``, absolute paths, symlinks out, huge configs) are 4xx in the one error shape with nothing written; a good
one runs in its own process, reports progress and enters the catalog. The catalog lists each model's nodes."""

import time

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from adapters.models import BaseModel, BaseModelImport
from fleet.models import Node
from tests.factories import create_key, key_client, session_client
from tests.helpers import assert_error
from tests.model_sources import tiny_checkpoint
from tests.runtime_fixtures import CFG

URL = "/api/v1/base-models/imports"


@pytest.fixture
def import_dir(tmp_path, settings):
    root = tmp_path / "imports"
    root.mkdir()
    settings.VAJRA_MODEL_IMPORT_DIR = str(root)
    settings.VAJRA_MODEL_STORE = str(tmp_path / "store")
    settings.VAR_DIR = tmp_path / "var"
    return root


@pytest.fixture
def staff(alice):
    alice.is_staff = True
    alice.save(update_fields=["is_staff"])
    return session_client(alice)


def test_only_staff_with_a_session_may_import(import_dir, alice, acme, charlie_client):
    body = {"name": "tiny-qwen", "source": "qwen"}
    assert_error(charlie_client.post(URL, body, format="json"), 403, "staff_only")
    assert_error(charlie_client.get(URL), 403, "staff_only")
    alice.is_staff = True
    alice.save(update_fields=["is_staff"])
    _, secret = create_key(alice, acme)  # a staff member's API key is still no session
    assert_error(key_client(secret).post(URL, body, format="json"), 403, "session_required")
    from rest_framework.test import APIClient

    assert APIClient().post(URL, body, format="json").status_code in (401, 403)
    assert not BaseModelImport.objects.exists()


@pytest.mark.parametrize("source, code", [
    ("../outside", "unsafe_path"), ("/etc", "unsafe_path"), ("a/../../etc", "unsafe_path"),
    ("missing", "source_not_found"), ("escape", "unsafe_path"), ("huge", "config_too_large"),
    ("gpt", "unsupported_architecture"), ("half", "missing_shards"), ("notok", "missing_tokenizer"),
])
def test_hostile_and_unservable_sources_are_400(staff, import_dir, tmp_path, source, code):
    outside = tmp_path / "outside"
    tiny_checkpoint(outside)
    (import_dir / "escape").symlink_to(outside)  # a symlink out of the import folder
    (import_dir / "huge").mkdir()
    (import_dir / "huge" / "config.json").write_text('{"model_type": "qwen2", "pad": "' + "x" * (2 << 20) + '"}')
    tiny_checkpoint(import_dir / "gpt")
    (import_dir / "gpt" / "config.json").write_text('{"model_type": "gpt2"}')
    tiny_checkpoint(import_dir / "half", shard=True)
    sorted((import_dir / "half").glob("model-*.safetensors"))[0].unlink()
    tiny_checkpoint(import_dir / "notok")
    (import_dir / "notok" / "tokenizer.json").unlink()
    response = staff.post(URL, {"name": "tiny-qwen", "source": source}, format="json")
    assert_error(response, 400, code, param="source")
    assert not BaseModelImport.objects.exists() and not (tmp_path / "store").exists()


def test_bad_names_and_taken_names(staff, import_dir, db):
    tiny_checkpoint(import_dir / "qwen")
    for name in ("../x", "Upper", "a b", "x" * 65):
        assert staff.post(URL, {"name": name, "source": "qwen"}, format="json").status_code == 400
    BaseModel.objects.create(name="taken", architecture={})
    assert_error(staff.post(URL, {"name": "taken", "source": "qwen"}, format="json"), 409, "model_exists")
    assert_error(staff.post(URL, {"name": "ok", "source": "qwen", "extra": 1}, format="json"), 400)
    assert not BaseModelImport.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_import_runs_in_its_own_process_and_enters_the_catalog(staff, import_dir, tmp_path):
    tiny_checkpoint(import_dir / "qwen", max_position_embeddings=512)
    response = staff.post(URL, {"name": "tiny-qwen", "source": "qwen"}, format="json")
    assert response.status_code == 202, response.content
    started = response.json()
    assert started["status"] == "running"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        state = staff.get(f"{URL}/{started['id']}").json()
        if state["status"] != "running":
            break
        time.sleep(0.5)
    assert state["status"] == "succeeded" and state["percent"] == 100, state
    base = BaseModel.objects.get(name="tiny-qwen")
    assert base.context_length == 512 and base.architecture["model_type"] == "qwen2"
    assert base.architecture["hidden_size"] == CFG["hidden_size"] and set(base.variants) == {"float32", "bfloat16"}
    assert base.source["kind"] == "directory" and len(base.source["sha256"]) == 64
    assert (tmp_path / "store" / "tiny-qwen" / "manifest.json").is_file()
    page = staff.get("/base-models/")
    assert page.status_code == 200 and b"tiny-qwen" in page.content and b"Succeeded" in page.content
    assert staff.get(URL).json()["data"][0]["status"] == "succeeded"
    assert_error(staff.get(f"{URL}/99999"), 404)
    # the same name again is taken
    assert_error(staff.post(URL, {"name": "tiny-qwen", "source": "qwen"}, format="json"), 409, "model_exists")


def test_the_page_is_staff_only_and_shows_refusals(staff, charlie_client, import_dir):
    assert charlie_client.get("/base-models/").status_code == 403
    page = staff.post("/base-models/", {"name": "x", "source": "../etc"})
    assert page.status_code == 400 and b"import folder" in page.content
    assert not BaseModelImport.objects.exists()


def test_import_model_command(import_dir, tmp_path, db):
    tiny_checkpoint(tmp_path / "mistral-src", "mistral")
    call_command("import_model", str(tmp_path / "mistral-src"), name="tiny-mistral")
    base = BaseModel.objects.get(name="tiny-mistral")
    assert base.architecture["model_type"] == "mistral" and base.source["kind"] == "directory"
    (tmp_path / "mistral-src" / "tokenizer.json").unlink()
    with pytest.raises(CommandError, match="missing_tokenizer"):
        call_command("import_model", str(tmp_path / "mistral-src"), name="tiny-mistral-2")
    assert not BaseModel.objects.filter(name="tiny-mistral-2").exists()


def test_catalog_lists_the_nodes_serving_each_model(alice_client, db):
    for name in ("smollm2-135m-instruct", "tiny-qwen", "unserved"):
        BaseModel.objects.create(name=name, architecture={"model_type": "x"})
    now = timezone.now()
    Node.objects.create(name="node-a", base_model="smollm2-135m-instruct", status=Node.UP, last_heartbeat_at=now)
    Node.objects.create(name="node-b", base_model="tiny-qwen", status=Node.UP, last_heartbeat_at=now)
    Node.objects.create(name="node-c", base_model="tiny-qwen", status=Node.DOWN, last_heartbeat_at=now)
    data = {m["id"]: m["nodes"] for m in alice_client.get("/api/v1/base-models").json()["data"]}
    assert [n["name"] for n in data["smollm2-135m-instruct"]] == ["node-a"]
    assert [(n["name"], n["status"]) for n in data["tiny-qwen"]] == [("node-b", "up"), ("node-c", "down")]
    assert data["unserved"] == []
