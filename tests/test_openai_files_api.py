"""OpenAI's files API (/v1/files) over the tenant's datasets: upload checked line by line (every bad line in the
400), list with OpenAI's cursor, retrieve, content, delete; refusals write nothing (no row, no file); charlie
(contoso) never reaches acme's files."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.adapter_files import stored_files
from tests.factories import create_key, key_client, make_dataset
from tests.helpers import assert_error
from training.models import Dataset

pytestmark = pytest.mark.usefixtures("adapter_storage", "model_store")

URL = "/v1/files"


def chat(question, answer):
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


GOOD = "\n".join(json.dumps(chat(f"Question {i}?", f"Answer {i}.")) for i in range(3)).encode() + b"\n"


def upload(client, data=GOOD, *, filename="train.jsonl", **fields):
    return client.post(URL, {"purpose": "fine-tune", **fields, "file": SimpleUploadedFile(filename, data)},
                       format="multipart")


@pytest.fixture
def api(alice, acme):
    return key_client(create_key(alice, acme)[1])


def test_upload_is_a_dataset_named_as_openai_names_files(api, acme, adapter_storage):
    response = upload(api)
    assert response.status_code == 200, response.json()
    body = response.json()
    dataset = Dataset.objects.get()
    assert body["id"] == dataset.id and dataset.id.startswith("file-") and len(dataset.id) == len("file-") + 24
    assert body == {"id": dataset.id, "object": "file", "bytes": len(GOOD), "created_at": body["created_at"],
                    "filename": "train.jsonl", "purpose": "fine-tune", "status": "processed", "expires_at": None,
                    "status_details": None}
    assert isinstance(body["created_at"], int)
    assert (dataset.tenant, dataset.format, dataset.records) == (acme, Dataset.CHAT, 3)
    assert api.get(f"{URL}/{dataset.id}").json() == body
    content = api.get(f"{URL}/{dataset.id}/content", HTTP_ACCEPT="application/binary")  # as the SDK asks
    assert content.status_code == 200 and b"".join(content.streaming_content) == GOOD
    # the same dataset through our own API
    assert api.get(f"/api/v1/datasets/{dataset.id}").json()["records"] == 3


def test_malformed_jsonl_is_400_with_every_bad_line_and_nothing_written(api, unchanged_db, adapter_storage):
    data = b"\n".join([json.dumps(chat("a", "b")).encode(), b"{not json", json.dumps({"messages": []}).encode(),
                       json.dumps({"messages": [{"role": "user", "content": "only a question"}]}).encode()])
    with unchanged_db():
        response = upload(api, data)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code", "lines", "lines_omitted"}, error
    assert (error["code"], error["param"]) == ("invalid_dataset", "file")
    assert [line["line"] for line in error["lines"]] == [2, 3, 4]
    assert "line 2: " in error["message"] and "line 4: " in error["message"]
    assert stored_files(adapter_storage) == []


@pytest.mark.parametrize("purpose", ["assistants", "batch", "vision", "", "fine-tune-results"])
def test_a_purpose_other_than_fine_tune_is_400(api, unchanged_db, adapter_storage, purpose):
    with unchanged_db():
        assert_error(upload(api, purpose=purpose), 400, param="purpose")
    assert stored_files(adapter_storage) == []


def test_purpose_and_file_are_required_and_unknown_fields_refused(api, unchanged_db):
    with unchanged_db():
        assert_error(api.post(URL, {"file": SimpleUploadedFile("a.jsonl", GOOD)}, format="multipart"), 400,
                     param="purpose")
        assert_error(api.post(URL, {"purpose": "fine-tune"}, format="multipart"), 400, code="no_file", param="file")
        assert_error(upload(api, colour="blue"), 400, param="colour")
        assert_error(api.post(URL, {"purpose": "fine-tune"}, format="json"), 415)


def test_a_file_over_the_plans_50_mb_is_refused_before_it_is_read(api, unchanged_db, adapter_storage, settings):
    assert settings.VAJRA_DATASET_MAX_BYTES == 50 << 20
    big = GOOD + b" " * ((50 << 20) + 1 - len(GOOD))
    with unchanged_db():
        response = upload(api, big)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_dataset" and [line["code"] for line in error["lines"]] == ["too_large"]
    assert stored_files(adapter_storage) == []


def test_list_pages_with_openais_cursor_newest_first(api, acme):
    ids = [upload(api, GOOD.replace(b"Answer 0", f"Answer {n}".encode())).json()["id"] for n in range(5)]
    newest_first = ids[::-1]
    whole = api.get(URL).json()
    assert [f["id"] for f in whole["data"]] == newest_first and whole["has_more"] is False
    assert whole["object"] == "list" and whole["first_id"] == ids[-1] and whole["last_id"] == ids[0]
    seen, after = [], None
    while True:
        page = api.get(URL, {"limit": 2, **({"after": after} if after else {})}).json()
        seen += [f["id"] for f in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == newest_first
    assert [f["id"] for f in api.get(URL, {"order": "asc", "after": ids[1]}).json()["data"]] == ids[2:]
    assert api.get(URL, {"purpose": "batch"}).json()["data"] == []
    assert len(api.get(URL, {"purpose": "fine-tune"}).json()["data"]) == 5


@pytest.mark.parametrize("query, param", [({"limit": 0}, "limit"), ({"limit": 101}, "limit"),
                                          ({"limit": "x"}, "limit"), ({"order": "sideways"}, "order")])
def test_bad_list_parameters_are_400(api, query, param):
    assert_error(api.get(URL, query), 400, param=param)


def test_delete_hides_the_file_and_frees_it(api, adapter_storage):
    file_id = upload(api).json()["id"]
    response = api.delete(f"{URL}/{file_id}")
    assert response.status_code == 200 and response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert_error(api.get(f"{URL}/{file_id}"), 404)
    assert_error(api.delete(f"{URL}/{file_id}"), 404)
    assert api.get(URL).json()["data"] == []


def test_charlie_gets_404_for_every_file_endpoint(api, charlie_api, acme, unchanged_db):
    file_id = upload(api).json()["id"]
    other = make_dataset(acme)  # a dataset of our own API is a file too
    for target in (file_id, other.id):
        with unchanged_db():
            for response in (charlie_api.get(f"{URL}/{target}"), charlie_api.get(f"{URL}/{target}/content"),
                             charlie_api.delete(f"{URL}/{target}"), charlie_api.get(URL, {"after": target})):
                error = assert_error(response, 404)
                assert "acme" not in error["message"]
    assert charlie_api.get(URL).json()["data"] == []
    assert {f["id"] for f in api.get(URL).json()["data"]} == {file_id, other.id}


def test_a_key_without_the_train_scope_cannot_upload(alice, acme, unchanged_db):
    reader = key_client(create_key(alice, acme, scopes=("infer",))[1])
    with unchanged_db():
        assert_error(upload(reader), 403)
        assert_error(reader.get(URL), 403)
