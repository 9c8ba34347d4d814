"""A training job's live view, ws/v1/training/<job_id>/: the dashboard's progress bar, loss chart and events.

Server to client (after authentication, see tenants/ws.py):
    {"type": "job", "job": {...}}      the job as the API shows it, with its loss history [[step, loss], ...]
                                       and its latest events; sent on connect and again when it ends
    {"type": "progress", "id": "<entry id>", "step", "total_steps", "loss", "eta_s"}   each optimizer step
    {"type": "final", "result": {...}}  the runtime's result (status, error, steps, final_loss)
The runtime writes progress entries to the job's Redis Stream (gpu_runtime.training_tasks); this relays them with
blocking reads from the start of the stream (or after ``last_id`` from the client's query ``?last_id=``), so
a late or reconnecting page misses nothing. Another tenant's job closes with 4404.
"""

import asyncio
import logging
from types import SimpleNamespace
from urllib.parse import parse_qs

from channels.db import database_sync_to_async

from serving import relay
from tenants.active import active_membership
from tenants.keys import principal_from_key, principal_from_membership
from tenants.ws import TenantConsumer

from . import access
from .models import TrainingJob

log = logging.getLogger(__name__)

HISTORY_POINTS = 2000
RECENT_EVENTS = 50
MAX_WAIT_S = 7 * 24 * 3600  # a queued job may wait long for a node; keep-alives flow meanwhile


def job_snapshot(job):
    steps = list(job.steps.order_by("-step").values_list("step", "loss", "eval_loss")[:HISTORY_POINTS])[::-1]
    events = list(job.events.order_by("-id").values("level", "message", "step", "loss", "eval_loss", "created_at")[
        :RECENT_EVENTS])[::-1]
    for e in events:
        e["created_at"] = e["created_at"].isoformat()
    return {
        "id": job.id, "status": job.status, "adapter": job.adapter.name, "dataset": job.dataset_id,
        "total_steps": job.total_steps, "trained_steps": job.trained_steps, "last_loss": job.last_loss,
        "last_eval_loss": job.last_eval_loss,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "result_version": job.result_version.number if job.result_version_id else None,
        "losses": [[step, loss] for step, loss, _ in steps],
        "eval_losses": [[step, eval_loss] for step, _, eval_loss in steps if eval_loss is not None], "events": events,
        "terminal": job.status in TrainingJob.TERMINAL,
    }


class TrainingJobConsumer(TenantConsumer):
    _relay = None

    @database_sync_to_async
    def _resolve_principal(self, key, user):
        if key is not None:
            return principal_from_key(key)
        return principal_from_membership(active_membership(SimpleNamespace(user=user, session=self.scope["session"])))

    @database_sync_to_async
    def _snapshot(self, principal):
        principal.require("training.read")
        job = access.access_training_job(tenant=principal.tenant, job_id=self.scope["url_route"]["kwargs"]["job_id"])
        return job_snapshot(job)

    async def authorized(self, principal):
        snapshot = await self._snapshot(principal)
        await self.send_json({"type": "job", "job": snapshot})
        if snapshot["terminal"]:
            await self.close(code=1000)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        last_id = (query.get("last_id") or ["0"])[0]
        self._relay = asyncio.ensure_future(self._follow(snapshot["id"], last_id))

    async def _follow(self, job_id, last_id):
        try:
            async for entry_id, kind, data in relay.events(job_id, last_id, max_wait_s=MAX_WAIT_S, check_seq=False,
                                                               ended=None):
                if kind == "progress":
                    await self.send_json({"type": "progress", "id": entry_id, **data})
                elif kind == "final":
                    await self.send_json({"type": "final", "result": data})
                    break
                elif kind == "keepalive" and (await self._snapshot(self.principal))["terminal"]:
                    break  # it ended with nothing on its stream: a failed file check, no capacity, cancelled queued
            # the control plane records the end a moment after the runtime says it: send the recorded job
            for _ in range(20):
                snapshot = await self._snapshot(self.principal)
                if snapshot["terminal"]:
                    break
                await asyncio.sleep(0.25)
            await self.send_json({"type": "job", "job": snapshot})
            await self.close(code=1000)
        except asyncio.CancelledError:
            raise
        except Exception:  # the page falls back to its REST poll; never take the server down
            log.exception("training relay for %s failed", job_id)
            await self.close(code=1011)

    async def receive_json(self, content, **kwargs):
        if content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def websocket_disconnect(self, message):
        if self._relay is not None:
            self._relay.cancel()
        await super().websocket_disconnect(message)
