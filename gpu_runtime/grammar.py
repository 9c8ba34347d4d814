"""Grammar-constrained decoding, one row at a time: a row with a grammar (gpu_runtime.grammar_spec) gets its logits
masked to the tokens the grammar allows before it samples, and its matcher advanced by the token it accepts. Rows
without one are not touched.

The matcher is llguidance's (an Earley parser over a lazily built lexer, masks computed on the fly; chosen by
measurement in bench/constrained_decoding.py). JSON is generated compact and in one spelling (``", "`` between
items, ``": "`` after keys, no other whitespace), so a small model cannot fill its tokens with blank lines and a
tool call's text is exactly ``<tool_call>{"name": "<name>", "arguments": <JSON>}</tool_call>``. EOS is allowed only
where the grammar is complete; once nothing but EOS can follow (``complete``) the row ends there.

What a grammar may cost is bounded twice: its schema by grammar_spec's size and depth limits (checked on the web
before a row is written, and again here), and its compile and each mask step by llguidance's parser limits
(LIMITS): a grammar past them leaves its matcher in error, which ends that row alone (``grammar_error``), or, at
compile time, refuses the request (``invalid_request``).
"""

import json
import threading

import llguidance
import llguidance.torch
import torch

from .grammar_spec import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# Each about a few ms of work at most (llguidance's own rates: lexer fuel ~14k/ms, Earley items ~20k/ms).
LIMITS = dict(initial_lexer_fuel=1_000_000, step_lexer_fuel=200_000, step_max_items=50_000,
              max_lexer_states=100_000, max_grammar_size=200_000, verbose_errors=False)
PLAIN_TEXT = r"/[^<](.|\n)*/"  # "auto": an answer in text never starts with "<", a call always does


class GrammarError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


def _json_rule(schema):
    return "%json " + json.dumps({**schema, "x-guidance": JSON_STYLE})


def _literal(text):
    return json.dumps(text)  # a Lark string literal takes JSON's escapes


def lark_of(grammar):
    """The Lark grammar (llguidance's dialect) of a gpu_runtime.grammar_spec.Grammar."""
    if grammar.type == "json_schema":
        return f"start: {_json_rule(grammar.schema)}\n"
    lines = [f"call: {' | '.join(f'call_{i}' for i in range(len(grammar.tools)))}"]
    for i, tool in enumerate(grammar.tools):
        head = _literal('{"name": ' + json.dumps(tool["name"]) + ', "arguments": ')
        lines.append(f'call_{i}: {head} args_{i} "}}"')
        lines.append(f"args_{i}: {_json_rule(tool['parameters'])}")
    tool_call = f"tool_call: {_literal(TOOL_CALL_OPEN)} call {_literal(TOOL_CALL_CLOSE)}"
    start = "start: tool_call" if grammar.choice == "required" else "start: tool_call | text\ntext: " + PLAIN_TEXT
    return "\n".join([start, tool_call, *lines]) + "\n"


class Grammars:
    """The engine's compiler, used on the threads that submit requests: llguidance's view of the tokenizer is built
    at the first grammar, once."""

    def __init__(self, tokenizer, vocab_size):
        self.hf_tokenizer, self.vocab_size = tokenizer, vocab_size
        self._tokenizer = None
        self._lock = threading.Lock()

    @property
    def tokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = _ll_tokenizer(self.hf_tokenizer, self.vocab_size)
        return self._tokenizer

    def compile(self, grammar):
        """A RowGrammar for one row; GrammarError("invalid_request") for a grammar llguidance refuses."""
        matcher = llguidance.LLMatcher(self.tokenizer, llguidance.LLMatcher.grammar_from_lark(lark_of(grammar)),
                                       log_level=0, limits=llguidance.LLParserLimits(**LIMITS))
        if matcher.is_error():
            raise GrammarError("invalid_request", f"the grammar cannot be enforced: {matcher.get_error()}")
        return RowGrammar(matcher, self.vocab_size)


class RowGrammar:
    """One row's matcher and its mask buffer."""

    def __init__(self, matcher, vocab_size):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, vocab_size)
        self._shifts = torch.arange(32, dtype=torch.int32)

    def _check(self):
        if self.matcher.is_error():
            raise GrammarError("grammar_error", f"the output grammar failed: {self.matcher.get_error()}")

    def mask(self, logits):
        """``logits`` (one row's, 1-D) with every token the grammar does not allow next at -inf."""
        llguidance.torch.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        self._check()
        allowed = ((self.bitmask[0].unsqueeze(1) >> self._shifts) & 1).flatten()[: logits.shape[-1]].bool()
        return logits.masked_fill(~allowed.to(logits.device), float("-inf"))

    def advance(self, token):
        self.matcher.consume_token(token)
        self._check()

    @property
    def complete(self):
        """Nothing but EOS can follow: the answer is whole."""
        return self.matcher.is_stopped()


def _ll_tokenizer(tokenizer, vocab_size):
    """llguidance's view of the runtime's tokenizer (gpu_runtime.tokenizer: its backend's JSON) or of a
    transformers one."""
    if hasattr(tokenizer, "backend_json"):
        return llguidance.LLTokenizer(tokenizer.backend_json(), n_vocab=vocab_size, eos_token=tokenizer.eos_token_id)
    from llguidance import hf

    return hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
