"""The runtime's tokenizer for a model directory whose tokenizer is the ``tokenizers`` library's alone
(``tokenizer_class`` ``TokenizersBackend`` or ``PreTrainedTokenizerFast``: transformers adds no behaviour of its
own to it): the ids, text and chat-template renders ``AutoTokenizer`` gives (tests/test_base_model_load.py),
without importing transformers, whose tokenizer code pulls in its modeling stack (seconds of a fresh node's
start). Any other tokenizer class loads with ``AutoTokenizer`` (base_model.load_tokenizer).

Chat templates are tenants' and model authors' code: they run in Jinja's immutable sandbox with what
transformers gives them (``tojson`` without HTML escaping, ``raise_exception``, ``strftime_now``, a ``dict``
and a ``namespace`` that refuse underscore names, the loop controls, ``{% generation %}`` blocks rendered as
their text), over plain JSON data only."""

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

PLAIN_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
# AutoTokenizer swaps the class named in tokenizer_config.json for its own for some model types (Qwen2's among
# them): this tokenizer stands in for the named class only where the model is of a type it leaves alone
PLAIN_MODEL_TYPES = ("llama",)
SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class Unsupported(ValueError):
    """A tokenizer this class does not reproduce exactly; ``AutoTokenizer`` loads it instead."""


def _content(token):
    return token.get("content") if isinstance(token, dict) else token


def special_tokens(config):
    """The special tokens a chat template sees as variables (``bos_token`` ...), from tokenizer_config.json."""
    return {k: str(_content(config[k])) for k in SPECIAL if _content(config.get(k))}


def chat_template_source(path, config):
    """The chat template where transformers looks for it: ``chat_template.jinja``, ahead of the config's
    ``chat_template`` (a string, a list of named templates, or None)."""
    template_file = Path(path) / "chat_template.jinja"
    if template_file.is_file():
        return template_file.read_text(encoding="utf-8")
    return config.get("chat_template")


def render_chat(source, messages, tools=None, add_generation_prompt=False, special_tokens_map=None,
                **kwargs):
    """The conversation rendered by the chat template ``source`` as transformers renders it: keys set to None
    left out, reasoning under each of its names, only plain JSON data in the sandbox, the special tokens and
    ``kwargs`` as variables. The runtime's tokenizer and the web's token counts render through this one."""
    if not messages:
        raise ValueError("an empty conversation has no render")
    chat = [_with_reasoning_aliases({k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m)
            for m in _plain(list(messages))]
    return _template(source).render(messages=chat, tools=_plain(tools), documents=None,
                                    add_generation_prompt=add_generation_prompt,
                                    **{**(special_tokens_map or {}), **_plain(kwargs)})


def refusal(path, config):
    """Why this tokenizer's files ask for more than the ``tokenizers`` library's behaviour (``tokenizer_config.json``
    as ``config``), so transformers' ``AutoTokenizer`` loads them, or None. What transformers adds of its own is
    refused, not imitated."""
    if not isinstance(config, dict) or config.get("tokenizer_class") not in PLAIN_CLASSES:
        return f"tokenizer class {config.get('tokenizer_class') if isinstance(config, dict) else None!r}"
    try:
        model_type = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if model_type not in PLAIN_MODEL_TYPES:
        return f"model type {model_type!r}"
    if (Path(path) / "special_tokens_map.json").is_file():
        return "special_tokens_map.json (its precedence over the config)"
    if any((Path(path) / "additional_chat_templates").glob("*.jinja")):
        return "named chat templates"
    if config.get("split_special_tokens"):
        return "split_special_tokens"
    empty = [k for k in SPECIAL if _content(config.get(k)) == ""]
    if empty:  # transformers hands a template "" where this tokenizer has no such token
        return f"an empty {empty[0]}"
    extra = [k for k, v in config.items() if k.endswith("_token") and k not in SPECIAL and _content(v)]
    if extra or config.get("extra_special_tokens") or config.get("additional_special_tokens"):
        return f"special tokens beyond {', '.join(SPECIAL)}: {extra[:3]}"
    # chat_template.jinja, when there is one, is the template (chat_template_source): read where it is used
    if not (Path(path) / "chat_template.jinja").is_file() and not isinstance(config.get("chat_template"),
                                                                             (str, type(None))):
        return "several named chat templates"
    return None


class Tokenizer:
    def __init__(self, backend, config):
        self.backend = backend
        self.chat_template = config.get("chat_template")
        self.special_tokens_map = special_tokens(config)
        for key in SPECIAL:
            token = self.special_tokens_map.get(key)
            setattr(self, key, token)
            setattr(self, key + "_id", None if token is None else backend.token_to_id(token))
        # transformers skips this clean-up for BPE models (it would strip real spaces before punctuation) unless the
        # config insists
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False)) and (
            type(backend.model).__name__ != "BPE"
            or bool(config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)))

    @classmethod
    def load(cls, path):
        from tokenizers import Tokenizer as Backend

        path = Path(path)
        try:
            config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise Unsupported(f"tokenizer_config.json: {exc}") from None
        reason = refusal(path, config)
        if reason is not None:
            raise Unsupported(reason)
        config["chat_template"] = chat_template_source(path, config)
        try:
            backend = Backend.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # the tokenizers library's own error types
            raise Unsupported(f"tokenizer.json: {exc}") from None
        if backend.padding is not None:
            raise Unsupported("a padding section in tokenizer.json (transformers takes its pad token)")
        backend.no_truncation()
        for index, token in (config.get("added_tokens_decoder") or {}).items():
            if backend.id_to_token(int(index)) != _content(token):
                raise Unsupported(f"added token {index} is not in tokenizer.json")
        added = {t.content for t in backend.get_added_tokens_decoder().values()}
        for key in SPECIAL:
            token = _content(config.get(key))
            if token and str(token) not in added:  # transformers would add it as a special token of its own
                raise Unsupported(f"{key} {token!r} is not one of tokenizer.json's added tokens")
        return cls(backend, config)

    def backend_json(self):
        """The backend tokenizer as JSON (for llguidance's view of it)."""
        return self.backend.to_str()

    def __call__(self, text, add_special_tokens=True):
        return SimpleNamespace(input_ids=self.encode(text, add_special_tokens=add_special_tokens))

    def encode(self, text, add_special_tokens=True):
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens=False):
        text = self.backend.decode([ids] if isinstance(ids, int) else list(ids),
                                   skip_special_tokens=skip_special_tokens)
        if self.clean_up_spaces:
            for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                                  (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(before, after)
        return text

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self.backend.id_to_token(ids)
        return [self.backend.id_to_token(i) for i in ids]

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=False, tokenize=True,
                            return_dict=False, **kwargs):
        """The conversation rendered by the chat template, as token ids (``tokenize``) or text."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        text = render_chat(self.chat_template, messages, tools=tools, add_generation_prompt=add_generation_prompt,
                           special_tokens_map=self.special_tokens_map, **kwargs)
        if not tokenize:
            return text
        ids = self.encode(text, add_special_tokens=False)
        return {"input_ids": ids} if return_dict else ids


def _with_reasoning_aliases(message):
    if isinstance(message, dict):
        reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            return {"thinking": reasoning, **message, "reasoning_content": reasoning}
    return message


def _plain(value):
    """``value`` rebuilt from plain JSON types (the sandbox knows their methods are harmless)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    return f"<{type(value).__name__}>"


@lru_cache(maxsize=1)
def _environment():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}``: transformers marks the assistant's tokens with it; here the
        block renders as its text."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}.")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda f: datetime.now().strftime(f),
                       dict=TemplateDict(), namespace=TemplateNamespace)
    return env


@lru_cache(maxsize=16)
def _template(source):
    return _environment().from_string(source)


def template_variables(source):
    """The names a chat template reads from its render's variables (``bos_token``, ``messages`` ...)."""
    from jinja2 import meta

    return meta.find_undeclared_variables(_environment().parse(source))
