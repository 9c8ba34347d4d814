"""Runtime nodes as the control plane knows them, from their heartbeats."""

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
        ordering = ["name"]

    def __str__(self):
        return f"{self.name} ({self.status})"

    @property
    def queue(self):
        return f"node.{self.name}"


class BaseModel(models.Model):
    """A base model the platform serves, as the runtime's model manifest describes it."""

    name = models.CharField(max_length=100, unique=True)  # the model_id in /v1/models/{model_id}/...
    aliases = models.JSONField(default=list, blank=True)  # e.g. the Hugging Face id adapters may name
    architecture = models.JSONField(default=dict)  # layers, hidden size, heads, ...: what adapters must fit
    context_length = models.PositiveIntegerField(default=2048)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.name


class Adapter(models.Model):
    """A tenant's LoRA adapter for one base model. Versions are immutable; deleting stops serving it but
    keeps the rows that invoices and request history point at."""

    COLD, WARM, HOT = "cold", "warm", "hot"
    TIER_CHOICES = [(COLD, "Cold"), (WARM, "Warm"), (HOT, "Hot")]

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="adapters")
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="adapters")
    name = models.CharField(max_length=64)
    description = models.CharField(max_length=500, blank=True)
    tier = models.CharField(max_length=8, choices=TIER_CHOICES, default=COLD)
    current_version = models.ForeignKey("AdapterVersion", on_delete=models.PROTECT, null=True, blank=True,
                                        related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], condition=models.Q(deleted_at__isnull=True),
                                    name="adapter_name_unique_per_tenant"),
        ]

    def __str__(self):
        return f"{self.tenant.slug}/{self.name}"


class AdapterVersion(models.Model):
    """One immutable upload (or training result) of an adapter: never overwritten."""

    VALIDATING, READY, FAILED = "validating", "ready", "failed"
    UPLOAD, TRAINING = "upload", "training"

    adapter = models.ForeignKey(Adapter, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=12, default=VALIDATING,
                              choices=[(VALIDATING, "Validating"), (READY, "Ready"), (FAILED, "Failed")])
    source = models.CharField(max_length=10, default=UPLOAD, choices=[(UPLOAD, "Upload"), (TRAINING, "Training")])
    sha256 = models.CharField(max_length=64)  # of adapter_model.safetensors
    size_bytes = models.BigIntegerField()
    rank = models.PositiveIntegerField()
    alpha = models.FloatField()
    target_modules = models.JSONField(default=list)
    dtype = models.CharField(max_length=8)
    storage_key = models.CharField(max_length=300)  # folder in object storage holding the two files
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey("tenants.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["adapter", "number"], name="adapter_version_unique")]
        ordering = ["adapter", "-number"]

    def __str__(self):
        return f"{self.adapter}@v{self.number}"


class InferenceRequest(models.Model):
    """One inference request: what was asked, where it ran, and what it cost (from the runtime's final event)."""

    QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
    STATUS_CHOICES = [(s, s.capitalize()) for s in (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)]
    TERMINAL = (SUCCEEDED, FAILED, CANCELLED)

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
    # Failover (inference/failover.py): the attempt now current, and the task's payload, kept only until the
    # request ends so that a lost node's request can be sent again (the prompt is not kept after that).
    attempt = models.PositiveSmallIntegerField(default=1)
    payload = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"]), models.Index(fields=["tenant", "tier"]),
                   models.Index(fields=["node", "status"])]

    def __str__(self):
        return self.id


class ScaleUpSignal(models.Model):
    """Placement found no node for a base model (the paper's ProvisionNewGPU): an autoscaler's input."""

    base_model = models.CharField(max_length=100)
    reason = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self):
        return f"{self.base_model}: {self.reason}"


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
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
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
    node = models.CharField(max_length=63, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
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
        ordering = ["job", "step"]
        constraints = [models.UniqueConstraint(fields=["job", "step"], name="training_checkpoint_unique")]

    def __str__(self):
        return f"{self.job_id} checkpoint {self.step}"
