"""Inference requests: what was asked, where it ran, and what it cost."""

from django.db import models

from adapters.models import Adapter, AdapterVersion, BaseModel
from billing import ledger
from fleet.models import Node


class InferenceRequest(models.Model):
    """One inference request: what was asked, where it ran, and what it cost (from the runtime's final event)."""

    QUEUED, RUNNING = "queued", "running"
    SUCCEEDED, FAILED, CANCELLED = ledger.SUCCEEDED, ledger.FAILED, ledger.CANCELLED  # billed by these
    STATUS_CHOICES = [(s, s.capitalize()) for s in (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)]
    TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
    ACTIVE = (QUEUED, RUNNING)
    # Who brought the final event that ended the request (serving.finals.SOURCES): the node's control task, or a
    # fallback that found it on the request's stream, or the control plane's own end of it.
    FINAL_SOURCES = ("control_task", "stream_sweep", "throttle_retry", "failover", "expiry", "dispatch")

    id = models.CharField(max_length=40, primary_key=True)  # req_<hex>: the idempotency key end to end
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="inference_requests")
    api_key = models.ForeignKey("tenants.APIKey", on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="+")
    user = models.ForeignKey("tenants.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="+")
    adapter_version = models.ForeignKey(AdapterVersion, on_delete=models.PROTECT, null=True, blank=True,
                                        related_name="requests")
    tier = models.CharField(max_length=8, choices=Adapter.TIER_CHOICES)
    api = models.CharField(max_length=16, default="infer")  # infer, chat, completions, playground
    node = models.ForeignKey(Node, on_delete=models.SET_NULL, null=True, blank=True, related_name="requests")
    status = models.CharField(max_length=10, choices=STATUS_CHOICES, default=QUEUED)
    max_tokens = models.PositiveIntegerField()
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    finish_reason = models.CharField(max_length=12, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    queued_ms = models.FloatField(null=True)
    adapter_ready_ms = models.FloatField(null=True)
    first_token_ms = models.FloatField(null=True)
    total_ms = models.FloatField(null=True)
    gpu_ms = models.FloatField(null=True)
    guarantee_broken = models.BooleanField(default=False)  # adapter-ready time over the tier's guarantee
    # Failover (fleet/failover.py): the attempt now current, and the task's payload, kept only until the
    # request ends so that a lost node's request can be sent again (the prompt is not kept after that).
    attempt = models.PositiveSmallIntegerField(default=1)
    payload = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    final_source = models.CharField(max_length=16, blank=True, choices=[(s, s) for s in FINAL_SOURCES])

    class Meta:
        db_table = "inference_inferencerequest"
        indexes = [models.Index(fields=["tenant", "-created_at"]), models.Index(fields=["tenant", "tier"]),
                   models.Index(fields=["node", "status"])]

    def __str__(self):
        return self.id
