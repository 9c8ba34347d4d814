"""A dataset's tokens counted on the web exactly as the trainer encodes its records (gpu_runtime/trainer.py
``encode_record``), so a training estimate bills what the run will: gradients = trainable elements x tokens.

The trainer encodes a chat record with ``apply_chat_template(messages, add_generation_prompt=False)`` and a
prompt/completion record as ``tokenizer(prompt)`` + the completion without special tokens + the end token.
Here: the base model's tokenizer and chat template from the model store (adapters.prompt_tokens, no torch),
over the records as the runtime's parser normalizes them. A web without the model store has no exact count: the
estimate then takes the dataset's stored count (an upper bound in UTF-8 bytes, or the tokenizer's count with an
approximate template overhead) and says it is not exact.
"""

import functools
import logging

from adapters.prompt_tokens import PromptCounter, prompt_counter
from adapters.services import adapter_storage
from gpu_runtime.datasets import records_from_jsonl
from gpu_runtime.tokenizer import render_chat

log = logging.getLogger(__name__)


def _record_tokens(counter, record):
    if "messages" in record:
        if counter.template is None:
            return None
        return counter.rendered(render_chat(counter.template, record["messages"], add_generation_prompt=False,
                                            special_tokens_map=counter.special))
    prompt = counter.prompt(record["prompt"]) if record["prompt"] else 0
    return prompt + counter.rendered(record["completion"]) + 1


def count_dataset_tokens(counter, data):
    """All tokens of the file's records as the trainer encodes them, or None when this counter cannot (a chat
    record and no chat template, or a template the sandbox refuses: the node then decides)."""
    total = 0
    try:
        for record in records_from_jsonl(data):
            tokens = _record_tokens(counter, record)
            if tokens is None:
                return None
            total += tokens
    except Exception:  # a file that no longer parses or a template that fails: no exact count
        log.exception("cannot count the training tokens of a dataset")
        return None
    return total


@functools.lru_cache(maxsize=32)
def _stored_dataset_tokens(tokenizer, template, special, storage_key, sha256):
    """Cached per tokenizer, template and file (a stored dataset never changes; the key holds the tokenizer, so
    a re-imported model counts again)."""
    with adapter_storage().open(storage_key, "rb") as handle:
        return count_dataset_tokens(PromptCounter(tokenizer, template, dict(special)), handle.read())


def training_tokens(base_model, *, dataset=None, data=None, fallback=0):
    """(tokens, exact) of one epoch over a dataset row or the bytes of a file, for ``base_model``."""
    counter = prompt_counter(base_model)
    tokens = None
    if counter is not None:
        if data is not None:
            tokens = count_dataset_tokens(counter, data)
        else:
            try:
                special = tuple(sorted(counter.special.items()))
                tokens = _stored_dataset_tokens(counter.tokenizer, counter.template, special, dataset.storage_key,
                                                dataset.sha256)
            except OSError:
                log.exception("cannot read dataset %s to count its tokens", dataset.pk)
    if tokens is None:
        return fallback, False
    return tokens, True
