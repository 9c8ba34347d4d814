"""The immutable inference request a node receives (from the ``infer`` task's JSON) and its checks."""

from dataclasses import asdict, dataclass, field

from .contract import ContractError

MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 64


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: tuple = ()
    seed: int | None = None

    def __post_init__(self):
        def bad(name, why):
            raise ContractError(f"{name}: {why}")

        def is_int(value):
            return isinstance(value, int) and not isinstance(value, bool)

        if not is_int(self.max_tokens) or not 1 <= self.max_tokens <= 8192:
            bad("max_tokens", "must be an integer in 1..8192")
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature <= 2:
            bad("temperature", "must be a number in 0..2")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            bad("top_p", "must be a number in (0, 1]")
        if not is_int(self.top_k) or self.top_k < 0:
            bad("top_k", "must be a non-negative integer")
        if self.seed is not None and not is_int(self.seed):
            bad("seed", "must be an integer")
        stops = self.stop
        if not isinstance(stops, (list, tuple)) or len(stops) > MAX_STOP_SEQUENCES or not all(
                isinstance(s, str) and 0 < len(s) <= MAX_STOP_LENGTH for s in stops):
            bad("stop", f"must be at most {MAX_STOP_SEQUENCES} non-empty strings of at most {MAX_STOP_LENGTH} chars")
        object.__setattr__(self, "stop", tuple(stops))


@dataclass(frozen=True)
class AdapterRef:
    """Which adapter version to apply, and where its files are (object storage URI or local path)."""

    adapter_id: str
    version: int
    uri: str
    tier: str = "cold"


@dataclass(frozen=True)
class InferenceRequest:
    request_id: str
    prompt: str = ""  # raw text, or
    messages: tuple = ()  # chat messages [{"role", "content"}], rendered with the base's chat template
    adapter: AdapterRef | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    tenant: str = ""  # the tenant's slug: prefix cache entries and admission turns are its own; empty: never cached
    base_model: str = ""  # empty: whatever this node serves; else it must match
    attempt: int = 1  # > 1: sent again after the node running it was lost (contract.py, "Failover")

    @classmethod
    def from_json(cls, payload):
        if not isinstance(payload, dict) or not isinstance(payload.get("request_id"), str):
            raise ContractError("request_id: an inference request needs a string request_id")
        try:
            sampling = SamplingParams(**(payload.get("sampling") or {}))
            adapter = AdapterRef(**payload["adapter"]) if payload.get("adapter") else None
        except TypeError as exc:
            raise ContractError(f"sampling: {exc}") from None
        messages = payload.get("messages") or ()
        if not isinstance(messages, (list, tuple)) or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str)
                and m.get("role") in {"system", "user", "assistant"} for m in messages):
            raise ContractError("messages: each message needs a role (system, user, assistant) and string content")
        prompt = payload.get("prompt", "")
        if not isinstance(prompt, str) or (not prompt and not messages):
            raise ContractError("prompt: give a prompt string or messages")
        attempt = payload.get("attempt", 1)
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
            raise ContractError("attempt: a positive integer")
        return cls(request_id=payload["request_id"], prompt=prompt, messages=tuple(messages), adapter=adapter,
                   sampling=sampling, tenant=str(payload.get("tenant", "")),
                   base_model=str(payload.get("base_model") or ""), attempt=attempt)

    def to_json(self):
        return asdict(self)
