"""A generated token's logprob and its most likely alternatives, as the row's stream entries carry them.

Logprobs are the log-softmax of the logits the token was sampled from after the row's options (logit_bias,
penalties, min_tokens: gpu_runtime.sampling.shape_logits) and its grammar (gpu_runtime.grammar: the tokens it does
not allow next are -inf), before temperature, top-k and top-p: a row without options or grammar reports the model's
own distribution (vLLM's default "raw logprobs"), and the same text has the same logprobs whatever the temperature.
A token a row's options or grammar forbid (-inf) is reported as ``FLOOR``, as JSON has no -Infinity. Only generated
tokens have one: EOS ends the row and is not reported.

Each token's entry: {"token": its text, "logprob", "bytes": its UTF-8 bytes (a piece of a character that several
tokens spell is its bytes alone), "top_logprobs": [{"token", "logprob", "bytes"}, ...] (the k most likely,
most likely first)}; the shape of OpenAI's chat ``logprobs.content``.
"""

import re

import torch

FLOOR = -9999.0  # the logprob reported for a token the row's options made impossible
BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback


def _byte_decoder():
    """GPT-2's byte-level alphabet: the printable character each byte is spelled with in a BPE vocabulary."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


BYTE_DECODER = _byte_decoder()


class TokenPieces:
    """Each token id's bytes and text, computed once per id on first use."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._known = {}

    def __call__(self, token_id):
        """(text, bytes as a list of ints) of one token."""
        piece = self._known.get(token_id)
        if piece is None:
            raw = self._bytes(token_id)
            piece = self._known[token_id] = (raw.decode("utf-8", errors="replace"), list(raw))
        return piece

    def _bytes(self, token_id):
        name = self.tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(name, str) and name and all(c in BYTE_DECODER for c in name):
            return bytes(BYTE_DECODER[c] for c in name)
        if isinstance(name, str) and (match := BYTE_TOKEN.fullmatch(name)):
            return bytes([int(match.group(1), 16)])
        if isinstance(name, str) and "\u2581" in name:  # SentencePiece's word boundary is a space
            return name.replace("\u2581", " ").encode()
        return self.tokenizer.decode([token_id]).encode()


def reported(value):
    return value if value > FLOOR else FLOOR


def logprob_entry(pieces, logits, token, top):
    """The entry of ``token`` sampled from ``logits`` (the row's processed fp32 logits) with its ``top``
    alternatives."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    text, raw = pieces(token)
    entry = {"token": text, "logprob": reported(float(logprobs[token])), "bytes": raw, "top_logprobs": []}
    if top:
        values, ids = torch.topk(logprobs, min(top, logprobs.shape[-1]))
        for value, other in zip(values.tolist(), ids.tolist(), strict=True):
            other_text, other_raw = pieces(other)
            entry["top_logprobs"].append({"token": other_text, "logprob": reported(value), "bytes": other_raw})
    return entry
