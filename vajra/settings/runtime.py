"""What the control plane needs to know about runtime nodes."""

from .env import VAR_DIR, env_int, env_str

# Runtime nodes heartbeat this often; a node silent for NODE_DOWN_AFTER_MISSED beats is marked down.
VAJRA_HEARTBEAT_SECONDS = env_int("VAJRA_HEARTBEAT_SECONDS", 5, minimum=1)
VAJRA_NODE_DOWN_AFTER_MISSED = env_int("VAJRA_NODE_DOWN_AFTER_MISSED", 3, minimum=1)
VAJRA_MODEL_STORE = env_str("VAJRA_MODEL_STORE", str(VAR_DIR / "models"))
VAJRA_DEFAULT_BASE_MODEL = env_str("VAJRA_BASE_MODEL", "smollm2-135m-instruct")
