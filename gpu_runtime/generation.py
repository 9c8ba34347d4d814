"""The immutable generation request a node receives (from the ``infer`` task's JSON) and its checks."""

from dataclasses import asdict, dataclass, field

from .contract import AdapterRef, ContractError
from .grammar_spec import MAX_TOOLS, TOOL_NAME, Grammar

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


def _is_text(value):
    return isinstance(value, str)


def _is_call(call):
    """An earlier tool call in the conversation: {"id", "type": "function", "function": {"name", "arguments"}}."""
    return (isinstance(call, dict) and set(call) == {"id", "type", "function"} and _is_text(call["id"])
            and call["type"] == "function" and isinstance(call["function"], dict)
            and set(call["function"]) == {"name", "arguments"}
            and all(_is_text(v) for v in call["function"].values()))


def message_ok(message):
    """A chat message: system, user or assistant with string content; an assistant's may carry its tool calls,
    and a tool's result names the call it answers."""
    if not isinstance(message, dict) or not _is_text(message.get("content")):
        return False
    role, keys = message.get("role"), set(message)
    if role in ("system", "user") or (role == "assistant" and "tool_calls" not in message):
        return keys <= {"role", "content", "name"}
    if role == "assistant":
        calls = message["tool_calls"]
        return keys == {"role", "content", "tool_calls"} and isinstance(calls, list) and \
            0 < len(calls) <= MAX_TOOLS and all(_is_call(call) for call in calls)
    return role == "tool" and keys == {"role", "content", "tool_call_id"} and _is_text(message["tool_call_id"])


def tool_ok(tool):
    """A tool as the prompt shows it: {"name", "description" (text or null), "parameters" (a JSON schema)}."""
    return (isinstance(tool, dict) and set(tool) == {"name", "description", "parameters"}
            and _is_text(tool["name"]) and TOOL_NAME.match(tool["name"]) is not None
            and (tool["description"] is None or _is_text(tool["description"])) and isinstance(tool["parameters"], dict))


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt: str = ""  # raw text, or
    messages: tuple = ()  # chat messages (``message_ok``), rendered with the base's chat template
    tools: tuple = ()  # the tools the prompt shows (``tool_ok``), rendered by gpu_runtime.tool_prompt
    grammar: Grammar | None = None  # what the answer must follow (gpu_runtime.grammar_spec); None: free text
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
        if not isinstance(messages, (list, tuple)) or not all(message_ok(m) for m in messages):
            raise ContractError("messages: each message needs a role (system, user, assistant, tool) and string "
                                "content; an assistant's tool_calls and a tool's tool_call_id in OpenAI's shape")
        tools = payload.get("tools") or ()
        if not isinstance(tools, (list, tuple)) or len(tools) > MAX_TOOLS or not all(tool_ok(t) for t in tools):
            raise ContractError(f"tools: at most {MAX_TOOLS} of {{name, description, parameters}}")
        grammar = Grammar.from_json(payload["grammar"]) if payload.get("grammar") is not None else None
        prompt = payload.get("prompt", "")
        if not isinstance(prompt, str) or (not prompt and not messages):
            raise ContractError("prompt: give a prompt string or messages")
        attempt = payload.get("attempt", 1)
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
            raise ContractError("attempt: a positive integer")
        return cls(request_id=payload["request_id"], prompt=prompt, messages=tuple(messages), tools=tuple(tools),
                   grammar=grammar, adapter=adapter, sampling=sampling, tenant=str(payload.get("tenant", "")),
                   base_model=str(payload.get("base_model") or ""), attempt=attempt)

    def to_json(self):
        data = asdict(self)
        data["grammar"] = self.grammar.to_json() if self.grammar is not None else None
        return data
