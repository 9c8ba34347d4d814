"""What the control plane needs to know about runtime nodes."""

from django.core.exceptions import ImproperlyConfigured

from .env import VAR_DIR, env_choice, env_float, env_int, env_list, env_str

# Runtime nodes heartbeat this often; a node silent for NODE_DOWN_AFTER_MISSED beats is marked down.
VAJRA_HEARTBEAT_SECONDS = env_int("VAJRA_HEARTBEAT_SECONDS", 5, minimum=1)
VAJRA_NODE_DOWN_AFTER_MISSED = env_int("VAJRA_NODE_DOWN_AFTER_MISSED", 3, minimum=1)
# A lost node's request is sent to another node until this many attempts (fleet/failover.py).
VAJRA_MAX_ATTEMPTS = env_int("VAJRA_MAX_ATTEMPTS", 3, minimum=1)
# How long a request's Redis Stream (and its failover attempt key) lives; the same variable as the runtime's.
VAJRA_STREAM_TTL_SECONDS = env_int("VAJRA_STREAM_TTL_SECONDS", 3600, minimum=60)
# A request no node finished within this long is failed (node_timeout) by control.inference_expire_stale, run by
# beat every VAJRA_REQUEST_SWEEP_SECONDS: a broker that restarted without its data may have lost its task or its
# answer. Longer than a runtime task may run (its hard limit is 330 s) plus a queue wait.
VAJRA_REQUEST_TIMEOUT_SECONDS = env_int("VAJRA_REQUEST_TIMEOUT_SECONDS", 900, minimum=5)
VAJRA_REQUEST_SWEEP_SECONDS = env_int("VAJRA_REQUEST_SWEEP_SECONDS", 60, minimum=1)
# The same sweep records, from its Redis Stream, the final event of a request still active this long after it began:
# its node wrote it, but the control task carrying it was lost (serving.finals.finals_from_streams).
VAJRA_FINAL_RECONCILE_SECONDS = env_int("VAJRA_FINAL_RECONCILE_SECONDS", 30, minimum=1)
VAJRA_MODEL_STORE = env_str("VAJRA_MODEL_STORE", str(VAR_DIR / "models"))
VAJRA_DEFAULT_BASE_MODEL = env_str("VAJRA_BASE_MODEL", "smollm2-135m-instruct")
# Staff import base models from paths under this folder (or s3:// URLs); nothing outside it is read for them.
VAJRA_MODEL_IMPORT_DIR = env_str("VAJRA_MODEL_IMPORT_DIR", str(VAR_DIR / "imports"))

# Adapter-ready guarantees per tier, in ms, after the tiered-pricing paper (hot starts ~10 ms, warm under
# 100 ms, cold under 2 s to fetch); SLO credits are paid when a request breaks its tier's.
VAJRA_TIER_READY_MS = {"hot": 10, "warm": 100, "cold": 2000}
# Placement (VAJRA paper, Algorithm 2): score = alpha * load + beta * locality + gamma * tenant affinity.
VAJRA_PLACEMENT_WEIGHTS = (
    env_float("VAJRA_PLACEMENT_ALPHA", 0.5, minimum=0, maximum=1),
    env_float("VAJRA_PLACEMENT_BETA", 0.3, minimum=0, maximum=1),
    env_float("VAJRA_PLACEMENT_GAMMA", 0.2, minimum=0, maximum=1),
)
# Share of a node's device slots that hot (pinned) adapters may take; the rest serves everyone else.
VAJRA_HOT_SLOT_SHARE = env_float("VAJRA_HOT_SLOT_SHARE", 0.5, minimum=0, maximum=1)
VAJRA_CONTEXT_LENGTH_DEFAULT = env_int("VAJRA_CONTEXT_LENGTH_DEFAULT", 8192, minimum=16)

# Quotas are per plan (billing.PricePlan, read by billing.plans.plan_limits): these are only the numbers a
# new plan starts with. The standard plan made by migration billing 0002 has 50 / 16 / 2048 / 50 MiB / 50,000.
VAJRA_MAX_ADAPTERS_PER_TENANT = env_int("VAJRA_MAX_ADAPTERS_PER_TENANT", 50, minimum=1)
VAJRA_MAX_CONCURRENT_REQUESTS = env_int("VAJRA_MAX_CONCURRENT_REQUESTS", 16, minimum=1)
VAJRA_MAX_TOKENS_CAP = env_int("VAJRA_MAX_TOKENS_CAP", 2048, minimum=1)
# Training datasets (JSONL): the largest file and the most records one upload may have (a new plan's default).
VAJRA_DATASET_MAX_BYTES = env_int("VAJRA_DATASET_MAX_BYTES", 50 << 20, minimum=1)
VAJRA_DATASET_MAX_RECORDS = env_int("VAJRA_DATASET_MAX_RECORDS", 50_000, minimum=1)
# Bytes of adapter weights and datasets one tenant may keep (a new plan's default): 10 GiB, room for a hundred
# large adapters or a few hundred datasets at the standard plan's per-file cap.
VAJRA_STORAGE_MAX_BYTES = env_int("VAJRA_STORAGE_MAX_BYTES", 10 << 30, minimum=1)

# Where adapter files live: the filesystem under var/objects by default, or S3 through django-storages.
VAJRA_ADAPTER_STORAGE = env_choice("VAJRA_ADAPTER_STORAGE", "filesystem", {"filesystem", "s3"})
if VAJRA_ADAPTER_STORAGE == "s3":
    _adapter_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {"bucket_name": env_str("VAJRA_S3_BUCKET", required=True),
                    "endpoint_url": env_str("VAJRA_S3_ENDPOINT_URL"), "file_overwrite": False},
    }
else:
    _adapter_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage",
                        "OPTIONS": {"location": str(VAR_DIR / "objects")}}
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                "OPTIONS": {"location": str(VAR_DIR / "media")}},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "adapters": _adapter_storage,
}
# Request bodies are refused past a route's limit before anything parses them (vajra.body_limits): the upload routes
# (adapters, datasets) take VAJRA_MAX_UPLOAD_BYTES, every other route VAJRA_MAX_BODY_BYTES. An adapter upload is
# capped again, tighter, by its base model's largest legal adapter (adapters.uploads.upload_cap).
VAJRA_MAX_UPLOAD_BYTES = env_int("VAJRA_MAX_UPLOAD_BYTES", 256 << 20, minimum=1 << 20)
VAJRA_MAX_BODY_BYTES = env_int("VAJRA_MAX_BODY_BYTES", 2 << 20, minimum=64 << 10)
# Form fields and JSON read through request.body stay within the small limit; uploaded files always stream to a
# temporary file on disk (never whole into memory), and the ASGI handler spools a body past this size to disk.
DATA_UPLOAD_MAX_MEMORY_SIZE = VAJRA_MAX_BODY_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = 1 << 20
FILE_UPLOAD_HANDLERS = ["django.core.files.uploadhandler.TemporaryFileUploadHandler"]


def _url_allow(name):
    """Hosts (``example.com``, ``*.example.com``, an IP address) and ``s3://bucket`` entries, comma-separated."""
    entries = env_list(name, [])
    for entry in entries:
        plain = entry[len("s3://"):] if entry.startswith("s3://") else entry.removeprefix("*.")
        if not plain or "://" in plain or any(c in plain for c in "/?#@ "):
            raise ImproperlyConfigured(f"{name}: {entry!r} must be a host name, *.domain, an IP address or "
                                       "s3://bucket.")
    return entries


# Adapters imported by URL (adapters.url_import): the hosts and buckets tenants may name. Empty (the default): the
# feature is off and says so. Hosts in ..._ALLOW_PRIVATE may resolve to loopback, private or link-local addresses
# (an internal mirror); any other host that does is refused. The body is capped like an upload.
VAJRA_ADAPTER_URL_ALLOW = _url_allow("VAJRA_ADAPTER_URL_ALLOW")
VAJRA_ADAPTER_URL_ALLOW_PRIVATE = _url_allow("VAJRA_ADAPTER_URL_ALLOW_PRIVATE")
VAJRA_ADAPTER_URL_TIMEOUT_S = env_float("VAJRA_ADAPTER_URL_TIMEOUT_S", 600.0, minimum=0.1)  # the whole fetch
VAJRA_ADAPTER_URL_IDLE_TIMEOUT_S = env_float("VAJRA_ADAPTER_URL_IDLE_TIMEOUT_S", 30.0, minimum=0.1)  # one read
# A bundle of extra CA certificates for https:// fetches (a private CA); unset: the system's.
VAJRA_URL_FETCH_CA_FILE = env_str("VAJRA_URL_FETCH_CA_FILE")
# Imports one tenant may have queued or running at once.
VAJRA_ADAPTER_IMPORTS_ACTIVE_MAX = env_int("VAJRA_ADAPTER_IMPORTS_ACTIVE_MAX", 4, minimum=1)
