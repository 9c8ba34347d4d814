"""A training job's dataset as token ids: the JSONL file read from object storage (gpu_runtime.object_io), checked
(gpu_runtime.datasets) and encoded with the base's tokenizer, labels on the answer tokens only."""

from dataclasses import dataclass

from . import object_io
from .datasets import parse_dataset
from .training_spec import TrainingFailed

IGNORE = -100
MAX_DATASET_BYTES = 512 << 20
MAX_DATASET_RECORDS = 1_000_000


def _template_ids(tokenizer, messages, generation_prompt):
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=generation_prompt, tokenize=True,
                                        return_dict=False)
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


def encode_record(tokenizer, record, eos_id):
    """(input ids, labels) with IGNORE on everything but the answer tokens."""
    if "messages" in record:
        if not getattr(tokenizer, "chat_template", None):
            raise TrainingFailed("no_chat_template", "this base model has no chat template; use prompt/completion "
                                 "records")
        messages = record["messages"]
        ids = _template_ids(tokenizer, messages, False)
        labels = [IGNORE] * len(ids)
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                start = len(_template_ids(tokenizer, messages[:i], True))
                end = len(_template_ids(tokenizer, messages[: i + 1], False))
                labels[start:end] = ids[start:end]
        return ids, labels
    prompt = tokenizer(record["prompt"]).input_ids if record["prompt"] else []
    answer = tokenizer(record["completion"], add_special_tokens=False).input_ids + [eos_id]
    return list(prompt) + answer, [IGNORE] * len(prompt) + answer


@dataclass
class Example:
    ids: list
    labels: list

    @property
    def targets(self):
        return sum(1 for t in self.labels[1:] if t != IGNORE)


def load_examples(spec, tokenizer, eos_id, *, uri=None, what="dataset"):
    """Reads and tokenizes the dataset (or, with ``uri``, the validation file); every record over ``max_seq_len``
    tokens is named with its line."""
    uri, name = uri or spec.dataset_uri, what.replace("_", " ")
    try:
        data = object_io.read_bytes(uri, max_bytes=MAX_DATASET_BYTES)
    except (OSError, ValueError) as exc:
        raise TrainingFailed(f"{what}_unreadable", f"cannot read the {name} at {uri}: {exc}") from None
    parsed = parse_dataset(data, max_records=MAX_DATASET_RECORDS, max_bytes=MAX_DATASET_BYTES)
    if parsed.errors:
        raise TrainingFailed(f"invalid_{what}", f"the {name} has {parsed.error_count} problem(s): "
                                                f"{parsed.summary()}")
    examples, too_long = [], []
    for line, record in _numbered(data, parsed.records):
        ids, labels = encode_record(tokenizer, record, eos_id)
        if len(ids) > spec.max_seq_len:
            too_long.append(f"line {line}: {len(ids)} tokens")
        examples.append(Example(ids, labels))
    if too_long:
        raise TrainingFailed("records_too_long", f"{len(too_long)} record(s) of the {name} are longer than the "
                             f"{spec.max_seq_len}-token limit: {'; '.join(too_long[:20])}")
    if not examples:
        raise TrainingFailed(f"invalid_{what}", f"the {name} has no records")
    return examples


def _numbered(data, records):
    """Pairs each parsed record with its 1-based line number in the file (blank lines are skipped)."""
    lines = [i for i, raw in enumerate(data.split(b"\n"), start=1) if raw.strip()]
    return zip(lines, records, strict=True)
