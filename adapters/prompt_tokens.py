"""A prompt's tokens counted on the web exactly as the runtime counts them (gpu_runtime/engine.py ``_prompt_ids``),
so a prompt that cannot fit is refused before a row is written or a task sent.

The runtime tokenizes a raw prompt with ``tokenizer(prompt)`` and a chat with ``apply_chat_template(messages,
add_generation_prompt=True)``. Here: the base model's ``tokenizer.json`` from the model store through the
``tokenizers`` package (Rust; no torch), and the model's chat template rendered by the runtime's own renderer
(``gpu_runtime.tokenizer.render_chat``: transformers' sandbox, torch-free), then tokenized without special tokens,
as transformers does. Loaded once per base model and kept (read again when the files change). A web without the
model store (or a model without a chat template) has no counter: the caller then keeps the bound in characters
(serving/v1.py ``CHARS_PER_TOKEN_BOUND``).
"""

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from gpu_runtime.tokenizer import chat_template_source, render_chat, special_tokens
from gpu_runtime.tool_prompt import prompt_messages

log = logging.getLogger(__name__)

VARIANT = "float32"  # gpu_runtime.model_store: every variant carries the same tokenizer and template


@functools.lru_cache(maxsize=8)
def load_tokenizer(path, mtime):  # mtime in the key: a re-imported model's tokenizer is read again
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


@functools.lru_cache(maxsize=8)
def _chat_template(directory, mtimes):
    """(template source, special-token variables) where transformers finds them, or (None, {}): no template, or
    a list of named templates the runtime would not pick by default."""
    config_file = Path(directory) / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    source = chat_template_source(directory, config)
    if not isinstance(source, str):
        return None, {}
    return source, special_tokens(config)


@dataclass(frozen=True)
class PromptCounter:
    tokenizer: object
    template: str | None  # the chat template's source
    special: dict

    def prompt(self, text):
        return len(self.tokenizer.encode(text).ids)  # with the post-processor's special tokens, as tokenizer(text)

    def rendered(self, text):
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)  # as the runtime tokenizes a render

    def chat(self, messages, tools=(), add_generation_prompt=True):
        if self.template is None:
            return None
        messages, tools = prompt_messages(messages, tools, self.template)  # as the runtime's _prompt_ids
        return self.rendered(render_chat(self.template, messages, tools=tools,
                                         add_generation_prompt=add_generation_prompt,
                                         special_tokens_map=self.special))


def _mtime(path):
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def prompt_counter(base_model):
    """The base model's counter, or None when the web cannot read its tokenizer."""
    directory = Path(settings.VAJRA_MODEL_STORE) / base_model.name / VARIANT
    tokenizer_file = directory / "tokenizer.json"
    mtime = _mtime(tokenizer_file)
    if mtime is None:
        return None
    try:
        tokenizer = load_tokenizer(str(tokenizer_file), mtime)
        template, special = _chat_template(str(directory), (_mtime(directory / "chat_template.jinja"),
                                                    _mtime(directory / "tokenizer_config.json")))
    except Exception:  # a damaged file: keep the bound in characters rather than refuse every request
        log.exception("cannot read the tokenizer or chat template in %s; using the character bound", directory)
        return None
    return PromptCounter(tokenizer, template, special)


def prompt_tokens(base_model, *, prompt="", messages=(), tools=()):
    """The prompt's token count as the runtime will see it, or None when the web cannot count it."""
    counter = prompt_counter(base_model)
    if counter is None:
        return None
    if messages:
        try:
            return counter.chat(messages, tools)
        except Exception:  # a template the sandbox refuses: the runtime decides
            log.exception("chat template of %s failed to render", base_model.name)
            return None
    return counter.prompt(prompt)
