"""gpu_runtime.datasets: the JSONL rules the web (uploads) and the runtime node (training) share. Every bad
line is reported with its number and reason; caps are clear; nothing here needs Django or torch."""

import json
import subprocess
import sys

import pytest

from gpu_runtime.datasets import (
    CHAT_TOKENS_PER_MESSAGE,
    DatasetRejected,
    LineError,
    parse_dataset,
    records_from_jsonl,
)

CAPS = {"max_records": 1000, "max_bytes": 1 << 20}


def jsonl(*records):
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records).encode()


def chat(*turns):
    """chat(("system", "Be brief"), ("user", "Hi"), ("assistant", "Hello")) -> a chat record."""
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


GOOD_CHAT = chat(("user", "What is 2+2?"), ("assistant", "4"))


def errors(data, **kwargs):
    return [(e.line, e.code) for e in parse_dataset(data, **{**CAPS, **kwargs}).errors]


# Good files

def test_chat_records_are_normalized():
    data = jsonl(chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"),
                      ("assistant", "Bye!")),
                 {"messages": [{"role": "user", "content": "Hi", "name": "dana"}, {"role": "assistant",
                                                                                  "content": "Yo"}]})
    parsed = parse_dataset(data, **CAPS)
    assert parsed.ok and parsed.errors == [] and parsed.format == "chat"
    assert parsed.records[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert parsed.records[1] == {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant",
                                                                                  "content": "Yo"}]}
    assert parsed.record_count == 2 and not parsed.tokens_exact


def test_completion_records_and_an_empty_prompt():
    parsed = parse_dataset(jsonl({"prompt": "2+2=", "completion": " 4"}, {"prompt": "", "completion": "Hi"}), **CAPS)
    assert parsed.ok and parsed.format == "completion"
    assert parsed.records == [{"prompt": "2+2=", "completion": " 4"}, {"prompt": "", "completion": "Hi"}]


def test_blank_lines_crlf_and_a_bom_are_fine():
    data = b"\xef\xbb\xbf" + json.dumps(GOOD_CHAT).encode() + b"\r\n\r\n   \n" + json.dumps(GOOD_CHAT).encode() + b"\n"
    parsed = parse_dataset(data, **CAPS)
    assert parsed.ok and parsed.record_count == 2


def test_tokens_without_a_tokenizer_are_utf8_bytes_plus_overhead():
    parsed = parse_dataset(jsonl(chat(("user", "héllo"), ("assistant", "ok")), GOOD_CHAT),
                           **CAPS, max_tokens=1)  # no tokenizer: never refused for length
    assert parsed.ok and parsed.tokens_exact is False
    first = len("héllo".encode()) + 2 + 2 * CHAT_TOKENS_PER_MESSAGE
    second = len("What is 2+2?") + 1 + 2 * CHAT_TOKENS_PER_MESSAGE
    assert parsed.tokens == first + second


def test_tokens_with_a_tokenizer():
    words = lambda text: len(text.split())  # noqa: E731
    parsed = parse_dataset(jsonl({"prompt": "one two", "completion": "three"}), **CAPS, count_tokens=words,
                           max_tokens=100)
    assert parsed.ok and parsed.tokens_exact and parsed.tokens == 2 + 1 + 1  # + end of sequence


def test_records_can_be_counted_without_keeping_them():
    parsed = parse_dataset(jsonl(GOOD_CHAT, GOOD_CHAT), **CAPS, keep_records=False)
    assert parsed.ok and parsed.records == [] and parsed.record_count == 2


# Every bad line, with its number and reason

BAD_LINES = [
    ('{"messages": [', "invalid_json", "invalid JSON"),
    ("{'prompt': 'single quotes'}", "invalid_json", "invalid JSON"),
    ('[1, 2]', "not_an_object", "JSON object"),
    ('"just a string"', "not_an_object", "JSON object"),
    ({"text": "hello"}, "missing_field", "'messages'"),
    ({"messages": "hi"}, "invalid_field", "'messages' must be a list"),
    ({"messages": []}, "empty", "'messages' is empty"),
    ({"messages": ["hi"]}, "invalid_field", "message 1 must be an object"),
    ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}, "missing_field", "'role'"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "missing_field", "'content'"),
    ({"messages": [{"role": "user", "content": "hi", "weight": 1}, {"role": "assistant", "content": "x"}]},
     "unknown_field", "'weight'"),
    (chat(("tool", "x"), ("assistant", "y")), "unknown_role", "'tool'"),
    ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}, "invalid_field",
     "'content' must be a string"),
    (chat(("user", "   "), ("assistant", "x")), "empty", "empty 'content' in message 1"),
    (chat(("user", "hi"), ("assistant", "")), "empty", "empty 'content' in message 2"),
    (chat(("assistant", "hi")), "wrong_role_order", "message 1 is 'assistant' but 'user' must come first"),
    (chat(("system", "s"), ("assistant", "hi")), "wrong_role_order", "'user' must come after 'system'"),
    (chat(("user", "a"), ("user", "b"), ("assistant", "c")), "wrong_role_order", "message 2 is 'user'"),
    (chat(("user", "a"), ("assistant", "b"), ("system", "c")), "wrong_role_order", "may only come first"),
    (chat(("user", "a")), "wrong_role_order", "the last message must be the assistant's"),
    (chat(("system", "only")), "wrong_role_order", "only a system message"),
    ({**GOOD_CHAT, "id": 7}, "unknown_field", "'id'"),
]


@pytest.mark.parametrize("line, code, reason", BAD_LINES, ids=[c + ":" + r for _, c, r in BAD_LINES])
def test_each_reason_is_reported_with_its_line(line, code, reason):
    parsed = parse_dataset(jsonl(GOOD_CHAT, "", line, GOOD_CHAT), **CAPS)
    assert [(e.line, e.code) for e in parsed.errors] == [(3, code)]
    assert reason in parsed.errors[0].message
    assert parsed.record_count == 2  # the good lines still parse: a file is fixed in one go


COMPLETION_BAD = [
    ({"prompt": "a"}, "missing_field", "missing field 'completion'"),
    ({"completion": "a"}, "missing_field", "missing field 'prompt'"),
    ({"prompt": "a", "completion": ""}, "empty", "empty 'completion'"),
    ({"prompt": None, "completion": "b"}, "invalid_field", "'prompt' must be a string, not null"),
    ({"prompt": "a", "completion": "b", "extra": 1}, "unknown_field", "'extra'"),
]


@pytest.mark.parametrize("line, code, reason", COMPLETION_BAD, ids=[r for _, _, r in COMPLETION_BAD])
def test_completion_reasons(line, code, reason):
    parsed = parse_dataset(jsonl({"prompt": "p", "completion": "c"}, line), **CAPS)
    assert [(e.line, e.code) for e in parsed.errors] == [(2, code)] and reason in parsed.errors[0].message


def test_every_bad_line_is_reported_not_just_the_first():
    data = jsonl(GOOD_CHAT, "nope", chat(("assistant", "x")), GOOD_CHAT, "", "{", chat(("user", "x")))
    parsed = parse_dataset(data, **CAPS)
    assert [(e.line, e.code) for e in parsed.errors] == [(2, "invalid_json"), (3, "wrong_role_order"),
                                                         (6, "invalid_json"), (7, "wrong_role_order")]
    summary = parsed.summary()
    assert summary.startswith("line 2: invalid JSON (Expecting value at column 1); line 3: wrong role order")
    assert "line 6:" in summary and "line 7:" in summary


def test_mixing_formats_is_an_error_on_the_line_that_differs():
    data = jsonl({"prompt": "p", "completion": "c"}, GOOD_CHAT, {"prompt": "q", "completion": "d"})
    parsed = parse_dataset(data, **CAPS)
    assert parsed.format == "completion"
    assert [(e.line, e.code) for e in parsed.errors] == [(2, "mixed_format")]
    assert "line 1 is completion" in parsed.errors[0].message


def test_invalid_utf8_names_the_line():
    data = json.dumps(GOOD_CHAT).encode() + b'\n{"prompt": "\xff\xfe", "completion": "x"}\n'
    assert errors(data) == [(2, "invalid_utf8")]


@pytest.mark.parametrize("data", [b"[" * 100_000, b'{"a": ' + b"1" * 5000 + b"}"], ids=["deep", "huge int"])
def test_json_that_python_cannot_hold_is_invalid_json(data):
    assert errors(jsonl(GOOD_CHAT) + b"\n" + data) == [(2, "invalid_json")]


def test_too_long_for_the_context_only_with_a_tokenizer():
    long = chat(("user", "word " * 50), ("assistant", "ok"))
    words = lambda text: len(text.split())  # noqa: E731
    data = jsonl(GOOD_CHAT, long)
    parsed = parse_dataset(data, **CAPS, max_tokens=40, count_tokens=words)
    assert [(e.line, e.code) for e in parsed.errors] == [(2, "too_long")]
    assert "about 59 tokens" in parsed.errors[0].message and "40" in parsed.errors[0].message
    assert parse_dataset(data, **CAPS, max_tokens=40).ok  # bytes are only a bound: the node counts exactly


@pytest.mark.parametrize("data", [b"", b"\n\n  \r\n"], ids=["empty", "blank lines"])
def test_an_empty_file_is_an_error(data):
    parsed = parse_dataset(data, **CAPS)
    assert parsed.errors == [LineError(None, "empty", "the file has no records (it is empty or only blank lines)")]
    assert str(parsed.errors[0]) == parsed.errors[0].message  # a whole-file error has no line number


def test_over_the_byte_cap():
    parsed = parse_dataset(jsonl(GOOD_CHAT, GOOD_CHAT), max_records=10, max_bytes=50)
    assert [(e.line, e.code) for e in parsed.errors] == [(None, "too_large")]
    assert "allows 50" in parsed.errors[0].message and parsed.record_count == 0


def test_over_the_record_cap_names_the_first_line_past_it():
    parsed = parse_dataset(jsonl(GOOD_CHAT, "", GOOD_CHAT, GOOD_CHAT, GOOD_CHAT), max_records=2, max_bytes=1 << 20)
    assert [(e.line, e.code) for e in parsed.errors] == [(4, "too_many_records")]
    assert "the file has 4 records; your plan allows 2" in parsed.errors[0].message


def test_the_list_of_errors_is_capped_with_a_count_of_the_rest():
    parsed = parse_dataset(b"\n".join([b"x"] * 250), max_records=1000, max_bytes=1 << 20)
    assert len(parsed.errors) == 100 and parsed.errors_omitted == 150 and parsed.error_count == 250
    assert parsed.errors[-1].line == 100
    assert parsed.summary().endswith("; and 150 more bad line(s)")


def test_as_dict():
    assert LineError(3, "invalid_json", "invalid JSON (x)").as_dict() == {"line": 3, "code": "invalid_json",
                                                                          "message": "invalid JSON (x)"}


# The runtime's convenience

def test_records_from_jsonl():
    assert records_from_jsonl(jsonl({"prompt": "a", "completion": "b"})) == [{"prompt": "a", "completion": "b"}]
    with pytest.raises(DatasetRejected) as info:
        records_from_jsonl(jsonl(GOOD_CHAT, "oops"))
    assert "1 bad line(s): line 2: invalid JSON" in str(info.value)
    assert info.value.parsed.errors[0].line == 2


def test_the_module_needs_neither_django_nor_torch():
    code = ("import sys, gpu_runtime.datasets; "
            "assert not {'django', 'torch'} & set(sys.modules), sorted(m for m in sys.modules if m in {'django', "
            "'torch'})")
    subprocess.run([sys.executable, "-c", code], check=True)
