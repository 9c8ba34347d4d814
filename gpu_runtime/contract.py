"""The contract between the control plane (Django) and runtime nodes: JSON messages only.

Both sides import this module; it imports neither Django nor torch.

Queues
- ``node.<name>``: tasks for one runtime node, by name: ``runtime.infer`` (a GenerationRequest as JSON, see
  gpu_runtime.generation), ``runtime.prefetch`` (an AdapterRef), ``runtime.set_tier`` (an AdapterRef, a tier),
  ``runtime.train`` (a TrainingSpec), ``runtime.ping``. The control plane builds each one with this module's
  ``*_message`` builders (a NodeMessage), never by hand. A request is cancelled through its cancel key, not a task.
- ``control``: tasks for the control worker. A node sends ``control.node_heartbeat`` with a Heartbeat
  every ``VAJRA_HEARTBEAT_SECONDS``; the control plane marks a node down after
  ``VAJRA_NODE_DOWN_AFTER_MISSED`` silent beats.

Token transport (Redis)
- ``vajra:stream:<request_id>``: a Redis Stream per request. Entries have fields ``type`` and ``data``
  (JSON): ``delta`` {"text", "index" (the choice, left out for 0), "logprobs" (a list of token entries, for a
  request with ``sampling.logprobs``: gpu_runtime.logprobs)}, then exactly one ``final`` (a Final:
  {"finish_reason": stop|length|cancelled|error, "usage": {"prompt_tokens", "completion_tokens", "cached_tokens"},
  "timings": {"queued_ms", "adapter_ready_ms", "first_token_ms", "total_ms"}, "gpu_ms", "error": {"code",
  "message"} | null, "choices": [{"index", "finish_reason", "completion_tokens"}] (for ``sampling.n`` > 1 only)}).
  A request of n choices runs n rows of the batch on one prefill: its usage counts the prompt once and the
  completion tokens of every choice, its gpu_ms is its rows' together. Streams expire after
  ``VAJRA_STREAM_TTL_SECONDS``. A reader resumes from the last entry id it saw.
- ``vajra:cancel:<request_id>``: set (any value) to cancel; the engine drops the row within one step. A request
  cancelled before it ran (its task still queued, or waiting for a row) ends ``cancelled`` with no token and
  ``gpu_ms`` 0.
- Failover: when the node running a request is lost, the control plane sends the request again to another
  node with ``attempt`` + 1 in its payload, sets ``vajra:attempt:<request_id>`` to that number first, and
  appends a ``retry`` entry {"attempt", "node", "reason"} to the request's stream: the next attempt's deltas
  start from the beginning of the answer. A node drops a task whose attempt is not the current one (a
  redelivery of a superseded attempt), and its engine drops a running row whose attempt was superseded within
  one step, writing nothing more. Entries of attempts after the first carry ``"attempt": n`` in their data;
  readers skip entries of an attempt older than the last ``retry`` they saw.

Training (gpu_runtime.training_spec.TrainingSpec is the job as JSON)
- ``runtime.train`` on ``node.<name>`` runs one job to its end (acks_late: a job whose node dies is redelivered
  and resumes from its last checkpoint under ``output_uri``). Its id is the idempotency key; cancel it with
  ``vajra:cancel:<job_id>``. Live progress goes to the Redis Stream ``vajra:stream:<job_id>`` (``progress``
  entries, then ``final``) for the dashboard.
- To ``control``: ``control.training_started`` (job_id, node, info), ``control.training_step`` (job_id, step,
  metering: {"gradients", "micro_batches", "tokens", "compute_ms", "loss", "learning_rate", "node"}, plus
  "eval_loss" on an epoch's last step when the job has a validation file) once per optimizer step, keyed by
  (job, step); ``control.training_checkpoint`` (job_id, step, uri, loss); ``control.training_finished``
  (job_id, result: {"status": succeeded|failed|cancelled, "error", "adapter": {"uri", "sha256", "size_bytes",
  "rank", "alpha", "target_modules", "dtype"} | null, "steps", "final_loss"}).
"""

from dataclasses import asdict, dataclass, field, fields, replace

CONTRACT_VERSION = 1
CONTROL_QUEUE = "control"
TASK_NODE_HEARTBEAT = "control.node_heartbeat"
TASK_INFER = "runtime.infer"
TASK_PREFETCH = "runtime.prefetch"  # (AdapterRef): to this node's disk and host RAM ahead of its requests
TASK_SET_TIER = "runtime.set_tier"  # (AdapterRef, tier): hot pinned in a device slot, warm host RAM, cold dropped
TASK_PING = "runtime.ping"  # (): a round trip through the node's queue, answering its heartbeat
TASK_INFERENCE_STARTED = "control.inference_started"  # (request_id, node name, attempt): queued -> running
TASK_INFERENCE_FINISHED = "control.inference_finished"  # (request_id, final event): usage for the ledger
TASK_TRAIN = "runtime.train"
TASK_TRAINING_STARTED = "control.training_started"
TASK_TRAINING_STEP = "control.training_step"
TASK_TRAINING_CHECKPOINT = "control.training_checkpoint"
TASK_TRAINING_FINISHED = "control.training_finished"
STREAM_PREFIX = "vajra:stream:"
CANCEL_PREFIX = "vajra:cancel:"
ATTEMPT_PREFIX = "vajra:attempt:"
FINISH_REASONS = ("stop", "length", "cancelled", "error")
SUPERSEDED = "superseded"  # never on a stream: what a node's engine says of an attempt failover replaced
TIERS = ("hot", "warm", "cold")


def superseded_result(attempt):
    """What a node's task answers for an attempt that failover replaced (never on a stream, never billed)."""
    return {"finish_reason": SUPERSEDED, "attempt": attempt}


def stream_key(request_id):
    return f"{STREAM_PREFIX}{request_id}"


def cancel_key(request_id):
    return f"{CANCEL_PREFIX}{request_id}"


def attempt_key(request_id):
    return f"{ATTEMPT_PREFIX}{request_id}"


def node_queue(node_name):
    return f"node.{node_name}"


def retry_entry(*, attempt, node, reason):
    """The data of the ``retry`` entry the control plane appends to a request's stream when failover sends it to
    another node as ``attempt`` (see "Failover" above)."""
    return {"attempt": attempt, "node": node, "reason": reason}


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
    prefix_cache: dict = field(default_factory=dict)  # blocks, bytes, tenants, lookups, hits, hit_rate, tokens_saved
    prefetch: dict = field(default_factory=dict)  # Algorithm 1: predictions, hits, hit_rate, actions
    base_architecture: dict = field(default_factory=dict)  # what adapters must fit (model manifest)
    context_length: int = 0
    resident: dict = field(default_factory=dict)  # tier -> ["adapter_id:version", ...] (placement locality)
    queue_depth: int = 0
    busy_ratio: float = 0.0
    max_batch: int = 0  # rows the engine runs at once: placement weighs a node's requests in flight against it
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


def adapter_id_of(pk):
    """An adapter's id between web and runtime: "a" and its catalog primary key."""
    return f"a{pk}"


def version_key(adapter_id, version):
    """The one name of an adapter version between web and runtime, "<adapter id>:<version>" (e.g. "a7:2"): the key
    of the runtime's adapter store, prefix cache and heartbeat lists, and of placement's pins."""
    return f"{adapter_id}:{int(version)}"


def split_version_key(key):
    """``version_key``'s parts: (adapter id, version)."""
    adapter_id, _, version = key.rpartition(":")
    return adapter_id, int(version)


@dataclass(frozen=True)
class AdapterRef:
    """Which adapter version to apply, and where its files are (object storage URI or local path)."""

    adapter_id: str
    version: int
    uri: str
    tier: str = "cold"

    @property
    def key(self):
        return version_key(self.adapter_id, self.version)

    def to_json(self):
        return asdict(self)

    @classmethod
    def from_json(cls, payload):
        try:
            return cls(**payload)
        except TypeError as exc:
            raise ContractError(f"adapter: {exc}") from None


class _Omitted:
    """A field that a message leaves out altogether (as opposed to sending it as null)."""

    def __repr__(self):
        return "OMITTED"

    def __bool__(self):
        return False


OMITTED = _Omitted()


def _present(obj):
    """``obj``'s fields in declaration order, without the omitted ones: the JSON object on the wire."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) is not OMITTED}


def _take(cls, payload, what):
    if not isinstance(payload, dict):
        raise ContractError(f"{what} is a JSON object.")
    names = {f.name for f in fields(cls)}
    unknown = set(payload) - names
    if unknown:
        raise ContractError(f"Unknown {what} fields: {sorted(unknown)}")
    return payload


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | _Omitted = OMITTED  # left out by a request that ended before it joined the batch

    def to_json(self):
        return _present(self)

    @classmethod
    def from_json(cls, payload):
        return cls(**_take(cls, payload, "usage"))


@dataclass(frozen=True)
class Timings:
    """Milliseconds from the request's arrival on the node; ``first_token_ms`` is null when no token came."""

    queued_ms: float | _Omitted = OMITTED
    adapter_ready_ms: float | _Omitted = OMITTED
    first_token_ms: float | None | _Omitted = OMITTED
    total_ms: float | _Omitted = OMITTED

    def to_json(self):
        return _present(self)

    @classmethod
    def from_json(cls, payload):
        return cls(**_take(cls, payload, "timings"))


@dataclass(frozen=True)
class FinalError:
    code: str
    message: str

    def to_json(self):
        return asdict(self)

    @classmethod
    def from_json(cls, payload):
        return cls(**_take(cls, payload, "error"))


@dataclass(frozen=True)
class Final:
    """A request's end, as its node reports it: the ``final`` entry of its stream, the ``infer`` task's result and
    the ``control.inference_finished`` argument. Fields a final leaves out stay out of its JSON (a request refused
    before it was read carries only its finish reason and error); ``attempt`` is there for attempts after the
    first."""

    finish_reason: str
    usage: Usage | _Omitted = OMITTED
    timings: Timings | _Omitted = OMITTED
    gpu_ms: float | _Omitted = OMITTED
    error: FinalError | None = None
    attempt: int | _Omitted = OMITTED
    choices: list | _Omitted = OMITTED  # each choice's end, for a request of several: {"index", "finish_reason",
    # "completion_tokens"}

    @classmethod
    def failed(cls, code, message, **fields_):
        return cls("error", error=FinalError(code, message), **fields_)

    def with_attempt(self, attempt):
        """This final for ``attempt``: the first attempt's finals carry no attempt number."""
        return self if attempt <= 1 else replace(self, attempt=attempt)

    def to_json(self):
        data = _present(self)
        for name in ("usage", "timings", "error"):
            if data.get(name) is not None:
                data[name] = data[name].to_json()
        return data

    @classmethod
    def from_json(cls, payload):
        data = dict(_take(cls, payload, "final"))
        if not isinstance(data.get("finish_reason"), str):
            raise ContractError("A final needs a finish_reason.")
        try:
            for name, kind in (("usage", Usage), ("timings", Timings), ("error", FinalError)):
                if data.get(name) is not None:
                    data[name] = kind.from_json(data[name])
            return cls(**data)
        except TypeError as exc:
            raise ContractError(f"Bad final: {exc}") from None


# ---- what the control plane sends to a node ---------------------------------------------------------------------

@dataclass(frozen=True)
class NodeMessage:
    """One task for a node: its name and JSON arguments. ``send`` and ``signature`` take the sender's Celery app."""

    task: str
    args: list

    def send(self, app, node_name, **options):
        return app.send_task(self.task, args=self.args, queue=node_queue(node_name), **options)

    def signature(self, app, node_name, **options):
        return app.signature(self.task, args=self.args, queue=node_queue(node_name), **options)


def infer_payload(*, request_id: str, prompt: str, messages, sampling: dict, adapter: AdapterRef | None,
                  tenant: str, base_model: str, attempt: int = 1, tools=(), grammar=None) -> dict:
    """The JSON of a GenerationRequest (gpu_runtime.generation) as the control plane stores and sends it: the
    sampling parameters it was given, ``attempt`` only after the first, ``tools`` and ``grammar`` (a
    gpu_runtime.grammar_spec.Grammar) only when there are any."""
    payload = {"request_id": request_id, "prompt": prompt, "messages": list(messages), "sampling": sampling,
               "adapter": adapter.to_json() if adapter is not None else None, "tenant": tenant,
               "base_model": base_model}
    if tools:
        payload["tools"] = list(tools)
    if grammar is not None:
        payload["grammar"] = grammar.to_json()
    return payload if attempt <= 1 else with_attempt(payload, attempt)


def with_attempt(payload: dict, attempt: int) -> dict:
    """A stored infer payload sent again as ``attempt`` (contract "Failover")."""
    return {**payload, "attempt": attempt}


def infer_message(payload: dict) -> NodeMessage:
    return NodeMessage(TASK_INFER, [payload])


def set_tier_message(adapter: AdapterRef, tier: str) -> NodeMessage:
    if tier not in TIERS:
        raise ContractError(f"unknown tier {tier!r}")
    return NodeMessage(TASK_SET_TIER, [adapter.to_json(), tier])


def prefetch_message(adapter: AdapterRef) -> NodeMessage:
    return NodeMessage(TASK_PREFETCH, [adapter.to_json()])


def train_message(spec) -> NodeMessage:
    """``spec``: a gpu_runtime.training_spec.TrainingSpec."""
    return NodeMessage(TASK_TRAIN, [spec.to_json()])


def ping_message() -> NodeMessage:
    return NodeMessage(TASK_PING, [])
