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
MAX_CHOICES = 8  # n: choices of one request, each a row of the batch
MAX_TOP_LOGPROBS = 20  # alternatives reported per token (OpenAI's chat bound)
MAX_PENALTY = 2  # presence_penalty and frequency_penalty in [-2, 2], as OpenAI's
MAX_REPETITION_PENALTY = 10  # repetition_penalty in (0, 10]; 1 is off
MAX_LOGIT_BIAS = 100  # a logit_bias value in [-100, 100], as OpenAI's
MAX_LOGIT_BIAS_ENTRIES = 300


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: tuple = ()
    seed: int | None = None
    n: int = 1  # choices: row i samples with its own generator (gpu_runtime.sampling.choice_seed)
    logprobs: int | None = None  # None: none; k: each token's logprob and its k most likely alternatives
    presence_penalty: float = 0.0  # OpenAI's, over the generated tokens
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # transformers' and vLLM's, over the prompt's and the generated tokens
    logit_bias: dict = field(default_factory=dict)  # token id -> bias added to its logit
    min_tokens: int = 0  # EOS and stop strings are suppressed until this many tokens were generated

    @property
    def shapes_logits(self):
        """Whether the row's logits are processed before sampling (gpu_runtime.sampling.LogitsOptions)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1
                    or self.logit_bias or self.min_tokens)

    def __post_init__(self):
        def bad(name, why):
            raise ContractError(f"{name}: {why}")

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
        if not is_int(self.n) or not 1 <= self.n <= MAX_CHOICES:
            bad("n", f"must be an integer in 1..{MAX_CHOICES}")
        if self.logprobs is not None and (not is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_TOP_LOGPROBS):
            bad("logprobs", f"must be null or an integer in 0..{MAX_TOP_LOGPROBS}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not is_number(getattr(self, name)) or not -MAX_PENALTY <= getattr(self, name) <= MAX_PENALTY:
                bad(name, f"must be a number in -{MAX_PENALTY}..{MAX_PENALTY}")
        if not is_number(self.repetition_penalty) or not 0 < self.repetition_penalty <= MAX_REPETITION_PENALTY:
            bad("repetition_penalty", f"must be a number in (0, {MAX_REPETITION_PENALTY}]")
        if not is_int(self.min_tokens) or not 0 <= self.min_tokens <= self.max_tokens:
            bad("min_tokens", "must be an integer in 0..max_tokens")
        object.__setattr__(self, "logit_bias", logit_bias_of(self.logit_bias))
        stops = self.stop
        if not isinstance(stops, (list, tuple)) or len(stops) > MAX_STOP_SEQUENCES or not all(
                isinstance(s, str) and 0 < len(s) <= MAX_STOP_LENGTH for s in stops):
            bad("stop", f"must be at most {MAX_STOP_SEQUENCES} non-empty strings of at most {MAX_STOP_LENGTH} chars")
        object.__setattr__(self, "stop", tuple(stops))


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):  # NaN fails every range check it meets
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def logit_bias_of(value):
    """``{token id: bias}`` from a request's logit_bias (JSON object keys are strings: "50256" or 50256), each id a
    non-negative integer and each bias a number in [-MAX_LOGIT_BIAS, MAX_LOGIT_BIAS]; whether the ids are in the
    vocabulary is the engine's check, as only it knows the vocabulary."""
    if not isinstance(value, dict) or len(value) > MAX_LOGIT_BIAS_ENTRIES:
        raise ContractError(f"logit_bias: must be an object of at most {MAX_LOGIT_BIAS_ENTRIES} token ids")
    biases = {}
    for key, bias in value.items():
        token = int(key) if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 18 else key
        if not is_int(token) or token < 0:
            raise ContractError(f"logit_bias: {key!r} is not a token id")
        if not is_number(bias) or not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:  # NaN fails the range
            raise ContractError(f"logit_bias: the bias of token {token} must be a number in "
                                f"-{MAX_LOGIT_BIAS}..{MAX_LOGIT_BIAS}")
        biases[token] = float(bias)
    return biases


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
