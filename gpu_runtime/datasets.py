"""Reading a tenant's JSONL training file line by line. Django-free and torch-free: the web validates uploads
with it and the runtime node reads the stored file with it, so both agree on what a valid dataset is.

One JSON object per line (blank lines are skipped), every line in the same format:

- chat: ``{"messages": [{"role": "system" | "user" | "assistant", "content": "...", "name": "..."?}, ...]}``;
  an optional system message first, then user and assistant alternating, starting with user and ending with
  assistant (the reply the model learns);
- completion: ``{"prompt": "...", "completion": "..."}``; the prompt may be empty, the completion may not.

Every bad line is reported with its 1-based number and the reason (the first problem found on that line), so a
tenant can fix the whole file in one go. Whole-file problems (empty, too large) have ``line`` None.
"""

import io
import json
from dataclasses import dataclass, field

CHAT, COMPLETION = "chat", "completion"
ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = {"role", "content", "name"}
COMPLETION_KEYS = {"prompt", "completion"}
# Chat templates wrap each message in a few special tokens (SmolLM2's ChatML: <|im_start|>role\n ... <|im_end|>\n);
# 4 per message is an estimate of that overhead, not the template's exact count: the node re-checks exactly.
CHAT_TOKENS_PER_MESSAGE = 4
COMPLETION_EXTRA_TOKENS = 1  # the end-of-sequence token after the completion
MAX_LISTED_ERRORS = 100
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class LineError:
    line: int | None  # 1-based; None: the whole file
    code: str
    message: str

    def __str__(self):
        return self.message if self.line is None else f"line {self.line}: {self.message}"

    def as_dict(self):
        return {"line": self.line, "code": self.code, "message": self.message}


@dataclass
class ParsedDataset:
    format: str | None  # chat | completion; None when no line had a recognisable format
    records: list = field(default_factory=list)  # the valid records, normalized, in file order (if kept)
    record_count: int = 0  # valid records, kept or not
    errors: list = field(default_factory=list)  # LineError, at most MAX_LISTED_ERRORS (see errors_omitted)
    errors_omitted: int = 0  # bad lines past the listed ones
    tokens: int = 0  # over the valid records: the tokenizer's count plus template overhead, or UTF-8 bytes
    tokens_exact: bool = False  # True: counted with the base model's tokenizer

    @property
    def ok(self):
        return not self.errors

    @property
    def error_count(self):
        return len(self.errors) + self.errors_omitted

    def summary(self):
        """'line 3: invalid JSON (...); line 7: ...' with a count of the errors not listed."""
        text = "; ".join(str(e) for e in self.errors)
        if self.errors_omitted:
            text += f"; and {self.errors_omitted} more bad line(s)"
        return text


class DatasetRejected(ValueError):
    def __init__(self, parsed):
        self.parsed = parsed
        super().__init__(f"the dataset has {parsed.error_count} bad line(s): {parsed.summary()}")


class _BadLine(Exception):
    def __init__(self, code, message):
        self.code, self.message = code, message


def _format_of(record):
    if "messages" in record:
        return CHAT
    if "prompt" in record or "completion" in record:
        return COMPLETION
    return None


def _unknown_keys(obj, allowed, where):
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _BadLine("unknown_field", f"unknown field(s) {', '.join(repr(k) for k in unknown)}{where}; "
                                        f"allowed: {', '.join(sorted(allowed))}")


def _chat_record(record):
    _unknown_keys(record, {"messages"}, "")
    messages = record["messages"]
    if not isinstance(messages, list):
        raise _BadLine("invalid_field", f"'messages' must be a list, not {_type_name(messages)}")
    if not messages:
        raise _BadLine("empty", "'messages' is empty")
    normalized = []
    for i, message in enumerate(messages, start=1):
        where = f" in message {i}"
        if not isinstance(message, dict):
            raise _BadLine("invalid_field", f"message {i} must be an object, not {_type_name(message)}")
        for key in ("role", "content"):
            if key not in message:
                raise _BadLine("missing_field", f"missing field '{key}'{where}")
        _unknown_keys(message, MESSAGE_KEYS, where)
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise _BadLine("unknown_role", f"unknown role {role!r}{where}; use system, user or assistant")
        if not isinstance(content, str):
            raise _BadLine("invalid_field", f"'content' must be a string{where}, not {_type_name(content)}")
        if not content.strip():
            raise _BadLine("empty", f"empty 'content'{where}")
        if "name" in message and not isinstance(message["name"], str):
            raise _BadLine("invalid_field", f"'name' must be a string{where}")
        normalized.append({"role": role, "content": content})
    _check_role_order([m["role"] for m in normalized])
    return {"messages": normalized}


def _check_role_order(roles):
    first = 1 if roles[0] == "system" else 0
    if first == len(roles):
        raise _BadLine("wrong_role_order", "only a system message; add a user message and the assistant's reply")
    for i in range(first, len(roles)):
        role, expected = roles[i], ("user", "assistant")[(i - first) % 2]
        if role == "system":
            raise _BadLine("wrong_role_order", f"wrong role order: message {i + 1} is 'system'; a system message "
                                               "may only come first")
        if role != expected:
            where = f"after '{roles[i - 1]}'" if i else "first"
            raise _BadLine("wrong_role_order", f"wrong role order: message {i + 1} is '{role}' but '{expected}' "
                                               f"must come {where}")
    if roles[-1] != "assistant":
        raise _BadLine("wrong_role_order", "wrong role order: the last message must be the assistant's (the reply "
                                           "the model learns)")


def _completion_record(record):
    for key in ("prompt", "completion"):
        if key not in record:
            raise _BadLine("missing_field", f"missing field '{key}'")
    _unknown_keys(record, COMPLETION_KEYS, "")
    for key in ("prompt", "completion"):
        if not isinstance(record[key], str):
            raise _BadLine("invalid_field", f"'{key}' must be a string, not {_type_name(record[key])}")
    if not record["completion"].strip():
        raise _BadLine("empty", "empty 'completion'")
    return {"prompt": record["prompt"], "completion": record["completion"]}


def _type_name(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _record_tokens(fmt, record, count):
    if fmt == CHAT:
        return sum(count(m["content"]) for m in record["messages"]) + CHAT_TOKENS_PER_MESSAGE * len(
            record["messages"])
    return count(record["prompt"]) + count(record["completion"]) + COMPLETION_EXTRA_TOKENS


def _utf8_bytes(text):
    return len(text.encode("utf-8"))


def parse_dataset(data, *, max_records, max_bytes, max_tokens=None, count_tokens=None, keep_records=True,
                  max_listed_errors=MAX_LISTED_ERRORS, caps_of="your plan"):
    """Parses and validates a JSONL dataset. ``count_tokens(text) -> int`` is the base model's tokenizer;
    with it (and ``max_tokens``, the context length) a record that does not fit is an error. Without it
    tokens are counted as UTF-8 bytes, an upper bound for byte-level BPE, and nothing is refused for length.
    ``keep_records=False`` only validates and counts (the web does not need the records in memory).
    ``caps_of`` names whose size and record caps they are, in the messages (the web names the plan).
    ``data`` is bytes or a seekable binary file, read a line at a time (an upload is never read whole)."""
    parsed = ParsedDataset(format=None, tokens_exact=count_tokens is not None)
    if isinstance(data, bytes | bytearray):
        size, lines = len(data), iter(data.split(b"\n"))
    else:
        size = data.seek(0, io.SEEK_END)
        data.seek(0)
        lines = iter(data.readline, b"")  # splits at b"\n" only, as bytes.split does

    def refuse(line, code, message):
        if len(parsed.errors) < max_listed_errors:
            parsed.errors.append(LineError(line, code, message))
        else:
            parsed.errors_omitted += 1

    if size > max_bytes:
        refuse(None, "too_large", f"the file is {size} bytes; {caps_of} allows {max_bytes}")
        return parsed
    count = count_tokens or _utf8_bytes
    format_line = None
    seen = 0
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM):]
        if not raw.strip():
            continue
        seen += 1
        if seen > max_records:
            extra = sum(1 for rest in lines if rest.strip())  # the lines after this one
            refuse(number, "too_many_records", f"the file has {max_records + 1 + extra} records; {caps_of} allows "
                                               f"{max_records} (this is the first line past the limit)")
            break
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            refuse(number, "invalid_utf8", f"not UTF-8 (byte {exc.start + 1} of the line)")
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            refuse(number, "invalid_json", f"invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        except (ValueError, RecursionError) as exc:  # digits past Python's limit, nesting past the stack
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            refuse(number, "invalid_json", f"invalid JSON ({reason})")
            continue
        if not isinstance(record, dict):
            refuse(number, "not_an_object", f"each line must be a JSON object, not {_type_name(record)}")
            continue
        fmt = _format_of(record)
        if fmt is None:
            refuse(number, "missing_field", "missing field 'messages' (chat) or 'prompt' and 'completion'")
            continue
        if parsed.format is None:
            parsed.format, format_line = fmt, number
        elif fmt != parsed.format:
            refuse(number, "mixed_format", f"a {fmt} record, but line {format_line} is {parsed.format}; use one "
                                           "format for the whole file")
            continue
        try:
            normalized = _chat_record(record) if fmt == CHAT else _completion_record(record)
        except _BadLine as bad:
            refuse(number, bad.code, bad.message)
            continue
        tokens = _record_tokens(fmt, normalized, count)
        if count_tokens is not None and max_tokens is not None and tokens > max_tokens:
            refuse(number, "too_long", f"too long for the context: about {tokens} tokens, the base model takes "
                                       f"{max_tokens}")
            continue
        parsed.tokens += tokens
        parsed.record_count += 1
        if keep_records:
            parsed.records.append(normalized)
    if seen == 0:
        refuse(None, "empty", "the file has no records (it is empty or only blank lines)")
    return parsed


def records_from_jsonl(data, *, max_records=10_000_000, max_bytes=1 << 40, max_tokens=None, count_tokens=None):
    """The normalized records of a dataset the web already accepted; raises DatasetRejected on any bad line."""
    parsed = parse_dataset(data, max_records=max_records, max_bytes=max_bytes, max_tokens=max_tokens,
                           count_tokens=count_tokens)
    if parsed.errors:
        raise DatasetRejected(parsed)
    return parsed.records
