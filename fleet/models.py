"""Runtime nodes as the control plane knows them, from their heartbeats, and placement's scale-up signals."""

from django.db import models


class Node(models.Model):
    """A runtime worker (one per GPU or CPU box) serving Celery queue ``node.<name>``."""

    UP, DOWN = "up", "down"

    name = models.CharField(max_length=63, unique=True)
    status = models.CharField(max_length=8, choices=[(UP, "Up"), (DOWN, "Down")], default=UP)
    base_model = models.CharField(max_length=100, blank=True)
    device = models.CharField(max_length=40, blank=True)
    # The last heartbeat as sent (see gpu_runtime.contract.Heartbeat): memory, tiers, queue depth, ...
    state = models.JSONField(default=dict)
    started_at = models.DateTimeField(null=True)
    last_heartbeat_at = models.DateTimeField()

    class Meta:
        db_table = "inference_node"
        ordering = ["name"]

    def __str__(self):
        return f"{self.name} ({self.status})"

    @property
    def queue(self):
        return f"node.{self.name}"


class ScaleUpSignal(models.Model):
    """Placement found no node for a base model (the paper's ProvisionNewGPU): an autoscaler's input."""

    base_model = models.CharField(max_length=100)
    reason = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        db_table = "inference_scaleupsignal"

    def __str__(self):
        return f"{self.base_model}: {self.reason}"
