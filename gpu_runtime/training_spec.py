"""A training job as JSON (the ``runtime.train`` payload) and the checks its hyperparameters pass.

Imports neither Django nor torch: the web validates a train request with ``Hyperparameters.from_json`` (one
set of rules for the API's 400s and the runtime), and the runtime rebuilds the job with
``TrainingSpec.from_json``.

Step arithmetic (OpenAI's and PEFT's usual meaning): an optimizer step consumes ``batch_size`` records, run
as micro-batches of ``micro_batch_size`` records (gradient accumulation); an epoch is ``ceil(records /
batch_size)`` steps; a job runs ``epochs`` epochs, capped at ``max_steps`` when given. A micro-batch is the
unit the engine interleaves with inference, so it bounds how long an arriving inference request waits.

Metering (VAJRA paper A.2's G): one gradient is one trainable element's gradient on one token, and a token is
any token of a trained record as the trainer encodes it (chat template or prompt + completion + end token;
prompt tokens included, padding never), so an optimizer step's gradients = trainable elements x the tokens of
its records. The count follows the work and not its split: the same data, epochs and batch size give the same
gradients whatever ``micro_batch_size`` is.

Learning-rate schedule: ``lr_scheduler`` constant, linear or cosine, after ``warmup_steps`` (or ``warmup_ratio`` of
the job's steps, rounded up) of linear warmup. Optimizer step ``s`` (1-based) of ``T`` with ``W`` warmup steps
uses ``learning_rate`` times: ``s / (W + 1)`` while ``s <= W``; then, with ``p = (s - 1 - W) / (T - W)``, 1
(constant), ``1 - p`` (linear) or ``(1 + cos(pi p)) / 2`` (cosine). So no step trains at zero: the first warmup
step is already past it, the first step after warmup runs at the full rate and the last at one ``T - W``-th of
the way from the end (``learning_rate_at``).
"""

import math
from dataclasses import asdict, dataclass, field

from .contract import ContractError

MAX_EPOCHS = 50
MAX_BATCH_SIZE = 64
MAX_STEPS = 100_000
LR_SCHEDULERS = ("constant", "linear", "cosine")
DEFAULT_TARGETS = ("q_proj", "v_proj")


class TrainingFailed(Exception):
    """A job that cannot run, with the code and message its result carries."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


def _number(payload, name, default, *, integer, low, high, low_open=False):
    value = payload.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise ContractError(f"hyperparameters.{name} must be {kind}, got {value!r}.")
    if (value <= low if low_open else value < low) or value > high:
        lower = f"> {low}" if low_open else f">= {low}"
        raise ContractError(f"hyperparameters.{name} must be {lower} and <= {high}, got {value!r}.")
    return int(value) if integer else float(value)


@dataclass(frozen=True)
class Hyperparameters:
    learning_rate: float = 1e-4
    epochs: int = 3
    batch_size: int = 4
    micro_batch_size: int = 1
    max_steps: int | None = None
    seed: int = 0
    # only for a new adapter (one with no version yet); training an existing one keeps its shape
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple = DEFAULT_TARGETS
    dropout: float = 0.0
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    warmup_ratio: float | None = None  # instead of warmup_steps: this share of the job's steps, rounded up

    @classmethod
    def from_json(cls, payload, *, max_rank=64, max_epochs=MAX_EPOCHS, known_modules=None):
        """Checks every value (a ContractError names the field and the allowed range)."""
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise ContractError("hyperparameters must be a JSON object.")
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(payload) - names)
        if unknown:
            raise ContractError(f"Unknown hyperparameters: {unknown}; allowed: {sorted(names)}.")
        d = cls()
        values = {
            "learning_rate": _number(payload, "learning_rate", d.learning_rate, integer=False, low=0, high=1,
                                     low_open=True),
            "epochs": _number(payload, "epochs", d.epochs, integer=True, low=1, high=max_epochs),
            "batch_size": _number(payload, "batch_size", d.batch_size, integer=True, low=1, high=MAX_BATCH_SIZE),
            "micro_batch_size": _number(payload, "micro_batch_size", d.micro_batch_size, integer=True, low=1,
                                        high=MAX_BATCH_SIZE),
            "max_steps": _number(payload, "max_steps", None, integer=True, low=1, high=MAX_STEPS),
            "seed": _number(payload, "seed", d.seed, integer=True, low=0, high=2**31 - 1),
            "rank": _number(payload, "rank", d.rank, integer=True, low=1, high=max_rank),
            "alpha": _number(payload, "alpha", d.alpha, integer=False, low=0, high=1024, low_open=True),
            "dropout": _number(payload, "dropout", d.dropout, integer=False, low=0, high=0.9),
            "warmup_steps": _number(payload, "warmup_steps", d.warmup_steps, integer=True, low=0, high=MAX_STEPS),
            "warmup_ratio": _number(payload, "warmup_ratio", None, integer=False, low=0, high=1),
        }
        scheduler = payload.get("lr_scheduler", d.lr_scheduler)
        if scheduler not in LR_SCHEDULERS:
            raise ContractError(f"hyperparameters.lr_scheduler must be one of {list(LR_SCHEDULERS)}, got "
                                f"{scheduler!r}.")
        if values["warmup_ratio"] is not None and payload.get("warmup_steps") not in (None, 0):
            raise ContractError("hyperparameters.warmup_ratio and warmup_steps are two ways to say one thing; give "
                                "one of them.")
        if values["micro_batch_size"] > values["batch_size"]:
            raise ContractError("hyperparameters.micro_batch_size must not exceed batch_size.")
        if values["batch_size"] % values["micro_batch_size"]:
            raise ContractError("hyperparameters.batch_size must be a multiple of micro_batch_size.")
        targets = payload.get("target_modules", list(d.target_modules))
        if (not isinstance(targets, list | tuple) or not targets
                or not all(isinstance(t, str) and t for t in targets) or len(set(targets)) != len(targets)):
            raise ContractError("hyperparameters.target_modules must be a non-empty list of distinct module names.")
        if known_modules is not None:
            missing = sorted(set(targets) - set(known_modules))
            if missing:
                raise ContractError(f"hyperparameters.target_modules {missing} are not modules of the base model; "
                                    f"choose from {sorted(known_modules)}.")
        return cls(**values, target_modules=tuple(targets), lr_scheduler=scheduler)

    def to_json(self):
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data

    @property
    def accumulation(self):
        return self.batch_size // self.micro_batch_size

    def total_steps(self, records):
        steps = math.ceil(records / self.batch_size) * self.epochs
        return min(steps, self.max_steps) if self.max_steps else steps

    def warmup(self, total_steps):
        """Warmup steps of a job of ``total_steps`` steps (``warmup_ratio`` rounded up), never more than it has."""
        if self.warmup_ratio is not None:
            return min(total_steps, math.ceil(self.warmup_ratio * total_steps - 1e-9))
        return min(total_steps, self.warmup_steps)

    def learning_rate_at(self, step, total_steps):
        """The learning rate optimizer step ``step`` (1-based) of ``total_steps`` uses (see the module's text)."""
        warmup = self.warmup(total_steps)
        if step <= warmup:
            return self.learning_rate * step / (warmup + 1)
        if self.lr_scheduler == "constant":
            return self.learning_rate
        progress = (step - 1 - warmup) / max(1, total_steps - warmup)
        if self.lr_scheduler == "linear":
            return self.learning_rate * (1.0 - progress)
        return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))

    def trained_records(self, records):
        """(whole epochs, records of the last partial epoch) the job trains: every record once per epoch, and a
        job capped by ``max_steps`` stops after that many batches (only an epoch's last batch is short)."""
        per_epoch_steps = math.ceil(records / self.batch_size)
        if self.max_steps and self.max_steps < per_epoch_steps * self.epochs:
            epochs, steps = divmod(self.max_steps, per_epoch_steps)
            return epochs, steps * self.batch_size
        return self.epochs, 0

    def trained_tokens(self, records, tokens):
        """The tokens the job trains, for a dataset of ``records`` records holding ``tokens`` tokens in all: exact
        for whole epochs; a partial epoch's batches are drawn at random, so it counts them at the dataset's mean
        record length (rounded up)."""
        epochs, rest = self.trained_records(records)
        return epochs * tokens + (-(-rest * tokens // records) if records else 0)


def training_gradients(trainable, tokens):
    """G for ``tokens`` trained tokens with ``trainable`` trainable elements (see Metering above)."""
    return trainable * tokens


def trainable_elements(modules, num_layers, rank, target_modules):
    """LoRA A [r, in] + B [out, r] per target module per layer; ``modules``: name -> (block, in, out)."""
    per_layer = sum(rank * (modules[m][1] + modules[m][2]) for m in target_modules)
    return per_layer * num_layers


@dataclass(frozen=True)
class TrainingSpec:
    job_id: str
    base_model: str
    adapter_id: str  # the runtime's adapter id ("a<pk>")
    dataset_uri: str  # the JSONL file (file:// or s3://)
    output_uri: str  # a folder: checkpoints/step-<n>/ and final/ are written under it
    hyperparameters: dict
    init: dict | None = None  # an AdapterRef JSON of the version training continues from, or None for a new one
    checkpoint_every: int = 10
    max_seq_len: int = 1024
    validation_uri: str | None = None  # a JSONL file (like dataset_uri) whose loss is measured after each epoch
    extra: dict = field(default_factory=dict)

    def hp(self, max_rank=64):
        return Hyperparameters.from_json(self.hyperparameters, max_rank=max_rank)

    def to_json(self):
        return asdict(self)

    @classmethod
    def from_json(cls, payload):
        if not isinstance(payload, dict):
            raise ContractError("A training job is a JSON object.")
        try:
            spec = cls(**payload)
        except TypeError as exc:
            raise ContractError(f"Bad training job: {exc}") from None
        for name in ("job_id", "base_model", "adapter_id", "dataset_uri", "output_uri"):
            if not isinstance(getattr(spec, name), str) or not getattr(spec, name):
                raise ContractError(f"A training job needs a non-empty {name}.")
        if spec.validation_uri is not None and (not isinstance(spec.validation_uri, str) or not spec.validation_uri):
            raise ContractError("A training job's validation_uri is a non-empty string or null.")
        if not isinstance(spec.checkpoint_every, int) or spec.checkpoint_every < 1:
            raise ContractError("checkpoint_every must be a positive integer.")
        spec.hp()  # the hyperparameters are checked again on the node
        return spec
