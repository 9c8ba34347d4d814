"""Structured output and tools in the OpenAI-compatible chat API: what a request's ``response_format``, ``tools``
and ``tool_choice`` ask of the answer (a gpu_runtime.grammar_spec.Grammar, checked here before a row is written),
and the answer's text turned back into OpenAI's ``tool_calls``, whole or as stream deltas.

    response_format  {"type": "text"}                     free text (the default)
                     {"type": "json_object"}              a JSON object
                     {"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}
                                                          JSON valid for the schema (``strict`` or not: enforced)
    tools            [{"type": "function", "function": {"name", "description", "parameters", "strict"}}]
    tool_choice      "none" (tools not shown, free text), "auto" (the default with tools: a call or text),
                     "required" (a call of one of them), {"type": "function", "function": {"name"}} (that one)

One call per answer (``parallel_tool_calls`` is accepted either way). ``response_format`` other than text together
with tools that may be called is refused.
"""

import json
import re
import uuid

from rest_framework import serializers

from gpu_runtime.grammar_spec import MAX_TOOLS, TOOL_CALL_OPEN, TOOL_NAME, Grammar, GrammarRefused
from vajra.errors import InvalidRequest

JSON_OBJECT = {"type": "object"}
EMPTY_PARAMETERS = {"type": "object", "properties": {}}
MAX_DESCRIPTION = 4096
CALL_HEAD = re.compile(r'\{"name": "([A-Za-z0-9_-]+)", "arguments": ')  # gpu_runtime.grammar writes calls so


class FunctionIn(serializers.Serializer):
    name = serializers.CharField(max_length=64)
    description = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=MAX_DESCRIPTION)
    parameters = serializers.JSONField(required=False, allow_null=True)
    strict = serializers.BooleanField(required=False, allow_null=True)

    def validate_name(self, value):
        if not TOOL_NAME.match(value):
            raise serializers.ValidationError("a function name is 1 to 64 letters, digits, underscores or dashes.")
        return value


class ToolIn(serializers.Serializer):
    type = serializers.ChoiceField(choices=["function"])
    function = FunctionIn()


class CallFunctionIn(serializers.Serializer):
    name = serializers.CharField(max_length=64)
    arguments = serializers.CharField(allow_blank=True, max_length=32_768, trim_whitespace=False)


class ToolCallIn(serializers.Serializer):
    """An earlier call, in an assistant message of the conversation."""

    id = serializers.CharField(max_length=64)
    type = serializers.ChoiceField(choices=["function"])
    function = CallFunctionIn()


def tools_field():
    return serializers.ListField(child=ToolIn(), required=False, allow_null=True, max_length=MAX_TOOLS)


def refused(exc):
    return InvalidRequest(f"{exc.param}: {exc.message}.", param=exc.param, code="unsupported_schema")


def _response_format(value):
    """The Grammar a response_format asks for, or None for text."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise InvalidRequest('response_format is {"type": "text" | "json_object" | "json_schema", ...}.',
                             param="response_format", code="invalid_type")
    kind, extra = value["type"], set(value) - {"type"}
    if kind in ("text", "json_object") and extra:
        raise InvalidRequest(f"response_format of type {kind} takes no other field (got {sorted(extra)}).",
                             param="response_format", code="unknown_field")
    if kind == "text":
        return None
    if kind == "json_object":
        return Grammar.json_schema(JSON_OBJECT)
    if kind != "json_schema":
        raise InvalidRequest(f"response_format.type {json.dumps(kind)[:40]} is not supported; use text, json_object "
                             "or json_schema.", param="response_format.type", code="unsupported_value")
    spec = value.get("json_schema")
    if extra != {"json_schema"} or not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict) or \
            set(spec) - {"name", "schema", "strict", "description"} or \
            not isinstance(spec.get("name"), str) or not TOOL_NAME.match(spec["name"]) or \
            not isinstance(spec.get("strict", False), (bool, type(None))) or \
            not isinstance(spec.get("description", ""), (str, type(None))):
        raise InvalidRequest('response_format is {"type": "json_schema", "json_schema": {"name": 1 to 64 letters, '
                             'digits, _ or -, "schema": a JSON schema object, "strict": true|false, "description"}}.',
                             param="response_format.json_schema", code="invalid_type")
    return Grammar.json_schema(spec["schema"], where="response_format.json_schema.schema")


def _tool_choice(value, names):
    """(choice, the one tool's name or None) of a tool_choice."""
    if value is None:
        return ("auto" if names else "none"), None
    if value in ("none", "auto", "required"):
        if value != "none" and not names:
            raise InvalidRequest(f"tool_choice {value} needs tools.", param="tool_choice", code="invalid_value")
        return value, None
    function = value.get("function") if isinstance(value, dict) else None
    if not (isinstance(value, dict) and set(value) == {"type", "function"} and value["type"] == "function"
            and isinstance(function, dict) and set(function) == {"name"} and isinstance(function["name"], str)):
        raise InvalidRequest('tool_choice is "none", "auto", "required" or {"type": "function", "function": '
                             '{"name": ...}}.', param="tool_choice", code="invalid_type")
    if function["name"] not in names:
        raise InvalidRequest(f"tool_choice names the function {json.dumps(function['name'])[:70]}, which is not "
                             "among the tools.", param="tool_choice.function.name", code="unknown_function")
    return "required", function["name"]


def output_of(data):
    """(tools for the prompt, Grammar or None) of a validated chat request; InvalidRequest (400) for what cannot be
    enforced, naming it."""
    tools = [{"name": t["function"]["name"], "description": t["function"].get("description") or None,
              "parameters": EMPTY_PARAMETERS if t["function"].get("parameters") is None
              else t["function"]["parameters"]} for t in data.get("tools") or []]
    names = [tool["name"] for tool in tools]
    duplicate = next((i for i, name in enumerate(names) if name in names[:i]), None)
    if duplicate is not None:
        raise InvalidRequest(f"two tools are named {names[duplicate]}; function names must be unique.",
                             param=f"tools.{duplicate}.function.name", code="duplicate_tool")
    try:
        grammar = _response_format(data.get("response_format"))
        choice, named = _tool_choice(data.get("tool_choice"), names)
        if tools:  # every tool is checked, whether or not this answer may call it
            Grammar.tool_call([{"name": t["name"], "parameters": t["parameters"]} for t in tools], "required")
        if choice == "none":
            return [], grammar
        if grammar is not None:
            raise InvalidRequest("response_format json_object or json_schema cannot be combined with tools that may "
                                 'be called; use tool_choice "none" or leave response_format out.',
                                 param="response_format", code="unsupported_value")
        called = [t for t in tools if named is None or t["name"] == named]
        grammar = Grammar.tool_call([{"name": t["name"], "parameters": t["parameters"]} for t in called], choice)
    except GrammarRefused as exc:
        raise refused(exc) from None
    return tools, grammar


def new_call_id():
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallReader:
    """Reads an answer's text as it streams: plain content, or one tool call (its name once known, then its
    arguments as they come). ``feed`` and ``finish`` return events: ("content", text), ("call", id, name),
    ("arguments", text)."""

    def __init__(self):
        self.state, self.buffer = "start", ""
        self.depth, self.in_string, self.escaped = 0, False, False
        self.call = None  # (id, name) once the call's name is known
        self.arguments = []

    def feed(self, text):
        self.buffer += text
        events = []
        if self.state == "start":
            if self.buffer.startswith(TOOL_CALL_OPEN):
                self.state, self.buffer = "head", self.buffer[len(TOOL_CALL_OPEN):]
            elif not TOOL_CALL_OPEN.startswith(self.buffer):
                self.state = "content"
        if self.state == "content":
            if self.buffer:
                events.append(("content", self.buffer))
            self.buffer = ""
        if self.state == "head":
            head = CALL_HEAD.match(self.buffer)
            if head:
                self.call = (new_call_id(), head.group(1))
                events.append(("call", *self.call))
                self.state, self.buffer = "arguments", self.buffer[head.end():]
        if self.state == "arguments":
            events += self._arguments()
        return events

    def _arguments(self):
        taken = 0
        for i, char in enumerate(self.buffer):
            taken = i + 1
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.state = "done"
                    break
        piece, self.buffer = self.buffer[:taken], ""  # what follows the arguments is the call's closing
        if piece:
            self.arguments.append(piece)
            return [("arguments", piece)]
        return []

    def finish(self):
        """Events for what is still held: text that only looked like the start of a call."""
        if self.state == "start" and self.buffer:
            self.state, events = "content", [("content", self.buffer)]
            self.buffer = ""
            return events
        return []


def read_answer(text):
    """(content or None, [tool call]) of a whole answer."""
    reader = ToolCallReader()
    events = reader.feed(text) + reader.finish()
    content = "".join(e[1] for e in events if e[0] == "content")
    if reader.call is None:
        return content, []
    return content or None, [{"id": reader.call[0], "type": "function",
                              "function": {"name": reader.call[1], "arguments": "".join(reader.arguments)}}]


def call_delta(event):
    """A ToolCallReader event as a chunk's delta (OpenAI's tool-call deltas: the call's id and name first, then
    pieces of its arguments)."""
    if event[0] == "content":
        return {"content": event[1]}
    if event[0] == "call":
        return {"tool_calls": [{"index": 0, "id": event[1], "type": "function",
                                "function": {"name": event[2], "arguments": ""}}]}
    return {"tool_calls": [{"index": 0, "function": {"arguments": event[1]}}]}
