"""The base-model catalog, tenants' adapters and their immutable versions."""

from django.db import models


class BaseModel(models.Model):
    """A base model the platform serves, as the runtime's model manifest describes it."""

    name = models.CharField(max_length=100, unique=True)  # the model_id in /v1/models/{model_id}/...
    aliases = models.JSONField(default=list, blank=True)  # e.g. the Hugging Face id adapters may name
    architecture = models.JSONField(default=dict)  # layers, hidden size, heads, ...: what adapters must fit
    context_length = models.PositiveIntegerField(default=2048)
    # the model store's manifest as imported: source (kind, uri, sha256, bytes) and dtype variants (bytes, sha256)
    source = models.JSONField(default=dict, blank=True)
    variants = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "inference_basemodel"

    def __str__(self):
        return self.name


class BaseModelImport(models.Model):
    """One run of the model store's import (``python -m gpu_runtime.model_store import --source``), started by
    staff; its progress is read from the JSON file the import writes."""

    RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"

    name = models.CharField(max_length=64)  # the base model's name once imported
    source = models.CharField(max_length=1000)  # a path under VAJRA_MODEL_IMPORT_DIR, or an s3:// URL
    status = models.CharField(max_length=10, default=RUNNING,
                              choices=[(RUNNING, "Running"), (SUCCEEDED, "Succeeded"), (FAILED, "Failed")])
    phase = models.CharField(max_length=40, default="starting")
    percent = models.PositiveSmallIntegerField(default=0)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey("tenants.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"import of {self.name} ({self.status})"


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
        db_table = "inference_adapter"
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
        db_table = "inference_adapterversion"
        constraints = [models.UniqueConstraint(fields=["adapter", "number"], name="adapter_version_unique")]
        ordering = ["adapter", "-number"]

    def __str__(self):
        return f"{self.adapter}@v{self.number}"




class AdapterImport(models.Model):
    """An adapter fetched from a URL by a control worker: queued -> fetching -> succeeded | failed. On success it
    is an ordinary new version (``version``); a failure keeps the reason and writes no adapter, version or file."""

    QUEUED, FETCHING, SUCCEEDED, FAILED = "queued", "fetching", "succeeded", "failed"
    STATUS_CHOICES = [(s, s.capitalize()) for s in (QUEUED, FETCHING, SUCCEEDED, FAILED)]
    ACTIVE = (QUEUED, FETCHING)

    id = models.CharField(max_length=40, primary_key=True)  # imp_<hex>
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="adapter_imports")
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="+")
    name = models.CharField(max_length=64)  # the adapter the version goes to (created on its first version)
    description = models.CharField(max_length=500, blank=True)
    url = models.CharField(max_length=2000)
    status = models.CharField(max_length=10, choices=STATUS_CHOICES, default=QUEUED)
    bytes_received = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(null=True, blank=True)  # None while the source has not said
    version = models.ForeignKey(AdapterVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=2000, blank=True)
    error_status = models.PositiveSmallIntegerField(null=True, blank=True)
    created_by = models.ForeignKey("tenants.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    api_key = models.ForeignKey("tenants.APIKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.id} {self.url[:60]}"
