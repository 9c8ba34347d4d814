"""Creating an inference request and sending it to its node; recording its end from the runtime's
final event (exactly once: a finished row is never rewritten)."""

import uuid

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework.exceptions import Throttled

from gpu_runtime.contract import TASK_INFER, node_queue

from .adapters import adapter_ref
from .models import Adapter, InferenceRequest
from .placement import NoCapacity, place, record_scale_up

ACTIVE = (InferenceRequest.QUEUED, InferenceRequest.RUNNING)


def new_request_id():
    return f"req_{uuid.uuid4().hex}"


def units_for(tier):
    return settings.VAJRA_TIER_UNITS[tier]


def cost_for(tier):
    """A request's price: units and micro-dollars (the billing issue turns these into ledger rows)."""
    units = units_for(tier)
    return {"units": units, "micro_usd": units * settings.VAJRA_UNIT_PRICE_MICRO_USD}


def inference_submit(*, principal, base_model, version=None, prompt="", messages=(), sampling, api, request_id=None):
    """Places the request, writes its row and sends the runtime task after commit. Returns the row."""
    principal.require("infer")
    try:
        return _submit(principal, base_model, version, prompt, messages, sampling, api, request_id)
    except NoCapacity as exc:
        record_scale_up(exc)
        raise


def _submit(principal, base_model, version, prompt, messages, sampling, api, request_id):
    tenant = principal.tenant
    with transaction.atomic():
        # Lock the tenant row so two concurrent submits cannot both slip under the concurrency quota.
        type(tenant).objects.select_for_update().filter(pk=tenant.pk).first()
        active = InferenceRequest.objects.filter(tenant=tenant, status__in=ACTIVE).count()
        if active >= settings.VAJRA_MAX_CONCURRENT_REQUESTS:
            raise Throttled(wait=1, detail=f"Your plan allows {settings.VAJRA_MAX_CONCURRENT_REQUESTS} concurrent "
                                           "requests; wait for one to finish.")
        node = place(tenant=tenant, base_model=base_model, version=version)
        tier = version.adapter.tier if version is not None else Adapter.COLD
        row = InferenceRequest.objects.create(
            id=request_id or new_request_id(), tenant=tenant, api_key=principal.api_key, user=principal.user,
            base_model=base_model, adapter_version=version, tier=tier, api=api, node=node,
            max_tokens=sampling["max_tokens"],
        )
        payload = {"request_id": row.id, "prompt": prompt, "messages": list(messages), "sampling": sampling,
                   "adapter": adapter_ref(version) if version is not None else None, "tenant": tenant.slug,
                   "base_model": base_model.name}
        queue = node_queue(node.name)

        def send():
            from vajra.celery import app

            app.send_task(TASK_INFER, args=[payload], queue=queue, task_id=row.id)

        transaction.on_commit(send)
    return row


def inference_start(*, request_id, node_name):
    """A node took the request: queued -> running (never back from a terminal state)."""
    from .models import Node

    node = Node.objects.filter(name=node_name).first()
    InferenceRequest.objects.filter(pk=request_id, status=InferenceRequest.QUEUED).update(
        status=InferenceRequest.RUNNING, **({"node": node} if node else {}))


def inference_finish(*, request_id, final):
    """Records the runtime's final event once; a redelivered or duplicate event changes nothing."""
    status = {"stop": InferenceRequest.SUCCEEDED, "length": InferenceRequest.SUCCEEDED,
              "cancelled": InferenceRequest.CANCELLED}.get(final.get("finish_reason"), InferenceRequest.FAILED)
    usage, timings, error = final.get("usage") or {}, final.get("timings") or {}, final.get("error") or {}
    with transaction.atomic():
        row = InferenceRequest.objects.select_for_update().filter(pk=request_id).first()
        if row is None or row.status in InferenceRequest.TERMINAL:
            return row
        row.status = status
        row.finish_reason = final.get("finish_reason") or ""
        row.prompt_tokens = usage.get("prompt_tokens", 0)
        row.completion_tokens = usage.get("completion_tokens", 0)
        row.cached_tokens = usage.get("cached_tokens", 0)
        row.queued_ms = timings.get("queued_ms")
        row.adapter_ready_ms = timings.get("adapter_ready_ms")
        row.first_token_ms = timings.get("first_token_ms")
        row.total_ms = timings.get("total_ms")
        row.gpu_ms = final.get("gpu_ms")
        row.error_code = (error.get("code") or "")[:64]
        row.error_message = (error.get("message") or "")[:500]
        guarantee = settings.VAJRA_TIER_READY_MS[row.tier]
        row.guarantee_broken = row.adapter_version_id is not None and (row.adapter_ready_ms or 0) > guarantee
        row.finished_at = timezone.now()
        row.save()
    return row
