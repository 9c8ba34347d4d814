"""JSON from clients, bounded in nesting: every request body (DRF's parser here, the async /v1 views through
``loads``) and every websocket message goes through ``loads``.

Python's decoder recurses once per level, so a body of 50,000 brackets raises RecursionError (a 500 unless refused);
and a value nested a few hundred levels deep parses but breaks whatever walks it recursively later (validation,
json.dumps into a row). Nothing VAJRA takes nests deeper than a handful of levels, so anything past
``MAX_JSON_DEPTH`` is refused as a 400 before any view sees it. NaN and Infinity are refused where DRF's strict
parser refuses them; elsewhere they reach the parameter checks, which name the parameter.
"""

import json

from rest_framework import parsers
from rest_framework.exceptions import ParseError

MAX_JSON_DEPTH = 64


class MalformedJSON(ParseError):
    """A 400 ``parse_error``, or ``json_too_deep`` for nesting past MAX_JSON_DEPTH."""


def _refuse_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _too_deep():
    return MalformedJSON(f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels; flatten the body.",
                         code="json_too_deep")


def depth_within(value, limit=MAX_JSON_DEPTH):
    """Whether ``value``'s objects and arrays nest at most ``limit`` deep (a scalar is depth 0); iterative, so it
    cannot itself run out of stack."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True


def loads(raw, *, constants=True):
    """The parsed value of ``raw`` (str or bytes), or MalformedJSON; ``constants=False`` refuses NaN and Infinity."""
    try:
        value = json.loads(raw, parse_constant=None if constants else _refuse_constant)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, digits past Python's limit, NaN
        raise MalformedJSON(f"JSON parse error - {exc}") from None
    if not depth_within(value):
        raise _too_deep()
    return value


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser through ``loads``: the same messages, and a depth bound."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding") or "utf-8"
        raw = stream.read() if stream is not None else b""
        try:
            text = raw.decode(encoding)
        except (LookupError, UnicodeDecodeError) as exc:
            raise MalformedJSON(f"JSON parse error - {exc}") from None
        return loads(text, constants=not self.strict)
