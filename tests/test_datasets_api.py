"""/api/v1/datasets and the Training page's dataset form: JSONL uploads checked line by line (every bad line named
with its number and reason), caps, tokens, roles and scopes, tenant isolation. Refusals write nothing: no row and
no file in storage."""

import hashlib
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from adapters.models import Adapter, BaseModel
from adapters.storage_quota import storage_used
from tenants.models import AuditEntry
from tenants.principal import Principal
from tenants.roles import BILLING_VIEWER, OWNER
from tests.adapter_files import stored_files
from tests.factories import create_key, key_client, make_member, put_on_plan, session_client
from tests.helpers import assert_error
from training.datasets import dataset_upload, dataset_uri
from training.models import Dataset, TrainingJob

pytestmark = pytest.mark.usefixtures("adapter_storage", "model_store")

URL = "/api/v1/datasets"
PAGE = reverse("training")


def write_tokenizer(model_store, name):
    """A word-level tokenizer.json for ``name``: one token per whitespace-separated word."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = model_store / name / "float32"
    folder.mkdir(parents=True)
    tokenizer.save(str(folder / "tokenizer.json"))


@pytest.fixture
def smollm(db, settings):
    return BaseModel.objects.create(name=settings.VAJRA_DEFAULT_BASE_MODEL, context_length=40)


def jsonl(*records):
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records).encode()


def chat(*turns):
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


GOOD_CHAT = jsonl(chat(("system", "Be brief."), ("user", "What is 2+2?"), ("assistant", "4")),
                  chat(("user", "Hi"), ("assistant", "Hello! How can I help?")))
GOOD_COMPLETION = jsonl({"prompt": "2+2=", "completion": " 4"}, {"prompt": "", "completion": "Hello"})


def upload(client, data, *, filename="train.jsonl", **fields):
    return client.post(URL, {**fields, "file": SimpleUploadedFile(filename, data)}, format="multipart")


def assert_refused(response, lines, *, omitted=0):
    """400 invalid_dataset: the message names every listed line, and ``lines`` lists them structured."""
    assert response.status_code == 400, response.content[:1000]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code", "lines", "lines_omitted"}, error
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_dataset", "file")
    assert [(line["line"], line["code"]) for line in error["lines"]] == lines
    assert error["lines_omitted"] == omitted
    for line in error["lines"]:
        prefix = f"line {line['line']}: " if line["line"] else ""
        assert f"{prefix}{line['message']}" in error["message"]
    assert response.headers.get("x-request-id")
    return error


@pytest.fixture
def alice_api(alice, acme):
    return key_client(create_key(alice, acme)[1])


@pytest.fixture
def uploaded(alice_api):
    response = upload(alice_api, GOOD_CHAT)
    assert response.status_code == 201, response.json()
    return Dataset.objects.get()


# Good uploads

def test_chat_upload(alice_api, acme, adapter_storage):
    response = upload(alice_api, GOOD_CHAT)
    assert response.status_code == 201, response.json()
    body = response.json()
    row = Dataset.objects.get()
    assert body["id"] == row.id and row.id.startswith("ds_") and len(row.id) == 3 + 24
    contents = ["Be brief.", "What is 2+2?", "4", "Hi", "Hello! How can I help?"]
    assert body == {"id": row.id, "object": "dataset", "name": "train.jsonl", "format": "chat", "records": 2,
                    "size_bytes": len(GOOD_CHAT), "tokens": sum(len(c.encode()) for c in contents) + 5 * 4,
                    "tokens_exact": False, "sha256": hashlib.sha256(GOOD_CHAT).hexdigest(),
                    "created_at": body["created_at"]}
    assert row.tenant == acme and row.created_by.email == "alice@acme.test"
    assert row.storage_key == f"datasets/{acme.pk}/{row.id}.jsonl"
    assert stored_files(adapter_storage) == [row.storage_key]
    assert (adapter_storage / row.storage_key).read_bytes() == GOOD_CHAT
    assert dataset_uri(row) == f"file://{adapter_storage / row.storage_key}"


def test_completion_upload_with_a_session_and_a_name(alice_client):
    response = upload(alice_client, GOOD_COMPLETION, name="arithmetic")
    assert response.status_code == 201, response.json()
    assert (response.json()["format"], response.json()["records"], response.json()["name"]) == (
        "completion", 2, "arithmetic")
    assert Dataset.objects.get().created_by.email == "alice@acme.test"


def test_tokens_are_exact_with_the_base_models_tokenizer(alice_api, smollm, model_store):
    write_tokenizer(model_store, smollm.name)
    response = upload(alice_api, jsonl({"prompt": "one two three", "completion": "four five"}))
    assert response.status_code == 201, response.json()
    assert (response.json()["tokens"], response.json()["tokens_exact"]) == (3 + 2 + 1, True)


# Every bad line, with its number and reason; nothing written

BAD_FILE = jsonl(
    chat(("user", "Hi"), ("assistant", "Hello")),                    # 1 good
    "",                                                               # 2 blank: skipped
    '{"messages": [{"role": "user", "content": "Hi"}',                # 3 invalid JSON
    {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},  # 4 missing field
    chat(("assistant", "Hi"), ("user", "Hello")),                     # 5 wrong role order
    chat(("user", "Hi"), ("assistant", "")),                          # 6 empty
    chat(("user", "Hi"), ("assistant", "Hello")),                     # 7 good
    {"prompt": "a", "completion": "b"},                               # 8 another format
    chat(("user", "x"), ("robot", "y")),                              # 9 unknown role
)


def test_every_bad_line_is_listed(alice_api, unchanged_db, adapter_storage):
    with unchanged_db():
        response = upload(alice_api, BAD_FILE)
    error = assert_refused(response, [(3, "invalid_json"), (4, "missing_field"), (5, "wrong_role_order"),
                                      (6, "empty"), (8, "mixed_format"), (9, "unknown_role")])
    assert error["message"].startswith("The dataset has 6 problem(s): line 3: invalid JSON (")
    assert "line 4: missing field 'content' in message 1; line 5: wrong role order" in error["message"]
    assert stored_files(adapter_storage) == []


def test_too_long_for_the_context(alice_api, smollm, model_store, unchanged_db, adapter_storage):
    write_tokenizer(model_store, smollm.name)
    long = chat(("user", "word " * 40), ("assistant", "ok"))
    with unchanged_db():
        response = upload(alice_api, jsonl(chat(("user", "Hi"), ("assistant", "Hello")), long),
                          base_model=smollm.name)
    error = assert_refused(response, [(2, "too_long")])
    assert "too long for the context: about 49 tokens, the base model takes 40" in error["message"]
    assert stored_files(adapter_storage) == []


def test_without_a_tokenizer_length_is_left_to_the_node(alice_api, smollm):
    long = chat(("user", "word " * 40), ("assistant", "ok"))
    response = upload(alice_api, jsonl(long))
    assert response.status_code == 201 and response.json()["tokens_exact"] is False


@pytest.mark.parametrize("data", [b"", b"\n \n"], ids=["empty", "blank lines"])
def test_an_empty_file(alice_api, unchanged_db, data):
    with unchanged_db():
        error = assert_refused(upload(alice_api, data), [(None, "empty")])
    assert "no records" in error["message"]


def test_many_bad_lines_are_capped_with_a_count(alice_api, unchanged_db):
    with unchanged_db():
        error = assert_refused(upload(alice_api, b"\n".join([b"x"] * 130)),
                               [(n, "invalid_json") for n in range(1, 101)], omitted=30)
    assert error["message"].endswith("; and 30 more bad line(s). Fix them and upload the file again.")


# Caps

def test_over_the_plans_byte_cap(alice_api, acme, unchanged_db, adapter_storage):
    put_on_plan(acme, dataset_max_bytes=len(GOOD_CHAT) - 1)
    with unchanged_db():
        error = assert_refused(upload(alice_api, GOOD_CHAT), [(None, "too_large")])
    assert f"the file is {len(GOOD_CHAT)} bytes; the plan 'small' allows {len(GOOD_CHAT) - 1}" in error["message"]
    assert stored_files(adapter_storage) == []


def test_over_the_plans_record_cap(alice_api, acme, unchanged_db, adapter_storage):
    put_on_plan(acme, dataset_max_records=1)
    with unchanged_db():
        error = assert_refused(upload(alice_api, GOOD_CHAT), [(2, "too_many_records")])
    assert "the file has 2 records; the plan 'small' allows 1" in error["message"]
    assert stored_files(adapter_storage) == []


def test_over_the_plans_storage_quota(alice_api, acme, unchanged_db, adapter_storage):
    assert upload(alice_api, GOOD_CHAT).status_code == 201
    put_on_plan(acme, storage_max_bytes=2 * len(GOOD_CHAT) - 1)
    before = stored_files(adapter_storage)
    with unchanged_db():
        error = assert_error(upload(alice_api, GOOD_CHAT), 413, code="storage_quota_exceeded", param="file")
    assert f"uses {len(GOOD_CHAT)} of the {2 * len(GOOD_CHAT) - 1} bytes" in error["message"]
    assert stored_files(adapter_storage) == before


def test_another_tenants_plan_caps_do_not_apply(alice_api, acme, charlie, contoso, adapter_storage):
    put_on_plan(acme, dataset_max_bytes=10, dataset_max_records=1)
    charlie_api = key_client(create_key(charlie, contoso)[1])
    assert upload(charlie_api, GOOD_CHAT).status_code == 201


# Requests that are wrong in other ways

def test_json_body_is_415(alice_api, unchanged_db):
    with unchanged_db():
        error = assert_error(alice_api.post(URL, {"file": "x"}, format="json"), 415, code="unsupported_media_type")
    assert "multipart/form-data" in error["message"] and "application/json" in error["message"]


@pytest.mark.parametrize("fields", [{}, {"name": "x"}], ids=["nothing", "no file"])
def test_missing_file_is_400(alice_api, unchanged_db, fields):
    with unchanged_db():
        assert_error(alice_api.post(URL, fields, format="multipart"), 400, code="no_file", param="file")


def test_file_under_another_field_is_400(alice_api, unchanged_db):
    with unchanged_db():
        response = alice_api.post(URL, {"data": SimpleUploadedFile("a.jsonl", GOOD_CHAT)}, format="multipart")
        assert_error(response, 400, code="no_file", param="file")


def test_unknown_field_is_named(alice_api, unchanged_db):
    with unchanged_db():
        assert_error(upload(alice_api, GOOD_CHAT, colour="blue"), 400, code="unknown_field", param="colour")


def test_unknown_base_model_is_404(alice_api, unchanged_db, adapter_storage):
    with unchanged_db():
        assert_error(upload(alice_api, GOOD_CHAT, base_model="gpt-9"), 404, code="not_found")
    assert stored_files(adapter_storage) == []


def test_no_row_is_left_and_the_file_is_removed_when_the_insert_fails(alice, acme, adapter_storage, monkeypatch,
                                                                     unchanged_db):
    def refuse(**kwargs):
        raise RuntimeError("database down")

    monkeypatch.setattr(Dataset.objects, "create", refuse)
    principal = Principal(tenant=acme, user=alice, role=OWNER)
    with unchanged_db(), pytest.raises(RuntimeError):
        dataset_upload(principal=principal, file=SimpleUploadedFile("a.jsonl", GOOD_CHAT))
    assert stored_files(adapter_storage) == []


# Read and delete

def test_list_and_get(alice_api, uploaded):
    listed = alice_api.get(URL).json()["data"]
    assert [d["id"] for d in listed] == [uploaded.id]
    got = alice_api.get(f"{URL}/{uploaded.id}").json()
    assert got == listed[0] and got["records"] == 2


def test_delete_hides_it_and_removes_the_file(alice_api, acme, uploaded, adapter_storage,
                                               django_capture_on_commit_callbacks):
    # Jobs that trained on it keep pointing at the row; only a job in progress reads the file, and none is (409).
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.delete(f"{URL}/{uploaded.id}")
    assert response.status_code == 204
    assert_error(alice_api.get(f"{URL}/{uploaded.id}"), 404, code="not_found")
    assert alice_api.get(URL).json()["data"] == []
    uploaded.refresh_from_db()
    assert uploaded.deleted_at is not None and uploaded.storage_key == ""
    assert stored_files(adapter_storage) == [] and storage_used(acme) == 0
    entries = AuditEntry.objects.filter(tenant=acme).order_by("id")
    assert [(e.action, e.target_type, e.target_id, e.target_name) for e in entries] == [
        ("dataset.uploaded", "dataset", uploaded.id, "train.jsonl"),
        ("dataset.deleted", "dataset", uploaded.id, "train.jsonl")]
    assert entries[0].details == {"records": 2, "size_bytes": len(GOOD_CHAT), "format": "chat"}


def test_a_dataset_in_use_by_a_running_job_cannot_be_deleted(alice_api, uploaded, acme, unchanged_db):
    base = BaseModel.objects.create(name="tiny-llama")
    adapter = Adapter.objects.create(tenant=acme, base_model=base, name="support-bot")
    TrainingJob.objects.create(id="ftjob_1", tenant=acme, base_model=base, adapter=adapter, dataset=uploaded,
                               status=TrainingJob.RUNNING)
    with unchanged_db():
        error = assert_error(alice_api.delete(f"{URL}/{uploaded.id}"), 409, code="dataset_in_use")
    assert "ftjob_1" in error["message"]
    TrainingJob.objects.update(status=TrainingJob.SUCCEEDED, finished_at=timezone.now())
    assert alice_api.delete(f"{URL}/{uploaded.id}").status_code == 204


# Tenant isolation

@pytest.mark.parametrize("method", ["get", "delete"])
def test_charlie_gets_404_for_alices_dataset(charlie_key, uploaded, unchanged_db, method):
    client = key_client(charlie_key[1])
    with unchanged_db():
        error = assert_error(getattr(client, method)(f"{URL}/{uploaded.id}"), 404, code="not_found")
    assert "acme" not in error["message"].lower()


def test_charlies_list_never_contains_alices_dataset(charlie_key, uploaded):
    client = key_client(charlie_key[1])
    assert upload(client, GOOD_COMPLETION).status_code == 201
    listed = client.get(URL).json()["data"]
    assert len(listed) == 1 and listed[0]["id"] != uploaded.id and listed[0]["format"] == "completion"


def test_a_deleted_dataset_is_404(alice_api, uploaded):
    Dataset.objects.update(deleted_at=timezone.now())
    assert_error(alice_api.delete(f"{URL}/{uploaded.id}"), 404, code="not_found")


# Roles and scopes

def test_bob_the_developer_may_upload_read_and_delete(bob_client, uploaded):
    assert bob_client.get(f"{URL}/{uploaded.id}").status_code == 200
    assert upload(bob_client, GOOD_COMPLETION).status_code == 201
    assert bob_client.delete(f"{URL}/{uploaded.id}").status_code == 204


@pytest.mark.parametrize("method, path", [("get", URL), ("post", URL), ("get", "{url}/{id}"), ("delete", "{url}/{id}")])
def test_billing_viewer_may_not_touch_datasets(acme, uploaded, unchanged_db, method, path):
    client = session_client(make_member("bill@acme.test", acme, BILLING_VIEWER))
    path = path.format(url=URL, id=uploaded.id)
    with unchanged_db():
        response = upload(client, GOOD_CHAT) if method == "post" else getattr(client, method)(path)
        error = assert_error(response, 403, code="role_forbidden")
    assert "datasets." in error["message"]


@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_a_key_needs_the_train_scope(alice, acme, uploaded, unchanged_db, method):
    client = key_client(create_key(alice, acme, scopes=["infer", "adapters:write", "usage:read"])[1])
    with unchanged_db():
        response = {"get": lambda: client.get(URL), "post": lambda: upload(client, GOOD_CHAT),
                    "delete": lambda: client.delete(f"{URL}/{uploaded.id}")}[method]()
        error = assert_error(response, 403, code="missing_scope")
    assert "'train'" in error["message"]


def test_a_train_key_may_upload(alice, acme):
    client = key_client(create_key(alice, acme, scopes=["train"])[1])
    assert upload(client, GOOD_CHAT).status_code == 201


def test_anonymous_is_401(db, unchanged_db):
    from rest_framework.test import APIClient

    with unchanged_db():
        assert_error(upload(APIClient(), GOOD_CHAT), 401)


# The Training page's dataset form

def web(user):
    client = Client()
    client.force_login(user)
    return client


def post_page(client, data, **fields):
    return client.post(PAGE, {**fields, "file": SimpleUploadedFile("support.jsonl", data)})


def test_page_shows_the_form_and_the_datasets(alice, uploaded, smollm):
    html = web(alice).get(PAGE).content.decode()
    assert 'enctype="multipart/form-data"' in html and 'type="file" name="file"' in html
    assert 'accept=".jsonl,.json,.txt"' in html
    assert f'<option value="{smollm.name}" selected>' in html
    assert f"<code>{uploaded.id}</code>" in html and "Chat messages" in html and "train.jsonl" in html
    assert "Fine-tuning jobs" in html  # the jobs section is still there


def test_page_when_empty_and_without_base_models(alice):
    html = web(alice).get(PAGE).content.decode()
    assert "No datasets yet" in html and 'name="base_model"' not in html and 'name="file"' in html


def test_upload_on_the_page(alice, smollm, adapter_storage):
    client = web(alice)
    response = post_page(client, GOOD_COMPLETION, base_model=smollm.name)
    assert response.status_code == 302 and response.url == PAGE
    html = client.get(PAGE).content.decode()
    assert "Uploaded support.jsonl: 2 completion records, at most " in html
    row = Dataset.objects.get()
    assert row.format == "completion" and stored_files(adapter_storage) == [row.storage_key]


def test_the_page_lists_every_bad_line(alice, unchanged_db, adapter_storage):
    client = web(alice)
    with unchanged_db():
        response = post_page(client, BAD_FILE)
    assert response.status_code == 400
    html = response.content.decode()
    assert "The file has 6 problem(s), listed below." in html and 'class="field field--invalid"' in html
    report = html[html.index("data-dataset-report"):]
    for line, code in [(3, "invalid_json"), (4, "missing_field"), (5, "wrong_role_order"), (6, "empty"),
                       (8, "mixed_format"), (9, "unknown_role")]:
        assert f"<td>{line}</td>\n                <td><code>{code}</code></td>" in report, (line, code)
    assert "missing field &#x27;content&#x27; in message 1" in report
    assert "<td>1</td>" not in report and "<td>7</td>" not in report  # the good lines are not listed
    assert stored_files(adapter_storage) == []


def test_a_file_level_problem_on_the_page(alice, unchanged_db):
    client = web(alice)
    with unchanged_db():
        blank, empty = post_page(client, b"\n \n"), post_page(client, b"")
    assert blank.status_code == 400 and "<td>whole file</td>" in blank.content.decode()
    assert empty.status_code == 400 and "The submitted file is empty." in empty.content.decode()  # the form's check


def test_billing_viewer_sees_no_datasets_and_cannot_upload(acme, uploaded, unchanged_db):
    client = web(make_member("bill@acme.test", acme, BILLING_VIEWER))
    html = client.get(PAGE).content.decode()
    assert uploaded.id not in html and 'name="file"' not in html and "does not include training datasets" in html
    with unchanged_db():
        assert post_page(client, GOOD_CHAT).status_code == 403


def test_charlie_never_sees_alices_datasets_on_the_page(charlie, uploaded):
    html = web(charlie).get(PAGE).content.decode()
    assert uploaded.id not in html and "No datasets yet" in html
