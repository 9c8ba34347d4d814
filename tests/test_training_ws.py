"""ws/v1/training/<job_id>/ (training/consumers.py) through the real ASGI application, Redis and database: the
job's snapshot first, then the runtime's progress entries from the job's Redis Stream in order, the final result
and the recorded end; a reconnect resumes after ``?last_id=``; another tenant's job is 4404."""

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.utils import timezone

from gpu_runtime.contract import stream_key
from gpu_runtime.streams import StreamWriter
from tenants.roles import BILLING_VIEWER
from tests.factories import create_key, make_adapter, make_base, make_dataset, make_job, make_member
from tests.ws_helpers import Communicator, expect_refusal, key_protocols, session_headers
from training.jobs import event, new_job_id
from training.models import TrainingJob, TrainingStep
from vajra.asgi import application
from vajra.redis import get_redis

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def job(acme, adapter_storage):
    base = make_base()
    job = make_job(acme, make_adapter(acme, base), make_dataset(acme), job_id=new_job_id(), status=TrainingJob.RUNNING,
                   total_steps=3, trained_steps=1, last_loss=2.5, started_at=timezone.now())
    TrainingStep.objects.create(job=job, step=1, gradients=10, micro_batches=1, tokens=8, compute_ms=1.0, loss=2.5)
    event(job, "Step 1/3: training loss 2.5000.", step=1, loss=2.5)
    yield job
    get_redis().delete(stream_key(job.id))


@pytest.fixture
def writer():
    return StreamWriter.from_url(settings.REDIS_URL)


def path(job, last_id=None):
    return f"/ws/v1/training/{job.id}/" + (f"?last_id={last_id}" if last_id else "")


async def open_socket(job, *, last_id=None, **kwargs):
    communicator = Communicator(application, path(job, last_id), **kwargs)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


def progress(step, loss):
    return {"step": step, "total_steps": 3, "loss": loss, "eta_s": 1.5 * (3 - step)}


def finish(job_id, status=TrainingJob.SUCCEEDED, **fields):
    TrainingJob.objects.filter(pk=job_id).update(status=status, finished_at=timezone.now(), **fields)


async def expect_close(communicator, code=1000):
    close = await communicator.receive_output(timeout=5)
    assert close["type"] == "websocket.close" and close["code"] == code, close
    await communicator.disconnect()


def test_the_snapshot_then_progress_then_the_end_in_order(alice, job, writer):
    async def go():
        ws = await open_socket(job, headers=session_headers(alice))
        snapshot = await ws.receive_json_from(timeout=5)
        for step, loss in [(2, 2.0), (3, 1.5)]:
            writer.event(job.id, "progress", progress(step, loss))
        await sync_to_async(finish)(job.id, trained_steps=3, last_loss=1.5)
        writer.final(job.id, {"status": "succeeded", "error": None, "steps": 3, "final_loss": 1.5})
        messages = [await ws.receive_json_from(timeout=5) for _ in range(4)]
        await expect_close(ws)
        return snapshot, messages

    snapshot, messages = async_to_sync(go)()
    assert snapshot["type"] == "job"
    job_json = snapshot["job"]
    assert {k: job_json[k] for k in ("id", "status", "adapter", "total_steps", "trained_steps", "last_loss",
                                     "terminal", "losses", "result_version", "error")} == {
        "id": job.id, "status": "running", "adapter": "support-bot", "total_steps": 3, "trained_steps": 1,
        "last_loss": 2.5, "terminal": False, "losses": [[1, 2.5]], "result_version": None, "error": None}
    assert [e["message"] for e in job_json["events"]] == ["Step 1/3: training loss 2.5000."]
    first, second, final, end = messages
    assert [first["type"], second["type"], final["type"], end["type"]] == ["progress", "progress", "final", "job"]
    assert {k: first[k] for k in ("step", "total_steps", "loss", "eta_s")} == progress(2, 2.0)
    assert second["step"] == 3 and first["id"] < second["id"]  # stream entry ids, for ?last_id= on a reconnect
    assert final["result"] == {"status": "succeeded", "error": None, "steps": 3, "final_loss": 1.5}
    assert end["job"]["status"] == "succeeded" and end["job"]["terminal"] is True


def test_a_reconnect_resumes_after_last_id(alice, job, writer):
    for step, loss in [(2, 2.0), (3, 1.5)]:
        writer.event(job.id, "progress", progress(step, loss))
    first_id = get_redis().xrange(stream_key(job.id))[0][0].decode()

    async def go():
        ws = await open_socket(job, last_id=first_id, subprotocols=["vajra.v1"], headers=session_headers(alice))
        snapshot = await ws.receive_json_from(timeout=5)
        after = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return snapshot, after

    snapshot, after = async_to_sync(go)()
    assert snapshot["type"] == "job" and (after["type"], after["step"]) == ("progress", 3)


def test_a_key_with_the_train_scope_follows_too(alice, acme, job, writer):
    secret = create_key(alice, acme, scopes=["train"])[1]

    async def go():
        ws = await open_socket(job, subprotocols=key_protocols(secret))
        snapshot = await ws.receive_json_from(timeout=5)
        writer.event(job.id, "progress", progress(2, 2.0))
        entry = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return snapshot, entry

    snapshot, entry = async_to_sync(go)()
    assert snapshot["job"]["id"] == job.id and entry["step"] == 2


def test_a_finished_job_sends_its_snapshot_and_closes(alice, job):
    finish(job.id, TrainingJob.FAILED, error_code="training_failed", error_message="out of memory")

    async def go():
        ws = await open_socket(job, headers=session_headers(alice))
        snapshot = await ws.receive_json_from(timeout=5)
        await expect_close(ws)
        return snapshot

    snapshot = async_to_sync(go)()["job"]
    assert snapshot["terminal"] is True and snapshot["status"] == "failed"
    assert snapshot["error"] == {"code": "training_failed", "message": "out of memory"}


def test_an_end_with_nothing_on_the_stream_is_noticed(alice, job, monkeypatch):
    """A job can end without the runtime writing to its stream (a failed file check, no capacity, cancelled while
    queued): between blocking reads the consumer looks at the recorded job."""
    monkeypatch.setattr("serving.relay.BLOCK_MS", 100)

    async def go():
        ws = await open_socket(job, headers=session_headers(alice))
        await ws.receive_json_from(timeout=5)
        await sync_to_async(finish)(job.id, TrainingJob.CANCELLED)
        end = await ws.receive_json_from(timeout=5)
        await expect_close(ws)
        return end

    end = async_to_sync(go)()
    assert end["type"] == "job" and end["job"]["status"] == "cancelled" and end["job"]["terminal"] is True


def test_another_tenants_key_gets_4404(charlie, contoso, job):
    secret = create_key(charlie, contoso)[1]

    async def go():
        ws = await open_socket(job, subprotocols=key_protocols(secret))
        return await expect_refusal(ws, 4404, "not_found")

    error, _ = async_to_sync(go)()
    assert job.id in error["message"]


def test_another_tenants_session_gets_4404(charlie, job):
    async def go():
        ws = await open_socket(job, headers=session_headers(charlie))
        return await expect_refusal(ws, 4404, "not_found")

    async_to_sync(go)()


def test_a_billing_viewer_and_a_key_without_train_get_4403(alice, acme, job):
    viewer = make_member("bill@acme.test", acme, BILLING_VIEWER)
    secret = create_key(alice, acme, scopes=["infer"])[1]

    async def go(code, **socket):
        ws = await open_socket(job, **socket)
        await expect_refusal(ws, 4403, code)

    async_to_sync(go)("role_forbidden", headers=session_headers(viewer))
    async_to_sync(go)("missing_scope", subprotocols=key_protocols(secret))
