"""Structured output and tools on the web, without a runtime: hostile and unsupported response formats, schemas and
tools are refused in the one error shape before a row is written or a task sent; what the runtime receives (the
grammar, the tools, the conversation with earlier calls); an answer's text read back as OpenAI's tool calls, whole
and streamed (the runtime's token stream faked); and the shared pieces (schema checks, the contract's messages, the
prompt a template without tools support gets)."""

import json

import pytest

from gpu_runtime.contract import ContractError
from gpu_runtime.generation import GenerationRequest
from gpu_runtime.grammar_spec import FORMATS, MAX_SCHEMA_BYTES, Grammar, GrammarRefused, check_schema
from gpu_runtime.tool_prompt import prompt_messages
from serving.models import InferenceRequest
from serving.structured import ToolCallReader, read_answer
from tests.factories import create_key
from tests.fixtures.structured import SCHEMAS, TOOLS, WEATHER
from tests.helpers import assert_error, bearer_client, post_json, sse_data

BASE = "smollm2-135m-instruct"
CHAT = "/v1/chat/completions"


@pytest.fixture
def alice_api(alice, acme):
    return bearer_client(create_key(alice, acme)[1])


def chat(**extra):
    return {"model": BASE, "messages": [{"role": "user", "content": "Hi"}], **extra}


def json_schema(schema, name="answer"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def deep(levels):
    schema = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def tool(name="f", parameters=None, **function):
    return {"type": "function", "function": {"name": name, **({"parameters": parameters} if parameters is not None
                                                               else {}), **function}}


HUGE = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 1000} for i in range(10_000)}}
REFUSALS = [
    (chat(response_format={"type": "xml"}), "unsupported_value", "response_format.type"),
    (chat(response_format="json"), "invalid_type", "response_format"),
    (chat(response_format={"type": "json_object", "schema": {}}), "unknown_field", "response_format"),
    (chat(response_format={"type": "json_schema"}), "invalid_type", "response_format.json_schema"),
    (chat(response_format={"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}), "invalid_type",
     "response_format.json_schema"),
    (chat(response_format=json_schema([1, 2])), "invalid_type", "response_format.json_schema"),
    (chat(response_format=json_schema(HUGE)), None, None),  # 10 MB: past the body limit or the schema's
    (chat(response_format=json_schema({"type": "object", "properties": {
        "d": {"description": "x" * MAX_SCHEMA_BYTES}}})), "unsupported_schema", "response_format.json_schema.schema"),
    (chat(response_format=json_schema(deep(40))), None, None),  # past the JSON depth limit or the schema's
    (chat(response_format=json_schema(deep(30))), "unsupported_schema", None),
    (chat(response_format=json_schema({"type": "object", "not": {"type": "null"}})), "unsupported_schema",
     "response_format.json_schema.schema.not"),
    (chat(response_format=json_schema({"type": "object", "properties": {"x": {"type": "array",
                                                                              "uniqueItems": True}}})),
     "unsupported_schema", "response_format.json_schema.schema.properties.x.uniqueItems"),
    (chat(response_format=json_schema({"type": "string", "format": "credit-card"})), "unsupported_schema",
     "response_format.json_schema.schema.format"),
    (chat(response_format=json_schema({"$ref": "https://example.com/s.json"})), "unsupported_schema",
     "response_format.json_schema.schema.$ref"),
    (chat(response_format=json_schema({"type": "object", "properties": {"a": {"$ref": "#/$defs/none"}}})),
     "unsupported_schema", "response_format.json_schema.schema.properties.a.$ref"),
    (chat(response_format=json_schema({"type": "tuple"})), "unsupported_schema",
     "response_format.json_schema.schema.type"),
    (chat(response_format=json_schema({"type": "string", "maxLength": 10 ** 9})), "unsupported_schema",
     "response_format.json_schema.schema.maxLength"),
    (chat(tools=[tool("f"), tool("f")]), "duplicate_tool", "tools.1.function.name"),
    (chat(tools=[tool("no spaces")]), None, "tools.0.function.name"),
    (chat(tools=[tool("x" * 65)]), None, "tools.0.function.name"),
    (chat(tools=[tool("f", [1])]), "unsupported_schema", "tools.0.function.parameters"),
    (chat(tools=[tool("f", {"type": "string"})]), "unsupported_schema", "tools.0.function.parameters.type"),
    (chat(tools=[tool("f", {"type": "object", "if": {}})]), "unsupported_schema", "tools.0.function.parameters.if"),
    (chat(tools=[{"type": "retrieval", "function": {"name": "f"}}]), None, "tools.0.type"),
    (chat(tools=[tool("f")], tool_choice={"type": "function", "function": {"name": "g"}}), "unknown_function",
     "tool_choice.function.name"),
    (chat(tools=[tool("f")], tool_choice="sometimes"), "invalid_type", "tool_choice"),
    (chat(tool_choice="required"), "invalid_value", "tool_choice"),
    (chat(tools=[tool("f")], response_format={"type": "json_object"}), "unsupported_value", "response_format"),
    (chat(tools=[tool("f")] * 65), None, "tools"),
    (chat(tools=[tool("f")], n=2), "unsupported_value", "n"),  # one choice when a call may come
    (chat(response_format={"type": "json_object"}, stop=["}"]), "unsupported_value", "stop"),
    (chat(tools=[tool("f")], stop="x"), "unsupported_value", "stop"),
    # an int past a float's range (math.isfinite would overflow), and NaN/Infinity anywhere (JSON has none)
    (chat(response_format=json_schema({"type": "integer", "minimum": 10 ** 400})), "unsupported_schema", None),
    (chat(response_format=json_schema({"type": "number", "maximum": 2.0 ** 60})), "unsupported_schema", None),
    (chat(tools=[tool("f", parameters={"type": "object", "default": float("nan")})]), "invalid",
     "tools.0.function.parameters"),
    (chat(response_format=json_schema({"enum": [1, float("inf")]})), "invalid", "response_format"),
    (chat(logit_bias={"1": 10 ** 400}), "out_of_range", "logit_bias"),
    (chat(tools=[tool("f")], tool_choice="required", n=3), "unsupported_value", "n"),
    (chat(messages=[{"role": "user", "content": None}]), None, "messages.0.content"),
    (chat(messages=[{"role": "user", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]), None,
     "messages.0.tool_calls"),
    (chat(messages=[{"role": "user", "content": "x", "tool_call_id": "c"}]), None, "messages.0.tool_call_id"),
]


@pytest.mark.parametrize("body, code, param", REFUSALS, ids=[f"refusal-{i}" for i in range(len(REFUSALS))])
def test_refusals_write_nothing(alice_api, catalog, node, unchanged_db, runtime, body, code, param):
    with unchanged_db():
        response = post_json(alice_api, CHAT, body)
        error = assert_error(response, response.status_code, code=code, param=param)
    assert 400 <= response.status_code < 500, error
    assert InferenceRequest.objects.count() == 0 and runtime.sent == []


def test_a_refusal_names_the_feature(alice_api, catalog, node, runtime):
    body = chat(response_format=json_schema({"type": "object", "properties": {"tags": {"type": "array",
                                                                                         "contains": {}}}}))
    error = assert_error(post_json(alice_api, CHAT, body), 400, code="unsupported_schema")
    assert "'contains' is not supported" in error["message"]


def test_the_runtime_receives_the_grammar_and_the_conversation(alice_api, catalog, node, runtime):
    answer = post_json(alice_api, CHAT, chat(response_format=json_schema(SCHEMAS["nested"])))
    assert answer.status_code == 200, answer.content
    payload = runtime.sent[-1]
    assert payload["grammar"] == {"type": "json_schema", "schema": SCHEMAS["nested"], "tools": [],
                                  "choice": "required"}
    assert "tools" not in payload
    assert GenerationRequest.from_json(payload).grammar == Grammar.json_schema(SCHEMAS["nested"])

    earlier = {"id": "call_1", "type": "function",
               "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}
    conversation = [{"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": None, "tool_calls": [earlier]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"}]
    answer = post_json(alice_api, CHAT, {"model": BASE, "messages": conversation, "tools": TOOLS,
                                         "tool_choice": {"type": "function", "function": {"name": "get_time"}}})
    assert answer.status_code == 200, answer.content
    payload = runtime.sent[-1]
    assert [t["name"] for t in payload["tools"]] == ["get_weather", "get_time"]  # the prompt shows every tool
    assert payload["grammar"]["type"] == "tool_call" and payload["grammar"]["choice"] == "required"
    assert [t["name"] for t in payload["grammar"]["tools"]] == ["get_time"]  # the call is of the named one
    assert payload["messages"][1] == {"role": "assistant", "content": "", "tool_calls": conversation[1]["tool_calls"]}
    assert payload["messages"][2] == conversation[2]
    request = GenerationRequest.from_json(payload)
    assert request.grammar.tools == ({"name": "get_time", "parameters": TIME_PARAMETERS},)

    post_json(alice_api, CHAT, chat(tools=TOOLS, tool_choice="none"))
    assert "tools" not in runtime.sent[-1] and "grammar" not in runtime.sent[-1]  # none: free text, no tools


TIME_PARAMETERS = TOOLS[1]["function"]["parameters"]
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris \\"}{", "unit": "celsius"}}</tool_call>'


def test_a_tool_call_answer_whole_and_streamed(alice_api, catalog, node, runtime):
    runtime.deltas = [{"text": t} for t in (CALL[:5], CALL[5:20], CALL[20:47], CALL[47:60], CALL[60:])]
    answer = post_json(alice_api, CHAT, chat(tools=[WEATHER], tool_choice="required")).json()
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call, = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": 'Paris "}{', "unit": "celsius"}

    chunks = [json.loads(d) for d in sse_data(post_json(alice_api, CHAT, chat(tools=[WEATHER], stream=True)))
              if d != "[DONE]"]
    deltas = [c["choices"][0]["delta"] for c in chunks[1:]]
    calls = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    assert calls[0]["index"] == 0 and calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == \
        "get_weather"
    assert "".join(c["function"]["arguments"] for c in calls) == call["function"]["arguments"]
    assert all("content" not in d for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_auto_answers_in_text_when_no_call_comes(alice_api, catalog, node, runtime):
    runtime.deltas = [{"text": t} for t in ("<", "b>bold", " text")]  # "<" alone could start a call: held back
    answer = post_json(alice_api, CHAT, chat(tools=TOOLS)).json()
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "<b>bold text", "refusal": None}
    assert answer["choices"][0]["finish_reason"] == "stop"
    chunks = [json.loads(d) for d in sse_data(post_json(alice_api, CHAT, chat(tools=TOOLS, stream=True)))
              if d != "[DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "<b>bold text"


def test_a_tool_call_cut_by_max_tokens_finishes_length(alice_api, catalog, node, runtime):
    runtime.deltas = [{"text": CALL[:50]}]
    runtime.final = {**runtime.final, "finish_reason": "length"}
    answer = post_json(alice_api, CHAT, chat(tools=TOOLS, tool_choice="required")).json()
    assert answer["choices"][0]["finish_reason"] == "length"


def test_the_reader_streams_what_it_reads_whole():
    for cut in range(1, len(CALL)):
        reader = ToolCallReader()
        events = reader.feed(CALL[:cut]) + reader.feed(CALL[cut:]) + reader.finish()
        assert "".join(e[1] for e in events if e[0] == "arguments") == read_answer(CALL)[1][0]["function"]["arguments"]
    assert read_answer("<tool") == ("<tool", [])  # a stream that ended inside what looked like a call: text


def test_schema_checks():
    for schema in SCHEMAS.values():
        check_schema(schema)
    with pytest.raises(GrammarRefused) as refused:
        check_schema({"properties": {"a": {"propertyNames": {"maxLength": 3}}}})
    assert refused.value.param == "schema.properties.a.propertyNames"
    with pytest.raises(GrammarRefused):
        check_schema({"anyOf": []})
    with pytest.raises(GrammarRefused):
        Grammar.tool_call([{"name": "f", "parameters": {}}, {"name": "f", "parameters": {}}], "auto")


def test_the_contract_takes_tool_messages_strictly():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    good = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"}]
    assert len(GenerationRequest.from_json({"request_id": "r", "messages": good}).messages) == 3
    for bad in ([{"role": "tool", "content": "42"}], [{"role": "user", "content": "x", "tool_calls": [call]}],
                [{"role": "assistant", "content": "", "tool_calls": [{**call, "type": "code"}]}],
                [{"role": "assistant", "content": "", "tool_calls": [{**call, "extra": 1}]}],
                [{"role": "assistant", "content": "", "tool_calls": []}], [{"role": "robot", "content": "x"}]):
        with pytest.raises(ContractError):
            GenerationRequest.from_json({"request_id": "r", "messages": bad})
    with pytest.raises(ContractError):
        GenerationRequest.from_json({"request_id": "r", "prompt": "x", "grammar": {"type": "regex"}})
    with pytest.raises(ContractError):  # the node checks a grammar again
        GenerationRequest.from_json({"request_id": "r", "prompt": "x",
                                     "grammar": {"type": "json_schema", "schema": {"not": {}}}})


def test_a_template_without_tools_gets_them_in_the_system_message():
    call = {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": '{"timezone": "UTC"}'}}
    messages = [{"role": "user", "content": "Time?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "12:00", "tool_call_id": "c1"}]
    tools = [{"name": "get_time", "description": "The time.", "parameters": TIME_PARAMETERS}]
    rendered, template_tools = prompt_messages(messages, tools, "{{ messages }}")
    assert template_tools is None and rendered[0]["role"] == "system" and '"name": "get_time"' in rendered[0]["content"]
    assert rendered[2] == {"role": "assistant", "content": '<tool_call>{"name": "get_time", "arguments": '
                                                           '{"timezone": "UTC"}}</tool_call>'}
    assert rendered[3] == {"role": "user", "content": "<tool_response>\n12:00\n</tool_response>"}
    rendered, template_tools = prompt_messages(messages, tools, "{% for tool in tools %}{% endfor %}")
    assert template_tools == [{"type": "function", "function": tools[0]}]
    assert rendered[1]["tool_calls"][0]["function"]["arguments"] == {"timezone": "UTC"}


KEYWORD_EXAMPLES = {  # one schema per keyword the web takes, each compiled by the node's matcher below
    "type": {"type": ["string", "null"]}, "properties": {"properties": {"a": {}}}, "required": {"required": ["a"]},
    "additionalProperties": {"additionalProperties": False}, "items": {"items": {"type": "integer"}},
    "prefixItems": {"prefixItems": [{"type": "string"}]}, "enum": {"enum": [1, "a", None]}, "const": {"const": 3},
    "anyOf": {"anyOf": [{"type": "string"}, {"type": "integer"}]}, "oneOf": {"oneOf": [{"type": "string"}]},
    "allOf": {"allOf": [{"type": "object"}, {"required": ["a"]}]}, "$ref": {"$ref": "#/$defs/a", "$defs": {"a": {}}},
    "$defs": {"$defs": {"a": {"type": "string"}}}, "definitions": {"definitions": {"a": {"type": "string"}}},
    "patternProperties": {"type": "object", "patternProperties": {"^x": {"type": "integer"}}},
    "minItems": {"minItems": 1}, "maxItems": {"maxItems": 4096}, "minLength": {"minLength": 2},
    "maxLength": {"maxLength": 4096}, "minProperties": {"minProperties": 1}, "maxProperties": {"maxProperties": 3},
    "minimum": {"minimum": -1.5}, "maximum": {"maximum": 10}, "exclusiveMinimum": {"exclusiveMinimum": 0},
    "exclusiveMaximum": {"exclusiveMaximum": 1}, "multipleOf": {"type": "integer", "multipleOf": 3},
    "pattern": {"type": "string", "pattern": "^[a-z]+-[0-9]{2}$"},
    "format": {"anyOf": [{"type": "string", "format": f} for f in sorted(FORMATS)]},
}


def test_every_keyword_the_web_takes_compiles_and_every_one_it_refuses_would_not_be_enforced():
    import llguidance

    from gpu_runtime.grammar import lark_of
    from gpu_runtime.grammar_spec import ANNOTATIONS, SCHEMA_KEYWORDS

    assert set(KEYWORD_EXAMPLES) | ANNOTATIONS == SCHEMA_KEYWORDS
    for keyword, schema in [*KEYWORD_EXAMPLES.items(), *((k, {k: "x"}) for k in ANNOTATIONS - {"$schema", "$id"})]:
        grammar = Grammar("json_schema", schema=schema)
        error = llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(lark_of(grammar)))
        assert not error, (keyword, error)
    for keyword in ("not", "if", "uniqueItems", "contains", "propertyNames", "dependentRequired",
                    "unevaluatedProperties", "dependentSchemas"):
        grammar = Grammar("json_schema", schema={keyword: {}})
        error = llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(lark_of(grammar)))
        assert "Unimplemented" in error, keyword
        with pytest.raises(GrammarRefused):
            check_schema({keyword: {}})


def test_tool_parameters_without_a_type_are_an_object_and_deep_arguments_stay_text():
    from gpu_runtime.grammar_spec import Grammar
    from gpu_runtime.tool_prompt import _parsed

    grammar = Grammar.tool_call([{"name": "f", "parameters": {"properties": {"a": {"type": "integer"}}}}], "required")
    assert grammar.tools[0]["parameters"] == {"type": "object", "properties": {"a": {"type": "integer"}}}
    deep = "[" * 100_000 + "]" * 100_000  # past the JSON parser's recursion: the template gets the text as it came
    assert _parsed(deep) == deep and _parsed('{"a": 1}') == {"a": 1}
