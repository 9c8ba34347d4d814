"""The immutable generation request a node receives (from the ``infer`` task's JSON) and its checks."""

from dataclasses import asdict, dataclass, field

from .contract import AdapterRef, ContractError

# The bounds of a request's sampling parameters, for the node and the control plane alike (the web refuses
# past them with a 400 before a request is written).
MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 64
MAX_TOKENS = 8192
MAX_TEMPERATURE = 2
MAX_TOP_K = 1_000_000  # past any served vocabulary: a top_k that large keeps every token
MAX_SEED = 2 ** 63 - 1  # torch.Generator.manual_seed takes at most 64 bits; a non-negative int64 fits every store


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

        if not is_int(self.max_tokens) or not 1 <= self.max_tokens <= MAX_TOKENS:
            bad("max_tokens", f"must be an integer in 1..{MAX_TOKENS}")
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature <= MAX_TEMPERATURE:
            bad("temperature", f"must be a number in 0..{MAX_TEMPERATURE}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            bad("top_p", "must be a number in (0, 1]")
        if not is_int(self.top_k) or not 0 <= self.top_k <= MAX_TOP_K:
            bad("top_k", f"must be an integer in 0..{MAX_TOP_K}")
        if self.seed is not None and (not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            bad("seed", f"must be an integer in 0..{MAX_SEED}")
        stops = self.stop
        if not isinstance(stops, (list, tuple)) or len(stops) > MAX_STOP_SEQUENCES or not all(
                isinstance(s, str) and 0 < len(s) <= MAX_STOP_LENGTH for s in stops):
            bad("stop", f"must be at most {MAX_STOP_SEQUENCES} non-empty strings of at most {MAX_STOP_LENGTH} chars")
        object.__setattr__(self, "stop", tuple(stops))


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt: str = ""  # raw text, or
    messages: tuple = ()  # chat messages [{"role", "content"}], rendered with the base's chat template
    adapter: AdapterRef | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    tenant: str = ""  # the tenant's id ("t42"), never reused or renamed: prefix cache entries and admission turns are
    # its own; empty: never cached
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
