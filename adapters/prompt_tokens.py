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

from gpu_runtime.tokenizer import (
    SPECIAL,
    chat_template_source,
    refusal,
    render_chat,
    special_tokens,
    template_variables,
)
from gpu_runtime.tool_prompt import prompt_messages

log = logging.getLogger(__name__)

VARIANT = "float32"  # gpu_runtime.model_store: every variant carries the same tokenizer and template
# what decides the template and its special tokens (gpu_runtime.tokenizer: chat_template_source, refusal)
TEMPLATE_FILES = ("chat_template.jinja", "tokenizer_config.json", "config.json", "special_tokens_map.json",
                  "additional_chat_templates")


@functools.lru_cache(maxsize=8)
def load_tokenizer(path, mtime):  # mtime in the key: a re-imported model's tokenizer is read again
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(path)
    # the whole text, as the runtime (and transformers by default) encodes it, whatever tokenizer.json asks
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@functools.lru_cache(maxsize=8)
def _chat_template(directory, mtimes):
    """(template source, special-token variables) where transformers finds them, or (None, {}) where the web cannot
    render what the runtime will: no template; several named ones, of which transformers picks by the request; or a
    template reading a special token whose value the node's ``AutoTokenizer`` takes from elsewhere than this
    config (its class's defaults, special_tokens_map.json). ``mtimes``: of the files read, for the cache."""
    directory = Path(directory)
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    source = chat_template_source(directory, config)
    if not isinstance(source, str) or any((directory / "additional_chat_templates").glob("*.jinja")):
        return None, {}
    special = special_tokens(config)
    if refusal(directory, config) is not None:  # the node's tokenizer is transformers'
        unsure = set(SPECIAL) & template_variables(source)
        if (directory / "special_tokens_map.json").is_file() or unsure - special.keys():
            return None, {}
    return source, special


@dataclass(frozen=True)
class PromptCounter:
    tokenizer: object
    template: str | None  # the chat template's source
    special: dict

    def prompt(self, text):
        return len(self.tokenizer.encode(text).ids)  # with the post-processor's special tokens, as tokenizer(text)

    def rendered(self, text):
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)  # as the runtime tokenizes a render

    def chat(self, messages, tools=()):
        if self.template is None:
            return None
        messages, tools = prompt_messages(messages, tools, self.template)  # as the runtime's _prompt_ids
        return self.rendered(render_chat(self.template, messages, tools=tools, add_generation_prompt=True,
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
        template, special = _chat_template(str(directory), tuple(_mtime(directory / name) for name in TEMPLATE_FILES))
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
