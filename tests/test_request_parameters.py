"""One definition of the sampling parameters (serving/parameters.py): the same bad value gets the same refusal
(status, code, param, message) from POST /v1/models/{id}/infer, /v1/chat/completions, /v1/completions and the
playground websocket, and nothing is written or sent. A malformed Last-Event-ID is a 400, a valid one resumes.

pytest-asyncio is not installed: the websocket is driven with ``async_to_sync`` (see tests/test_playground_ws.py).
"""

import json

import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from adapters.models import BaseModel
from gpu_runtime.contract import stream_key
from gpu_runtime.generation import MAX_SEED, MAX_STOP_LENGTH, MAX_TOKENS, MAX_TOP_K
from gpu_runtime.streams import StreamWriter
from serving import consumers, openai_api, parameters, v1
from serving.models import InferenceRequest
from tests.factories import create_key, make_node, make_request
from tests.helpers import assert_error
from tests.ws_helpers import WAIT_S, Communicator
from vajra.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

BASE, NODE = "params-base", "params-node"
NAN, INF = float("nan"), float("inf")

# (parameter, bad value, code): every row is refused the same way by all three ways in
BAD = [
    ("temperature", -0.1, "out_of_range"),
    ("temperature", 2.0001, "out_of_range"),
    ("temperature", 2 ** 70, "out_of_range"),
    ("temperature", -10 ** 400, "out_of_range"),  # past a float's range: compared as an int, never converted
    ("temperature", NAN, "invalid_type"),
    ("temperature", INF, "invalid_type"),
    ("temperature", True, "invalid_type"),
    ("temperature", "0.5", "invalid_type"),
    ("temperature", [0.5], "invalid_type"),
    ("top_p", 0, "out_of_range"),
    ("top_p", 1.5, "out_of_range"),
    ("top_p", -INF, "invalid_type"),
    ("top_p", {"value": 1}, "invalid_type"),
    ("top_k", -1, "out_of_range"),
    ("top_k", MAX_TOP_K + 1, "out_of_range"),
    ("top_k", 10 ** 30, "out_of_range"),
    ("top_k", 1.5, "invalid_type"),
    ("top_k", False, "invalid_type"),
    ("max_tokens", 0, "out_of_range"),
    ("max_tokens", MAX_TOKENS + 1, "out_of_range"),
    ("max_tokens", 2 ** 70, "out_of_range"),
    ("max_tokens", "100", "invalid_type"),
    ("max_tokens", 10.5, "invalid_type"),
    ("max_tokens", NAN, "invalid_type"),
    ("max_tokens", 3000, "max_tokens_exceeded"),  # within the runtime's bound, past the standard plan's 2048
    ("seed", -1, "out_of_range"),
    ("seed", MAX_SEED + 1, "out_of_range"),
    ("seed", 2 ** 70, "out_of_range"),
    ("seed", 1.5, "invalid_type"),
    ("seed", "7", "invalid_type"),
    ("seed", True, "invalid_type"),
    ("stop", ["a", "b", "c", "d", "e"], "out_of_range"),
    ("stop", ["x" * (MAX_STOP_LENGTH + 1)], "out_of_range"),
    ("stop", "", "out_of_range"),
    ("stop", [""], "out_of_range"),
    ("stop", [None], "invalid_type"),
    ("stop", ["a", 5], "invalid_type"),
    ("stop", 5, "invalid_type"),
    ("stop", {"a": "b"}, "invalid_type"),
    ("presence_penalty", 2.5, "out_of_range"),
    ("frequency_penalty", -2.01, "out_of_range"),
    ("frequency_penalty", "1", "invalid_type"),
    ("repetition_penalty", 0, "out_of_range"),
    ("repetition_penalty", NAN, "invalid_type"),
    ("min_tokens", -1, "out_of_range"),
    ("min_tokens", 1.5, "invalid_type"),
]


def row_id(row):
    name, value, _ = row
    return f"{name}={json.dumps(value)[:24]}"


@pytest.fixture
def node(db, redis_client):
    """A base model and an up node serving it, its task queue empty: a valid request would be placed and sent."""
    BaseModel.objects.create(name=BASE, architecture={"layers": 2}, context_length=4096)
    redis_client.delete(f"node.{NODE}")
    return make_node(NODE, base=BASE, slots=10)


@pytest.fixture
def secret(alice, acme):
    return create_key(alice, acme, scopes=["infer"])[1]


def post(secret, path, body):
    client = Client(headers={"Authorization": f"Bearer {secret}"})
    return client.post(path, json.dumps(body), content_type="application/json")


def http_refusals(secret, change):
    """(way in, error) for the three HTTP ways in; each a 400 in the one error shape."""
    messages = [{"role": "user", "content": "Hi"}]
    answers = {
        "infer": post(secret, f"/v1/models/{BASE}/infer", {"prompt": "Hi", "parameters": change}),
        "chat": post(secret, "/v1/chat/completions", {"model": BASE, "messages": messages, **change}),
        "completions": post(secret, "/v1/completions", {"model": BASE, "prompt": "Hi", **change}),
    }
    return {way: assert_error(response, 400) for way, response in answers.items()}


def playground_refusal(secret, change):
    """The playground's error event for a chat with ``change``; the socket stays open (it answers a ping)."""

    async def go():  # waits are generous: what is judged is the answer, not how fast a loaded machine gives it
        ws = Communicator(application, "/ws/v1/playground/", subprotocols=["vajra.v1", f"bearer.{secret}"])
        connected, _ = await ws.connect(timeout=WAIT_S)
        assert connected
        assert (await ws.receive_json_from(timeout=WAIT_S))["type"] == "welcome"
        await ws.send_json_to({"type": "chat", "model": BASE, "messages": [{"role": "user", "content": "Hi"}],
                               **change})
        message = await ws.receive_json_from(timeout=WAIT_S)
        await ws.send_json_to({"type": "ping"})
        pong = await ws.receive_json_from(timeout=WAIT_S)
        await ws.disconnect()
        return message, pong

    message, pong = async_to_sync(go)()
    # The one error shape; a field refusal adds the playground's list of every bad field, the first named above.
    error = message["error"]
    assert message["type"] == "error" and set(error) - {"errors"} == {"message", "type", "param", "code"}, message
    if "errors" in error:
        assert (error["errors"][0]["param"], error["errors"][0]["code"]) == (error["param"], error["code"]), message
    assert pong == {"type": "pong"}
    return message["error"]


@pytest.mark.parametrize("name, value, code", BAD, ids=[row_id(row) for row in BAD])
def test_a_bad_parameter_is_refused_alike_everywhere_and_writes_nothing(node, secret, redis_client, unchanged_db,
                                                                        name, value, code):
    change = {name: value}
    with unchanged_db():
        errors = http_refusals(secret, change)
        errors["playground"] = playground_refusal(secret, change)
    assert InferenceRequest.objects.count() == 0 and redis_client.llen(f"node.{NODE}") == 0, "nothing sent"
    for way, error in errors.items():
        expected_param = f"parameters.{name}" if way == "infer" else name
        assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, expected_param), \
            (way, error)
    assert len({error["message"] for error in errors.values()}) == 1, errors
    message = errors["infer"]["message"]
    assert message.startswith(f"{name} "), message
    if code != "max_tokens_exceeded":
        assert message.endswith(f"; got {parameters.shown(value)}."), message


def test_every_bad_parameter_is_named_at_once_first_one_first(node, secret, unchanged_db):
    change = {"temperature": 9, "seed": -1, "stop": 5}
    with unchanged_db():
        errors = http_refusals(secret, change)
        errors["playground"] = playground_refusal(secret, change)
    assert len({error["message"] for error in errors.values()}) == 1, errors
    message = errors["chat"]["message"]
    assert message.index("temperature must be") < message.index("seed must be") < message.index("stop must be")
    assert {error["param"].removeprefix("parameters.") for error in errors.values()} == {"temperature"}
    assert InferenceRequest.objects.count() == 0


@pytest.mark.parametrize("path, field, value", [
    ("/v1/chat/completions", "n", 2 ** 70),
    ("/v1/chat/completions", "top_logprobs", 10 ** 30),
    ("/v1/chat/completions", "frequency_penalty", NAN),
    ("/v1/completions", "best_of", 2 ** 70),
    ("/v1/chat/completions", "max_completion_tokens", 2 ** 70),
    ("/v1/chat/completions", "max_completion_tokens", True),
])
def test_the_openai_apis_other_numbers_out_of_range_are_400(node, secret, unchanged_db, path, field, value):
    body = {"model": BASE, **({"prompt": "Hi"} if path == "/v1/completions" else
                              {"messages": [{"role": "user", "content": "Hi"}]}), field: value}
    with unchanged_db():
        error = assert_error(post(secret, path, body), 400, param=field)
    assert error["message"].startswith(field), error


# -- what is accepted, and what reaches the runtime ---------------------------------------------------------------

EDGES = {"temperature": 1e-37, "top_p": 1, "top_k": MAX_TOP_K, "max_tokens": 1.0, "seed": MAX_SEED,
         "stop": ["x" * MAX_STOP_LENGTH] * 4}
SENT = {"temperature": 1e-37, "top_p": 1.0, "top_k": MAX_TOP_K, "max_tokens": 1, "seed": MAX_SEED,
        "stop": ["x" * MAX_STOP_LENGTH] * 4}


def validated(serializer_class, body):
    serializer = serializer_class(data=body)
    assert serializer.is_valid(), serializer.errors
    return serializer.validated_data


def test_the_bounds_themselves_are_accepted_by_all_three():
    messages = [{"role": "user", "content": "Hi"}]
    assert v1.sampling_from(validated(v1.InferIn, {"prompt": "Hi", "parameters": EDGES})["parameters"]) == SENT
    assert openai_api.sampling_of(validated(openai_api.ChatIn, {"model": BASE, "messages": messages, **EDGES})) == SENT
    chat = validated(consumers.ChatIn, {"type": "chat", "model": BASE, "messages": messages, **EDGES})
    assert parameters.sampling(chat, v1.SAMPLING_DEFAULTS) == SENT


def test_null_or_missing_is_each_apis_default():
    nulls = dict.fromkeys(parameters.NAMES)
    messages = [{"role": "user", "content": "Hi"}]
    infer = v1.sampling_from(validated(v1.InferIn, {"prompt": "Hi", "parameters": nulls})["parameters"])
    assert infer == v1.sampling_from({}) == {"temperature": 0.7, "top_p": 1.0, "top_k": 0, "max_tokens": None,
                                             "seed": None, "stop": []}
    chat = openai_api.sampling_of(validated(openai_api.ChatIn, {"model": BASE, "messages": messages, **nulls}))
    assert chat == {**infer, "temperature": 1.0}  # OpenAI's default temperature
    playground = validated(consumers.ChatIn, {"type": "chat", "model": BASE, "messages": messages, **nulls})
    assert parameters.sampling(playground, v1.SAMPLING_DEFAULTS) == infer


# -- Last-Event-ID -------------------------------------------------------------------------------------------------

@pytest.fixture
def answered(alice, acme, node, redis_client):
    """Alice's request with three deltas and its final on its stream: (row, the deltas' entry ids)."""
    row = make_request(acme, BaseModel.objects.get(name=BASE), request_id="req_params_resume", user=alice)
    writer = StreamWriter(redis_client)
    redis_client.delete(stream_key(row.id))
    for text in ("one", " two", " three"):
        writer.delta(row.id, text)
    writer.final(row.id, {"finish_reason": "stop", "usage": {"prompt_tokens": 2, "completion_tokens": 3,
                                                             "cached_tokens": 0}, "timings": None, "gpu_ms": 1.0,
                          "error": None})
    writer.flush()
    ids = [entry_id.decode() for entry_id, fields in redis_client.xrange(stream_key(row.id))
           if fields[b"type"] == b"delta"]
    return row, ids


def events(secret, row, last_event_id=None):
    headers = {"Authorization": f"Bearer {secret}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return Client(headers=headers).get(f"/v1/requests/{row.id}/events")


def sse_entries(response):
    """The events of a streamed Django response: (id, event, decoded data) each."""
    assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
    found = []
    for block in b"".join(response).decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            found.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
    return found


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_a_valid_last_event_id_resumes_after_it(answered, secret):
    row, ids = answered
    whole = sse_entries(events(secret, row))
    assert [text for _, kind, text in whole if kind == "delta"] == [{"text": t} for t in ("one", " two", " three")]
    resumed = sse_entries(events(secret, row, ids[0]))
    assert [(entry_id, data["text"]) for entry_id, kind, data in resumed if kind == "delta"] == \
        [(ids[1], " two"), (ids[2], " three")]
    assert resumed[-1][1] == "done" and resumed[-1][2]["usage"]["completion_tokens"] == 3
    milliseconds = ids[2].split("-")[0]  # "<ms>" alone is an id too: that millisecond's entries are past
    assert sse_entries(events(secret, row, "0"))[1:] == whole[1:]
    assert sse_entries(events(secret, row, milliseconds))[-1][1] == "done"


@pytest.mark.parametrize("header", ["garbage", "1-2-3", "-1", "1-", "1.5", "0x10", "1-x",
                                    f"{2 ** 64}-0", f"1-{2 ** 64}", "9" * 21, "١-٠"])
def test_a_malformed_last_event_id_is_400(answered, secret, unchanged_db, header):
    row, _ = answered
    with unchanged_db():
        error = assert_error(events(secret, row, header), 400, code="invalid_last_event_id", param="Last-Event-ID")
    assert error["message"].startswith("Last-Event-ID must be the id of an event"), error


def test_a_malformed_resume_last_id_on_the_playground_is_an_error_event(answered, secret):
    row, ids = answered

    async def go():
        ws = Communicator(application, "/ws/v1/playground/", subprotocols=["vajra.v1", f"bearer.{secret}"])
        await ws.connect()
        await ws.receive_json_from()
        await ws.send_json_to({"type": "resume", "request_id": row.id, "last_id": f"{2 ** 64}-0"})
        refused = await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"type": "resume", "request_id": row.id, "last_id": ids[1]})
        resumed = [await ws.receive_json_from(timeout=5) for _ in range(3)]
        await ws.disconnect()
        return refused, resumed

    refused, (start, delta, done) = async_to_sync(go)()
    assert refused["type"] == "error" and refused["error"]["code"] == "invalid_last_event_id", refused
    assert refused["error"]["param"] == "last_id" and refused["error"]["message"].startswith("last_id must be")
    assert (start["type"], delta["text"], done["type"]) == ("start", " three", "done")


def test_the_api_schema_states_the_same_bounds():
    from drf_spectacular.openapi import AutoSchema

    mapped = {name: AutoSchema()._map_serializer_field(field, "request")
              for name, field in parameters.SamplingFields().fields.items()}
    assert mapped["temperature"] == {"type": "number", "minimum": 0, "maximum": 2, "nullable": True}
    assert mapped["top_p"]["exclusiveMinimum"] is True and mapped["top_p"]["maximum"] == 1
    assert mapped["seed"] == {"type": "integer", "minimum": 0, "maximum": MAX_SEED, "nullable": True}
    assert mapped["max_tokens"]["maximum"] == MAX_TOKENS and mapped["top_k"]["maximum"] == MAX_TOP_K
    assert mapped["stop"]["oneOf"][1]["maxItems"] == 4


@pytest.mark.parametrize("field, value", [("seed", -1), ("seed", MAX_SEED + 1), ("top_k", MAX_TOP_K + 1),
                                          ("max_tokens", MAX_TOKENS + 1)])
def test_the_runtime_contract_holds_the_same_bounds(field, value):
    from gpu_runtime.contract import ContractError
    from gpu_runtime.generation import SamplingParams

    with pytest.raises(ContractError, match=field):
        SamplingParams(**{field: value})
    SamplingParams(**{field: value - 1 if value > 0 else 0})
