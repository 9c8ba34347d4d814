"""The contract between the control plane (Django) and runtime nodes: JSON messages only.

Both sides import this module; it imports neither Django nor torch.

Queues
- ``node.<name>``: tasks for one runtime node (inference, cancel, prefetch, tier moves: later issues).
- ``control``: tasks for the control worker. A node sends ``control.node_heartbeat`` with a Heartbeat
  every ``VAJRA_HEARTBEAT_SECONDS``; the control plane marks a node down after
  ``VAJRA_NODE_DOWN_AFTER_MISSED`` silent beats.
"""

from dataclasses import asdict, dataclass, field, fields

CONTRACT_VERSION = 1
CONTROL_QUEUE = "control"
TASK_NODE_HEARTBEAT = "control.node_heartbeat"


def node_queue(node_name):
    return f"node.{node_name}"


class ContractError(ValueError):
    """A message that does not follow the contract."""


@dataclass(frozen=True)
class Heartbeat:
    node: str
    started_at: str  # ISO 8601, UTC
    sent_at: str
    base_model: str
    device: str
    dtype: str
    model_loaded: bool
    memory: dict = field(default_factory=dict)  # bytes: {"device_allocated", "host_rss", ...}
    adapters: dict = field(default_factory=dict)  # tier -> count
    queue_depth: int = 0
    busy_ratio: float = 0.0
    version: int = CONTRACT_VERSION

    def to_json(self):
        return asdict(self)

    @classmethod
    def from_json(cls, payload):
        if not isinstance(payload, dict):
            raise ContractError("A heartbeat is a JSON object.")
        names = {f.name for f in fields(cls)}
        unknown = set(payload) - names
        if unknown:
            raise ContractError(f"Unknown heartbeat fields: {sorted(unknown)}")
        try:
            beat = cls(**payload)
        except TypeError as exc:
            raise ContractError(f"Bad heartbeat: {exc}") from None
        if not isinstance(beat.node, str) or not beat.node:
            raise ContractError("Heartbeat without a node name.")
        return beat
