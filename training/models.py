"""Datasets and fine-tuning jobs with their events, metered steps and checkpoints."""

from django.db import models

from adapters.models import Adapter, AdapterVersion, BaseModel
from fleet.models import Node


class Dataset(models.Model):
    """A tenant's JSONL training file, validated line by line before it is stored (never half-written)."""

    CHAT, COMPLETION = "chat", "completion"

    id = models.CharField(max_length=40, primary_key=True)  # ds_<hex>
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="datasets")
    name = models.CharField(max_length=200)  # the uploaded file's name
    format = models.CharField(max_length=12, choices=[(CHAT, "Chat messages"), (COMPLETION, "Prompt/completion")])
    records = models.PositiveIntegerField()
    size_bytes = models.BigIntegerField()
    tokens = models.BigIntegerField(default=0)  # counted with the base model's tokenizer when the web has it
    tokens_exact = models.BooleanField(default=False)  # False: an upper bound (UTF-8 bytes)
    sha256 = models.CharField(max_length=64)
    storage_key = models.CharField(max_length=300)
    created_by = models.ForeignKey("tenants.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "inference_dataset"
        ordering = ["-created_at"]

    def __str__(self):
        return self.id


class TrainingJob(models.Model):
    """A fine-tuning job (OpenAI's statuses): validating_files -> queued -> running -> succeeded | failed |
    cancelled. It trains ``adapter`` on the node's resident base, starting from ``base_version`` when the
    adapter has one, and on success becomes ``result_version`` (the new current version, swapped atomically)."""

    VALIDATING, QUEUED, RUNNING = "validating_files", "queued", "running"
    SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
    STATUS_CHOICES = [(s, s.replace("_", " ").capitalize())
                      for s in (VALIDATING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)]
    ACTIVE = (VALIDATING, QUEUED, RUNNING)
    TERMINAL = (SUCCEEDED, FAILED, CANCELLED)

    id = models.CharField(max_length=40, primary_key=True)  # ftjob_<hex>: the idempotency key end to end
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="training_jobs")
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="+")
    adapter = models.ForeignKey(Adapter, on_delete=models.PROTECT, related_name="training_jobs")
    base_version = models.ForeignKey(AdapterVersion, on_delete=models.PROTECT, null=True, blank=True,
                                     related_name="+")
    result_version = models.ForeignKey(AdapterVersion, on_delete=models.PROTECT, null=True, blank=True,
                                       related_name="+")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="jobs")
    # measured after each epoch (eval_loss of the epoch's last step) when given
    validation_dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, null=True, blank=True,
                                           related_name="validation_jobs")
    # learning_rate, epochs, batch_size, micro_batch_size, max_steps, seed, rank, alpha, target_modules
    hyperparameters = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=STATUS_CHOICES, default=VALIDATING)
    node = models.ForeignKey(Node, on_delete=models.SET_NULL, null=True, blank=True, related_name="training_jobs")
    total_steps = models.PositiveIntegerField(default=0)
    trained_steps = models.PositiveIntegerField(default=0)  # metered optimizer steps
    trainable_params = models.BigIntegerField(default=0)
    estimated_gradients = models.BigIntegerField(default=0)
    estimated_cost_micro_usd = models.BigIntegerField(default=0)
    last_loss = models.FloatField(null=True, blank=True)
    last_eval_loss = models.FloatField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=2000, blank=True)
    api_key = models.ForeignKey("tenants.APIKey", on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="+")
    created_by = models.ForeignKey("tenants.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "inference_trainingjob"
        ordering = ["-created_at"]
        constraints = [
            # a second running job on the same adapter is refused by the database too (409 in the API)
            models.UniqueConstraint(fields=["adapter"], condition=models.Q(status__in=["validating_files", "queued",
                                                                                        "running"]),
                                    name="one_active_training_job_per_adapter"),
        ]

    def __str__(self):
        return self.id


class TrainingEvent(models.Model):
    """A job's event log (OpenAI's fine-tuning events): status changes, per-step loss, checkpoints, errors."""

    INFO, WARNING, ERROR = "info", "warning", "error"

    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="events")
    level = models.CharField(max_length=8, choices=[(INFO, "Info"), (WARNING, "Warning"), (ERROR, "Error")],
                             default=INFO)
    message = models.CharField(max_length=2000)
    step = models.PositiveIntegerField(null=True, blank=True)
    loss = models.FloatField(null=True, blank=True)
    eval_loss = models.FloatField(null=True, blank=True)  # the validation file's loss after the step's epoch
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "inference_trainingevent"
        ordering = ["id"]

    def __str__(self):
        return f"{self.job_id} {self.level}: {self.message[:60]}"


class TrainingStep(models.Model):
    """The metering record of one optimizer step: keyed by (job, step), so a step is never billed twice even
    when a job resumes from a checkpoint and recomputes the steps after it."""

    job = models.ForeignKey(TrainingJob, on_delete=models.PROTECT, related_name="steps")
    step = models.PositiveIntegerField()
    gradients = models.BigIntegerField()  # trainable elements x the tokens of the step's records
    micro_batches = models.PositiveIntegerField()
    tokens = models.PositiveIntegerField()
    compute_ms = models.FloatField()  # forward + backward + optimizer
    loss = models.FloatField()
    learning_rate = models.FloatField(null=True, blank=True)  # the rate the optimizer step ran at
    eval_loss = models.FloatField(null=True, blank=True)  # the validation file's loss after it (an epoch's last)
    node = models.CharField(max_length=63, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "inference_trainingstep"
        ordering = ["job", "step"]
        constraints = [models.UniqueConstraint(fields=["job", "step"], name="training_step_unique")]

    def __str__(self):
        return f"{self.job_id} step {self.step}"


class TrainingCheckpoint(models.Model):
    """LoRA weights and optimizer state after ``step``, in object storage; a resumed job starts from the last."""

    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.PositiveIntegerField()
    uri = models.CharField(max_length=500)
    loss = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "inference_trainingcheckpoint"
        ordering = ["job", "step"]
        constraints = [models.UniqueConstraint(fields=["job", "step"], name="training_checkpoint_unique")]

    def __str__(self):
        return f"{self.job_id} checkpoint {self.step}"
