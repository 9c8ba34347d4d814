"""Structured output and tools through the official ``openai`` package, unmodified, against real processes (daphne,
a runtime node with SmolLM2, the control worker): response_format json_schema and json_object answers parse and
validate; every tool_choice (auto, none, required, a named function) answers as OpenAI does, whole and streamed
(tool-call deltas reassembled by the SDK's own stream helper), the call's arguments valid for the function's
schema; a conversation carrying the call and the tool's result goes on; a hostile schema is the client's
BadRequestError with no row written."""

import json

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI

from serving.models import InferenceRequest
from tests.factories import create_key
from tests.fixtures.structured import SCHEMAS, TOOLS
from tests.processes import wait_for, wait_until_serving

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture
def client(daphne, runtime_node, control_worker, alice, acme):
    wait_until_serving(MODEL, runtime_node, 180)
    _, secret = create_key(alice, acme)
    return OpenAI(base_url=f"{daphne}/v1", api_key=secret, max_retries=0, timeout=600,
                  http_client=httpx.Client(timeout=600))


def settle():
    wait_for(lambda: not InferenceRequest.objects.exclude(status__in=InferenceRequest.TERMINAL).exists(), 240,
             "the control worker to record every final event")


def check_call(call, names=tuple(PARAMETERS)):
    assert call.id.startswith("call_") and call.type == "function" and call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


def test_response_formats(client):
    for name in ("person", "enum_and_array"):
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"An example {name} record."}], temperature=0,
            max_tokens=120, response_format={"type": "json_schema", "json_schema": {
                "name": name, "schema": SCHEMAS[name], "strict": True}})
        settle()
        assert answer.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(answer.choices[0].message.content), SCHEMAS[name])
    answer = client.chat.completions.create(model=MODEL, messages=WEATHER, max_tokens=40, seed=3,
                                            response_format={"type": "json_object"})
    settle()
    content = answer.choices[0].message.content  # any object: this small model may write on past max_tokens
    assert content.startswith("{") and (answer.choices[0].finish_reason == "length" or
                                        isinstance(json.loads(content), dict))

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=WEATHER, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "not": {}}}})
    assert refused.value.code == "unsupported_schema" and "'not'" in refused.value.message
    assert InferenceRequest.objects.count() == 3


def test_every_tool_choice_whole_and_streamed(client):
    required = client.chat.completions.create(model=MODEL, messages=WEATHER, tools=TOOLS, tool_choice="required",
                                              temperature=0, max_tokens=100)
    settle()
    choice = required.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call, = choice.message.tool_calls
    check_call(call)

    named = client.chat.completions.create(model=MODEL, messages=WEATHER, tools=TOOLS, max_tokens=100,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
    settle()
    check_call(named.choices[0].message.tool_calls[0], names=("get_time",))

    none = client.chat.completions.create(model=MODEL, messages=WEATHER, tools=TOOLS, tool_choice="none",
                                          temperature=0, max_tokens=20)
    settle()
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content

    auto = client.chat.completions.create(model=MODEL, messages=WEATHER, tools=TOOLS, temperature=0, max_tokens=100)
    settle()
    if auto.choices[0].message.tool_calls:
        assert auto.choices[0].finish_reason == "tool_calls"
        check_call(auto.choices[0].message.tool_calls[0])
    else:
        assert auto.choices[0].message.content and not auto.choices[0].message.content.startswith("<")

    # streamed: the SDK's stream helper puts the tool-call deltas back together
    with client.chat.completions.stream(model=MODEL, messages=WEATHER, tools=TOOLS, tool_choice="required",
                                        temperature=0, max_tokens=100) as stream:
        chunks = [event for event in stream if event.type == "chunk"]
        streamed = stream.get_final_completion()
    settle()
    deltas = [c.chunk.choices[0].delta for c in chunks if c.chunk.choices]
    assert sum(1 for d in deltas if d.tool_calls and d.tool_calls[0].id) == 1  # the id and name once, first
    assert streamed.choices[0].finish_reason == "tool_calls"
    assert streamed.choices[0].message.tool_calls[0].function.name == call.function.name
    assert streamed.choices[0].message.tool_calls[0].function.arguments == call.function.arguments  # greedy: same

    # the call and the tool's answer go back into the conversation
    after = client.chat.completions.create(model=MODEL, tools=TOOLS, tool_choice="none", temperature=0,
                                           max_tokens=30, messages=WEATHER + [
                                               choice.message.model_dump(exclude_none=True),
                                               {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"}])
    settle()
    assert after.choices[0].message.content
    rows = InferenceRequest.objects.all()
    assert rows.count() == 6 and all(r.status == "succeeded" for r in rows)
