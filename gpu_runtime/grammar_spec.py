"""What a request's output must follow, as the web sends it and the node compiles it (gpu_runtime.grammar):
JSON only, no library, no torch, so the web refuses what the node cannot enforce before a row is written.

A grammar is one of

    {"type": "json_schema", "schema": {...}}                  the whole answer is JSON valid for the schema
                                                              (OpenAI's json_object: the schema {"type": "object"})
    {"type": "tool_call", "tools": [{"name", "parameters"}],  the answer calls one of the tools: with "required" it
     "choice": "required" | "auto"}                           must, with "auto" it may answer in text instead

A tool call is written as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (TOOL_CALL_OPEN/CLOSE): the
convention of models trained for tools (Hermes, Qwen) and what the chat template is told when it has no tools
support of its own (gpu_runtime.tool_prompt). With "auto", a plain-text answer never starts with ``<``, so the two
cannot be confused.

Schemas are bounded before anything compiles them: MAX_SCHEMA_BYTES of JSON, MAX_SCHEMA_DEPTH levels of nested
schemas, MAX_SCHEMA_NODES schemas in all, and lengths and counts up to MAX_REPEAT. Only the keywords in
SCHEMA_KEYWORDS are taken (each enforced by the grammar, or an annotation that changes nothing); any other is
refused, naming it and where it is, rather than silently not enforced. ``$ref`` points inside the schema
(``#``, ``#/$defs/...``, ``#/definitions/...``), recursion included.
"""

import json
import math
import re
from dataclasses import asdict, dataclass

from .contract import ContractError

MAX_SCHEMA_BYTES = 32_768
MAX_SCHEMA_DEPTH = 24
MAX_SCHEMA_NODES = 2_000
MAX_REPEAT = 4_096  # minLength/maxLength/minItems/maxItems
MAX_BOUND = 2 ** 53  # minimum/maximum/exclusive*/multipleOf: numbers a double holds exactly
MAX_TOOLS = 64
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
CHOICES = ("auto", "required")

ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "$schema", "$id", "deprecated",
               "readOnly", "writeOnly"}
SUBSCHEMA = {"items", "additionalProperties"}  # a schema (or a boolean)
SUBSCHEMA_LISTS = {"anyOf", "oneOf", "allOf", "prefixItems"}
SUBSCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions"}
SCHEMA_KEYWORDS = ANNOTATIONS | SUBSCHEMA | SUBSCHEMA_LISTS | SUBSCHEMA_MAPS | {
    "type", "required", "enum", "const", "$ref", "minItems", "maxItems", "minLength", "maxLength", "minProperties",
    "maxProperties", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "pattern", "format"}
TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
FORMATS = {"date-time", "date", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uuid", "uri"}
REPEATS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
LOCAL_REF = re.compile(r"^#(/(\$defs|definitions)/[^/]+)?$")
UNENFORCEABLE_PATTERN = re.compile(r"\(\?<?[=!]|\\[1-9]|\\k<")  # no grammar (a regular language) has these


class GrammarRefused(ContractError):
    """A grammar the node cannot enforce: ``param`` names where in the request (``response_format.json_schema.
    schema.properties.x``), the message names the feature."""

    def __init__(self, param, message):
        super().__init__(f"{param}: {message}")
        self.param, self.message = param, message


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_schema(schema, where="schema"):
    """Refuses (GrammarRefused) a JSON schema past the bounds or with a keyword the grammar cannot enforce."""
    if not isinstance(schema, dict):
        raise GrammarRefused(where, "a JSON schema is a JSON object")
    size = len(json.dumps(schema, ensure_ascii=False).encode())
    if size > MAX_SCHEMA_BYTES:
        raise GrammarRefused(where, f"the schema is {size} bytes of JSON, over the limit of {MAX_SCHEMA_BYTES}")
    nodes = 0
    stack = [(schema, where, 1)]  # iterative: a deep schema cannot exhaust the stack
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, bool):  # true: anything, false: nothing
            continue
        if not isinstance(node, dict):
            raise GrammarRefused(path, "a schema is a JSON object (or true / false)")
        nodes += 1
        if depth > MAX_SCHEMA_DEPTH or nodes > MAX_SCHEMA_NODES:
            raise GrammarRefused(path, f"schemas nest at most {MAX_SCHEMA_DEPTH} deep, {MAX_SCHEMA_NODES} in all")
        for key, value in node.items():
            at = f"{path}.{key}"
            if key not in SCHEMA_KEYWORDS:
                raise GrammarRefused(at, f"the JSON schema keyword {key!r} is not supported (supported: "
                                         f"{', '.join(sorted(SCHEMA_KEYWORDS - ANNOTATIONS))})")
            if key in SUBSCHEMA:
                stack.append((value, at, depth + 1))
            elif key in SUBSCHEMA_LISTS:
                if not isinstance(value, list) or (key != "prefixItems" and not value):
                    raise GrammarRefused(at, f"{key} is a non-empty list of schemas")
                stack.extend((item, f"{at}.{i}", depth + 1) for i, item in enumerate(value))
            elif key == "$ref":
                _check_keyword(key, value, at)
                kind, _, name = value[2:].partition("/")
                if value != "#" and not (isinstance(schema.get(kind), dict) and name in schema[kind]):
                    raise GrammarRefused(at, f"{value} points to no schema (a reference names one in the schema's "
                                             f"own $defs or definitions)")
            elif key in SUBSCHEMA_MAPS:
                if not isinstance(value, dict):
                    raise GrammarRefused(at, f"{key} maps names to schemas")
                if key == "patternProperties":
                    for name in value:
                        _check_keyword("pattern", name, f"{at}.{name}")
                stack.extend((item, f"{at}.{name}", depth + 1) for name, item in value.items())
            else:
                _check_keyword(key, value, at)


def _check_keyword(key, value, at):
    if key == "type":
        types = value if isinstance(value, list) else [value]
        if not types or not all(isinstance(t, str) and t in TYPES for t in types):
            raise GrammarRefused(at, f"type is one of {', '.join(sorted(TYPES))} (or a list of them)")
    elif key == "required":
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            raise GrammarRefused(at, "required is a list of property names")
    elif key == "enum":
        if not isinstance(value, list) or not value:
            raise GrammarRefused(at, "enum is a non-empty list")
    elif key == "$ref":
        if not isinstance(value, str) or not LOCAL_REF.match(value):
            raise GrammarRefused(at, "only references inside the schema are supported: '#', '#/$defs/<name>' or "
                                     "'#/definitions/<name>'")
    elif key in REPEATS:
        if not _is_int(value) or not 0 <= value <= MAX_REPEAT:
            raise GrammarRefused(at, f"{key} is an integer in 0..{MAX_REPEAT}")
    elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
        # an int of any size would overflow math.isfinite; past 2^53 the matcher cannot hold it exactly anyway
        number = _is_int(value) or (isinstance(value, float) and math.isfinite(value))
        if not number or not -MAX_BOUND <= value <= MAX_BOUND:
            raise GrammarRefused(at, f"{key} is a number in -2^53..2^53")
        if key == "multipleOf" and value <= 0:
            raise GrammarRefused(at, "multipleOf is a number above 0")
    elif key == "pattern":
        if not isinstance(value, str) or len(value) > 1000:
            raise GrammarRefused(at, "pattern is a regular expression of at most 1000 characters")
        try:
            re.compile(value)
        except (re.error, RecursionError, OverflowError):
            raise GrammarRefused(at, "pattern is not a valid regular expression") from None
        if UNENFORCEABLE_PATTERN.search(value):
            raise GrammarRefused(at, "lookahead, lookbehind and backreferences in a pattern are not supported")
    elif key == "format":
        if value not in FORMATS:
            raise GrammarRefused(at, f"the string format {value!r} is not supported (supported: "
                                     f"{', '.join(sorted(FORMATS))})")


@dataclass(frozen=True)
class Grammar:
    """A checked grammar (see the module's docstring); ``from_json`` checks a received one again."""

    type: str
    schema: dict | None = None
    tools: tuple = ()  # ({"name", "parameters"}, ...)
    choice: str = "required"

    @classmethod
    def json_schema(cls, schema, where="schema"):
        check_schema(schema, where)
        return cls("json_schema", schema=schema)

    @classmethod
    def tool_call(cls, tools, choice, where="tools"):
        if choice not in CHOICES:
            raise GrammarRefused("tool_choice", f"one of {', '.join(CHOICES)}")
        if not isinstance(tools, (list, tuple)) or not 0 < len(tools) <= MAX_TOOLS:
            raise GrammarRefused(where, f"from 1 to {MAX_TOOLS} tools")
        names = set()
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or set(tool) != {"name", "parameters"}:
                raise GrammarRefused(f"{where}.{i}", "a tool is {name, parameters}")
            name = tool["name"]
            if not isinstance(name, str) or not TOOL_NAME.match(name):
                raise GrammarRefused(f"{where}.{i}.function.name", "a function name is 1 to 64 letters, digits, "
                                                                  "underscores or dashes")
            if name in names:
                raise GrammarRefused(f"{where}.{i}.function.name", f"two tools are named {name!r}")
            names.add(name)
            check_schema(tool["parameters"], f"{where}.{i}.function.parameters")
            if tool["parameters"].get("type", "object") != "object":
                raise GrammarRefused(f"{where}.{i}.function.parameters.type", "a function's parameters are an "
                                                                               "object")
        # parameters without a type are an object all the same: the call's arguments are one
        return cls("tool_call", tools=tuple({**tool, "parameters": {"type": "object", **tool["parameters"]}}
                                            for tool in tools), choice=choice)

    @classmethod
    def from_json(cls, payload):
        if not isinstance(payload, dict) or payload.get("type") not in ("json_schema", "tool_call"):
            raise ContractError("grammar: {type: json_schema | tool_call, ...}")
        if payload["type"] == "json_schema":
            if set(payload) - {"type", "schema", "tools", "choice"}:
                raise ContractError("grammar: unknown fields")
            return cls.json_schema(payload.get("schema"))
        return cls.tool_call(payload.get("tools"), payload.get("choice"))

    def to_json(self):
        data = asdict(self)
        data["tools"] = list(self.tools)
        return data

