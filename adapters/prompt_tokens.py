"""A prompt's tokens counted on the web exactly as the runtime counts them (gpu_runtime/engine.py ``_prompt_ids``),
so a prompt that cannot fit is refused before a row is written or a task sent.

The runtime tokenizes a raw prompt with ``tokenizer(prompt)`` and a chat with ``apply_chat_template(messages,
add_generation_prompt=True)``. Here: the base model's ``tokenizer.json`` from the model store through the
``tokenizers`` package (Rust; no torch), and the model's chat template rendered with jinja2 the way transformers
renders it (a sandboxed environment with trim_blocks, lstrip_blocks and loop controls, the special tokens as
variables), then tokenized without special tokens, as transformers does. Loaded once per base model and kept
(read again when the files change). A web without the model store (or a model without a chat template) has no
counter: the caller then keeps the bound in characters (serving/v1.py ``CHARS_PER_TOKEN_BOUND``).
"""

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from gpu_runtime.tool_prompt import prompt_messages

log = logging.getLogger(__name__)

VARIANT = "float32"  # gpu_runtime.model_store: every variant carries the same tokenizer and template
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


@functools.lru_cache(maxsize=8)
def load_tokenizer(path, mtime):  # mtime in the key: a re-imported model's tokenizer is read again
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def _token_text(value):
    return value.get("content") if isinstance(value, dict) else value  # an AddedToken is saved as a dict


def _raise_exception(message):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


@functools.lru_cache(maxsize=8)
def _chat_template(directory, mtimes):
    """(compiled template, special-token variables, source) from ``chat_template.jinja`` or tokenizer_config.json's
    ``chat_template`` (where transformers looks), or (None, {}, None)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    directory = Path(directory)
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    template_file = directory / "chat_template.jinja"
    source = template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template")
    if not isinstance(source, str):  # none, or a list of named templates the runtime would not pick by default
        return None, {}, None
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise_exception
    special = {name: _token_text(config[name]) for name in SPECIAL_TOKENS if config.get(name) is not None}
    return env.from_string(source), special, source


@dataclass(frozen=True)
class PromptCounter:
    tokenizer: object
    template: object
    special: dict
    source: str | None = None  # the template's text: whether it renders tools itself (gpu_runtime.tool_prompt)

    def prompt(self, text):
        return len(self.tokenizer.encode(text).ids)  # with the post-processor's special tokens, as tokenizer(text)

    def chat(self, messages, tools=()):
        if self.template is None:
            return None
        messages, tools = prompt_messages(messages, tools, self.source)  # as the runtime's _prompt_ids
        rendered = self.template.render(messages=messages, add_generation_prompt=True, tools=tools,
                                        documents=None, **self.special)
        return len(self.tokenizer.encode(rendered, add_special_tokens=False).ids)


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
        template, special, source = _chat_template(str(directory), (_mtime(directory / "chat_template.jinja"),
                                                            _mtime(directory / "tokenizer_config.json")))
    except Exception:  # a damaged file: keep the bound in characters rather than refuse every request
        log.exception("cannot read the tokenizer or chat template in %s; using the character bound", directory)
        return None
    return PromptCounter(tokenizer, template, special, source)


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
