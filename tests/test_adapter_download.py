# ruff: noqa: F811 (the fixtures imported from test_adapters_api are named as arguments)
"""Adapters out: any ready version, uploaded or trained, and a training checkpoint, as a zip of the PEFT folder,
streamed; the zip loads with PeftModel.from_pretrained and gives the original adapter's logits. Another tenant's
adapter, version or job is a 404 in the one error shape that writes nothing."""

import io
import json
import zipfile

import pytest
import torch

from adapters.models import AdapterVersion
from gpu_runtime import object_io
from gpu_runtime.adapter_validation import CONFIG_FILE, WEIGHTS_FILE
from tenants.roles import BILLING_VIEWER
from tests.factories import create_key, key_client, make_dataset, make_job, make_member, session_client
from tests.helpers import ADAPTERS_URL as URL
from tests.helpers import assert_error
from tests.helpers import upload_adapter as upload
from training.hot_swap import checked_output, version_from_training
from training.jobs import checkpoint_key, output_key, storage_uri
from training.models import TrainingCheckpoint

pytestmark = pytest.mark.usefixtures("adapter_storage")


@pytest.fixture
def adapter_storage(settings, tmp_path):
    root = tmp_path / "objects"
    root.mkdir()
    settings.STORAGES = {**settings.STORAGES, "adapters": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(root)}}}
    return root


def streamed_zip(response):
    assert response.status_code == 200, getattr(response, "content", b"")[:300]
    assert response.streaming, "the zip is streamed, never built whole in memory"
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"].startswith("attachment; filename=")
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))


def load_logits(folder):
    """Logits of the tiny Llama with the adapter in ``folder`` loaded by PEFT, on a fixed prompt."""
    from peft import PeftModel

    from tests.runtime_fixtures import tiny_base

    model = PeftModel.from_pretrained(tiny_base(), str(folder)).eval()
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 9, 17, 33, 65]])).logits


def test_download_of_an_uploaded_version_loads_in_peft_with_the_same_logits(alice_api, uploaded_adapter,
        peft_v1, tmp_path):
    archive = streamed_zip(alice_api.get(f"{URL}/support-bot/versions/1/download"))
    assert sorted(archive.namelist()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert archive.read(WEIGHTS_FILE) == peft_v1[WEIGHTS_FILE]
    assert archive.testzip() is None
    archive.extractall(tmp_path / "downloaded")
    original = tmp_path / "original"
    original.mkdir()
    for name, data in peft_v1.items():
        (original / name).write_bytes(data)
    downloaded, reference = load_logits(tmp_path / "downloaded"), load_logits(original)
    assert torch.equal(downloaded, reference)
    from tests.runtime_fixtures import tiny_base

    with torch.no_grad():
        base = tiny_base()(torch.tensor([[1, 5, 9, 17, 33, 65]])).logits
    assert not torch.allclose(downloaded, base), "the adapter changes the logits, so the comparison means something"


def test_each_version_downloads_its_own_files(alice_api, uploaded_adapter, peft_v1, peft_v2):
    assert upload(alice_api, list(peft_v2.items())).status_code == 201
    one = streamed_zip(alice_api.get(f"{URL}/support-bot/versions/1/download"))
    two = streamed_zip(alice_api.get(f"{URL}/support-bot/versions/2/download"))
    assert one.read(WEIGHTS_FILE) == peft_v1[WEIGHTS_FILE] and two.read(WEIGHTS_FILE) == peft_v2[WEIGHTS_FILE]
    assert json.loads(two.read(CONFIG_FILE))["r"] == 8


def test_a_trained_version_downloads_the_same_way(alice_api, acme, tiny_llama, peft_v1, adapter_storage, monkeypatch,
                                                  uploaded_adapter):
    from vajra.celery import app

    monkeypatch.setattr(app, "send_task", lambda *args, **kwargs: None)
    job = make_job(acme, uploaded_adapter, make_dataset(acme))
    final = storage_uri(f"{output_key(job)}/final")
    object_io.write_folder(final, {**peft_v1, "state.json": b'{"step": 4}'})
    version = version_from_training(job_id=job.id, output=checked_output(job, {"uri": final}))
    assert (version.result_version.number, version.result_version.source) == (2, AdapterVersion.TRAINING)
    archive = streamed_zip(alice_api.get(f"{URL}/support-bot/versions/2/download"))
    assert sorted(archive.namelist()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert archive.read(WEIGHTS_FILE) == peft_v1[WEIGHTS_FILE]


def test_a_checkpoint_downloads_as_a_peft_folder_without_optimizer_state(alice_api, acme, uploaded_adapter,
        peft_v1, tmp_path):
    job = make_job(acme, uploaded_adapter, make_dataset(acme))
    uri = storage_uri(checkpoint_key(job, 5))
    object_io.write_folder(uri, {**peft_v1, "optimizer.safetensors": b"state", "state.json": b'{"step": 5}'})
    TrainingCheckpoint.objects.create(job=job, step=5, uri=uri, loss=1.25)
    archive = streamed_zip(alice_api.get(f"/v1/training/jobs/{job.id}/checkpoints/5/download"))
    assert sorted(archive.namelist()) == [CONFIG_FILE, WEIGHTS_FILE]
    archive.extractall(tmp_path / "checkpoint")
    assert load_logits(tmp_path / "checkpoint").shape[-1] == 128
    assert_error(alice_api.get(f"/v1/training/jobs/{job.id}/checkpoints/6/download"), 404)


def test_a_checkpoint_row_pointing_outside_the_jobs_folder_is_not_served(alice_api, acme, uploaded_adapter,
        adapter_storage):
    job = make_job(acme, uploaded_adapter, make_dataset(acme))
    version = AdapterVersion.objects.get()
    TrainingCheckpoint.objects.create(job=job, step=7, uri=storage_uri(version.storage_key))
    assert_error(alice_api.get(f"/v1/training/jobs/{job.id}/checkpoints/7/download"), 404)


def test_dashboard_download_button(alice_client, uploaded_adapter, peft_v1):
    page = alice_client.get("/adapters/support-bot/")
    assert page.status_code == 200
    assert b'href="/adapters/support-bot/versions/1/download/"' in page.content
    archive = streamed_zip(alice_client.get("/adapters/support-bot/versions/1/download/"))
    assert archive.read(CONFIG_FILE) == peft_v1[CONFIG_FILE]


@pytest.mark.parametrize("path", ["support-bot/versions/2/download", "support-bot/versions/0/download",
                                  "support-bot/versions/99999999999/download", "nobody/versions/1/download"])
def test_missing_versions_are_404(alice_api, uploaded_adapter, path, unchanged_db):
    with unchanged_db():
        assert_error(alice_api.get(f"{URL}/{path}"), 404)


def test_another_tenants_adapter_version_and_checkpoint_are_404_and_write_nothing(
        uploaded_adapter, acme, charlie, contoso, unchanged_db):
    job = make_job(acme, uploaded_adapter, make_dataset(acme))
    uri = storage_uri(checkpoint_key(job, 1))
    TrainingCheckpoint.objects.create(job=job, step=1, uri=uri)
    charlie_api = key_client(create_key(charlie, contoso)[1])
    charlie_session = session_client(charlie)
    with unchanged_db():
        error = assert_error(charlie_api.get(f"{URL}/support-bot/versions/1/download"), 404)
        assert "support-bot" in error["message"] and "acme" not in error["message"]
        assert_error(charlie_api.get(f"/v1/training/jobs/{job.id}/checkpoints/1/download"), 404)
        assert charlie_session.get("/adapters/support-bot/versions/1/download/").status_code == 404


def test_roles_and_scopes_that_cannot_read_adapters_are_refused(uploaded_adapter, acme, alice, unchanged_db):
    viewer = make_member("bill@acme.test", acme, BILLING_VIEWER)
    infer_only = key_client(create_key(alice, acme, scopes=("infer",))[1])
    viewer_session = session_client(viewer)
    with unchanged_db():
        assert_error(infer_only.get(f"{URL}/support-bot/versions/1/download"), 403)
        assert viewer_session.get("/adapters/support-bot/versions/1/download/").status_code == 403


def test_a_version_whose_files_are_gone_is_404_before_any_byte(alice_api, uploaded_adapter, adapter_storage):
    version = AdapterVersion.objects.get()
    (adapter_storage / version.storage_key / WEIGHTS_FILE).unlink()
    assert_error(alice_api.get(f"{URL}/support-bot/versions/1/download"), 404)


def test_the_download_is_in_the_openapi_schema(alice_api):
    schema = alice_api.get("/api/schema/?format=json")
    paths = schema.json()["paths"]
    operation = paths["/api/v1/adapters/{name}/versions/{number}/download"]["get"]
    assert "application/zip" in operation["responses"]["200"]["content"]
    assert "/v1/training/jobs/{job_id}/checkpoints/{step}/download" in paths
