"""The playground websocket through the real ASGI application, Redis and database, without a runtime: the test
plays the runtime by writing its events into the request's Redis Stream (gpu_runtime.streams.StreamWriter). One
price: on a plan other than the standard one, the start event quotes the plan's price and the done event shows
what the ledger bills for the request, to the micro-dollar."""

import asyncio
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.urls import reverse

from adapters.models import Adapter
from billing.models import UsageEvent
from gpu_runtime.contract import cancel_key
from gpu_runtime.streams import StreamWriter
from serving.models import InferenceRequest
from tenants.active import SESSION_KEY
from tenants.roles import BILLING_VIEWER
from tests.factories import create_key, make_adapter, make_base, make_member, make_node, put_on_plan, record_node_final
from tests.ws_helpers import PLAYGROUND, Communicator, chat, open_playground, run
from vajra.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

NODE = "pg-node"
FINAL = {"finish_reason": "stop", "usage": {"prompt_tokens": 9, "completion_tokens": 3, "cached_tokens": 0},
         "timings": {"queued_ms": 1.0, "adapter_ready_ms": 0.5, "first_token_ms": 12.0, "total_ms": 30.0},
         "gpu_ms": 20.0, "error": None}


@pytest.fixture
def runtime(redis_client):
    """Writes what a runtime node would, and clears its task queue so a test can count the tasks sent."""
    redis_client.delete(f"node.{NODE}")
    return StreamWriter(redis_client)


@pytest.fixture
def base_model(db):
    return make_base("test-base", architecture={"layers": 2}, context_length=64)


@pytest.fixture
def node(base_model):
    """An up node serving the base model with free adapter slots: what placement needs."""
    return make_node(NODE, base=base_model.name)


@pytest.fixture
def support_bot(acme, base_model):
    return make_adapter(acme, base_model, "support-bot", Adapter.WARM, versions=2)


def session_headers(user, active_tenant=None):
    client = Client()
    client.force_login(user)
    if active_tenant is not None:
        session = client.session
        session[SESSION_KEY] = active_tenant.pk
        session.save()
    return [(b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
            (b"host", b"testserver"), (b"origin", b"http://testserver")]


async def until(predicate, timeout=3.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


async def expect_error(communicator, code):
    """An error in the one error shape, and the socket stays open (it still answers a ping)."""
    message = await communicator.receive_json_from()
    assert message["type"] == "error", message
    assert set(message["error"]) == {"message", "type", "param", "code"} and message["error"]["message"], message
    assert message["error"]["code"] == code, message
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from() == {"type": "pong"}
    return message["error"]


def test_chat_relays_start_deltas_done(alice, acme, node, support_bot, runtime, redis_client):
    async def go():
        ws, welcome = await open_playground(session_headers(alice))
        assert welcome == {"type": "welcome", "tenant": "acme"}
        await ws.send_json_to(chat("support-bot@v1", temperature=0.3, max_tokens=32))
        start = await ws.receive_json_from(timeout=5)
        assert "request_id" in start, start
        request_id = start["request_id"]
        for text in ("Rome", ",", " of course."):
            runtime.delta(request_id, text)
        deltas = [await ws.receive_json_from() for _ in range(3)]
        runtime.final(request_id, FINAL)
        done = await ws.receive_json_from()
        await ws.disconnect()
        return start, deltas, done

    start, deltas, done = run(go)
    assert start == {"type": "start", "request_id": start["request_id"], "model": "test-base",
                     "adapter": "support-bot@v1", "tier": "warm",
                     "cost": {"units": 5, "micro_usd": 500, "usd": "0.0005000000", "plan": "standard"},
                     "resumed": False}
    assert [d["type"] for d in deltas] == ["delta"] * 3 and "".join(d["text"] for d in deltas) == "Rome, of course."
    assert all(d["request_id"] == start["request_id"] and d["id"] for d in deltas)
    assert done == {"type": "done", "request_id": start["request_id"], "finish_reason": "stop",
                    "usage": FINAL["usage"], "timings": FINAL["timings"], "gpu_ms": 20.0,
                    # what its ledger row bills: the units and 20 GPU-ms (2 slices x $2.00/h x 0.3)
                    "cost": {"units": 5, "micro_usd": 503, "usd": "0.0005033333", "plan": "standard"},
                    "error": None}

    row = InferenceRequest.objects.get(pk=start["request_id"])
    assert (row.tenant, row.user, row.api, row.tier, row.max_tokens) == (acme, alice, "playground", "warm", 32)
    assert row.adapter_version.number == 1 and row.node.name == NODE
    assert redis_client.llen(f"node.{NODE}") == 1, "one runtime task sent, after commit"
    assert not redis_client.exists(cancel_key(row.id)), "a finished generation is not cancelled on disconnect"


def test_a_failover_retry_reaches_the_page_and_the_answer_starts_over(alice, node, runtime):
    retry = {"attempt": 2, "node": "node-b", "reason": "node node-a lost (restarted)"}

    async def go():
        ws, _ = await open_playground(session_headers(alice))
        await ws.send_json_to(chat())
        request_id = (await ws.receive_json_from(timeout=5))["request_id"]
        runtime.delta(request_id, "Ro")
        runtime.event(request_id, "retry", retry)  # what fleet/failover.py appends
        runtime.delta(request_id, "Rome.", attempt=2)
        runtime.final(request_id, {**FINAL, "attempt": 2})
        messages = [await ws.receive_json_from() for _ in range(4)]
        await ws.disconnect()
        return request_id, messages

    request_id, (first, again, answer, done) = run(go)
    assert (first["text"], answer["text"], done["type"]) == ("Ro", "Rome.", "done")
    assert again == {"type": "retry", "request_id": request_id, "id": again["id"], **retry} and again["id"]


def test_base_model_with_an_api_key(alice, acme, node, runtime):
    _, secret = create_key(alice, acme, scopes=["infer"])

    async def go():
        ws, welcome = await open_playground(subprotocols=["vajra.v1", f"bearer.{secret}"])
        await ws.send_json_to(chat())
        start = await ws.receive_json_from(timeout=5)
        runtime.final(start["request_id"], FINAL)
        done = await ws.receive_json_from()
        await ws.disconnect()
        return welcome, start, done

    welcome, start, done = run(go)
    assert welcome["tenant"] == "acme"
    assert start["adapter"] is None and start["tier"] == "cold" and start["cost"]["micro_usd"] == 100
    assert done["finish_reason"] == "stop"
    assert InferenceRequest.objects.get(pk=start["request_id"]).api_key.tenant == acme


def test_stop_cancels_and_relays_the_final_event(alice, node, runtime, redis_client):
    async def go():
        ws, _ = await open_playground(session_headers(alice))
        await ws.send_json_to(chat())
        start = await ws.receive_json_from(timeout=5)
        request_id = start["request_id"]
        runtime.delta(request_id, "Rome")
        first = await ws.receive_json_from()
        await ws.send_json_to(chat())  # one generation at a time per socket
        busy = await expect_error(ws, "generation_running")
        await ws.send_json_to({"type": "stop"})
        cancelled = await until(lambda: redis_client.exists(cancel_key(request_id)))
        runtime.final(request_id, {**FINAL, "finish_reason": "cancelled",
                                   "usage": {**FINAL["usage"], "completion_tokens": 1}})
        done = await ws.receive_json_from()
        await ws.disconnect()
        return first, busy, cancelled, done

    first, busy, cancelled, done = run(go)
    assert first["text"] == "Rome" and busy["message"]
    assert cancelled, "stop sets the request's cancel flag"
    assert done["finish_reason"] == "cancelled" and done["usage"]["completion_tokens"] == 1
    assert InferenceRequest.objects.count() == 1, "the refused second chat wrote nothing"


def test_disconnect_mid_stream_cancels(alice, node, runtime, redis_client):
    async def go():
        ws, _ = await open_playground(session_headers(alice))
        await ws.send_json_to(chat())
        start = await ws.receive_json_from(timeout=5)
        runtime.delta(start["request_id"], "Rome")
        await ws.receive_json_from()
        await ws.disconnect()
        return start["request_id"], await until(lambda: redis_client.exists(cancel_key(start["request_id"])))

    _, cancelled = run(go)
    assert cancelled, "a client that leaves cancels its generation"


def test_resume_from_last_id_gets_only_later_deltas(alice, node, runtime, redis_client):
    async def first_socket():
        ws, _ = await open_playground(session_headers(alice))
        await ws.send_json_to(chat())
        start = await ws.receive_json_from(timeout=5)
        for text in ("one", " two", " three"):
            runtime.delta(start["request_id"], text)
        deltas = [await ws.receive_json_from() for _ in range(3)]
        runtime.final(start["request_id"], FINAL)
        await ws.receive_json_from()
        await ws.disconnect()
        return start["request_id"], deltas

    request_id, deltas = run(first_socket)

    async def second_socket():
        ws, _ = await open_playground(session_headers(alice))
        await ws.send_json_to({"type": "resume", "request_id": request_id, "last_id": deltas[0]["id"]})
        messages = [await ws.receive_json_from() for _ in range(4)]
        await ws.disconnect()
        return messages

    start, *later, done = run(second_socket)
    assert start["type"] == "start" and start["resumed"] is True and start["request_id"] == request_id
    assert [(m["type"], m["id"], m["text"]) for m in later] == [("delta", d["id"], d["text"]) for d in deltas[1:]]
    assert done["type"] == "done" and done["usage"] == FINAL["usage"]
    assert not redis_client.exists(cancel_key(request_id))


def test_resume_of_another_tenants_request_is_not_found(alice, charlie, node, runtime, unchanged_db):
    async def alices():
        ws, _ = await open_playground(session_headers(alice))
        await ws.send_json_to(chat())
        start = await ws.receive_json_from(timeout=5)
        runtime.final(start["request_id"], FINAL)
        await ws.receive_json_from()
        await ws.disconnect()
        return start["request_id"]

    request_id = run(alices)

    headers = session_headers(charlie)  # signing in writes last_login: before the snapshot

    async def charlies():
        ws, _ = await open_playground(headers)
        await ws.send_json_to({"type": "resume", "request_id": request_id, "last_id": "0"})
        error = await expect_error(ws, "not_found")
        await ws.disconnect()
        return error

    with unchanged_db():
        error = run(charlies)
    assert error["type"] == "not_found_error" and "contoso" not in error["message"]


@pytest.mark.parametrize("change, param", [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "0.5"}, "temperature"),  # null is the default; a string is not a number
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10 ** 6}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "x" * 1000}]}, "messages"),  # past the context of 64 tokens
    ({"surprise": 1}, "surprise"),
])
def test_invalid_chat_is_an_error_and_writes_nothing(alice, node, runtime, redis_client, unchanged_db, change,
                                                     param):
    headers = session_headers(alice)

    async def go():
        ws, _ = await open_playground(headers)
        await ws.send_json_to({**chat(), **change})
        message = await ws.receive_json_from()
        await ws.send_json_to({"type": "ping"})
        pong = await ws.receive_json_from()
        await ws.disconnect()
        return message, pong

    with unchanged_db():
        message, pong = run(go)
    assert message["type"] == "error" and message["error"]["param"] == param, message
    assert message["error"]["type"] == "invalid_request_error"
    assert pong == {"type": "pong"}, "an invalid message does not close the socket"
    assert redis_client.llen(f"node.{NODE}") == 0, "no task sent"


def test_every_bad_setting_is_reported_at_once(alice, node, runtime, redis_client, unchanged_db):
    headers = session_headers(alice)
    bad = {"temperature": 3, "top_p": 0, "max_tokens": 0, "seed": -1, "stop": ["x" * 65]}

    async def go():
        ws, _ = await open_playground(headers)
        await ws.send_json_to({**chat(), **bad})
        message = await ws.receive_json_from()
        await ws.disconnect()
        return message["error"]

    with unchanged_db():
        error = run(go)
    assert [e["param"] for e in error["errors"]] == ["temperature", "top_p", "max_tokens", "seed", "stop"]
    assert all(e["code"] == "out_of_range" and e["message"].startswith(e["param"]) for e in error["errors"])
    assert (error["param"], error["code"]) == ("temperature", "out_of_range")
    assert all(e["message"] in error["message"] for e in error["errors"])
    assert redis_client.llen(f"node.{NODE}") == 0, "no task sent"


def test_system_prompt_top_p_stop_and_seed_reach_the_runtime(alice, node, runtime, redis_client):
    headers = session_headers(alice)

    async def go():
        ws, _ = await open_playground(headers)
        await ws.send_json_to({**chat(), "top_p": 0.9, "seed": 7, "stop": ["\n\n", "END"]})
        start = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return start

    start = run(go)
    payload = InferenceRequest.objects.get(pk=start["request_id"]).payload  # what the node's task carries
    assert payload["messages"][0] == {"role": "system", "content": "Be brief."}
    sampling = payload["sampling"]
    assert (sampling["top_p"], sampling["seed"], sampling["stop"]) == (0.9, 7, ["\n\n", "END"])


def test_charlie_cannot_use_alices_adapter(charlie, node, support_bot, runtime, redis_client, unchanged_db):
    headers = session_headers(charlie)

    async def go():
        ws, _ = await open_playground(headers)
        errors = []
        for ref in ("support-bot", "support-bot@v2", "no-such-model"):
            await ws.send_json_to(chat(ref))
            errors.append(await expect_error(ws, "not_found"))
        await ws.disconnect()
        return errors

    with unchanged_db():
        errors = run(go)
    assert all(e["type"] == "not_found_error" for e in errors)
    assert InferenceRequest.objects.count() == 0 and redis_client.llen(f"node.{NODE}") == 0


def test_unknown_message_is_an_error_and_stop_when_idle_is_ignored(alice, node):
    async def go():
        ws, _ = await open_playground(session_headers(alice))
        await ws.send_json_to({"type": "stop"})
        assert await ws.receive_nothing(timeout=0.1)
        await ws.send_json_to({"type": "dance"})
        error = await expect_error(ws, "unknown_message")
        await ws.disconnect()
        return error

    assert run(go)["param"] == "type"


def test_refusals_close_the_socket(acme, alice, base_model):
    viewer = make_member("vera@acme.test", acme, BILLING_VIEWER)
    _, usage_only = create_key(alice, acme, scopes=["usage:read"])

    async def go(**socket):
        ws = Communicator(application, PLAYGROUND, **socket)
        await ws.connect()
        message = await ws.receive_json_from()
        close = await ws.receive_output()
        await ws.disconnect(timeout=0.1)
        return message["error"]["code"], close["code"]

    assert async_to_sync(go)(headers=session_headers(viewer)) == ("role_forbidden", 4403)
    assert async_to_sync(go)(subprotocols=["vajra.v1", f"bearer.{usage_only}"]) == ("missing_scope", 4403)
    cross_site = [(k, v) for k, v in session_headers(alice) if k != b"origin"] + [(b"origin", b"https://evil.example")]
    assert async_to_sync(go)(headers=cross_site) == ("origin_not_allowed", 4403)


def test_session_socket_speaks_for_the_active_tenant(alice, contoso, node):
    make_member("alice@acme.test", contoso, "owner")

    async def go():
        ws, welcome = await open_playground(session_headers(alice, active_tenant=contoso))
        await ws.disconnect()
        return welcome

    assert run(go)["tenant"] == "contoso"


def test_page_lists_models_versions_and_prices(alice, acme, node, support_bot, client):
    client.force_login(alice)
    html = client.get(reverse("playground")).content.decode()
    assert 'value="test-base"' in html and 'data-tier="cold"' in html
    assert html.count('value="support-bot"') == 1, "one entry per adapter; its versions are in the version picker"
    assert 'data-versions="2 1"' in html and 'data-current="2"' in html and 'data-tier="warm"' in html
    for label in ("Model", "Version", "System prompt", "Temperature", "Top p", "Max tokens", "Seed", "Stop sequences",
                  "Message"):
        assert f">{label}</label>" in html
    assert 'id="pg-stop"' in html and "vajra/playground.js" in html


def test_socket_and_relay_outlive_an_idle_redis_read(alice, node, runtime):
    """redis-py 8 reads with a 5 s socket timeout by default: a blocking read (the channel layer's BZPOPMIN, the
    relay's XREAD) that waits longer must not kill the socket or the stream."""

    async def go():
        ws, _ = await open_playground(session_headers(alice))
        await ws.send_json_to(chat())
        start = await ws.receive_json_from(timeout=5)
        await asyncio.sleep(6.5)  # the runtime is slow to start: nothing on the stream yet
        runtime.delta(start["request_id"], "Rome")
        delta = await ws.receive_json_from(timeout=5)
        runtime.final(start["request_id"], FINAL)
        done = await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"type": "ping"})
        pong = await ws.receive_json_from()
        await ws.disconnect()
        return delta, done, pong

    delta, done, pong = run(go)
    assert delta["text"] == "Rome" and done["finish_reason"] == "stop" and pong == {"type": "pong"}


# ---- one price --------------------------------------------------------------------------------------------------

def test_the_playground_quotes_the_plan_and_its_done_cost_is_the_ledger_row(alice, acme, base_model, node,
                                                                          runtime):
    put_on_plan(acme, "premium", unit_price=Decimal("0.00037"), units_hot=11, gpu_price_per_hour=Decimal("3.10"),
                tenancy_factor=Decimal("0.7"), billing_granularity_ms=7)
    make_adapter(acme, base_model, "hot-bot", Adapter.HOT, versions=1)

    async def go():
        ws, _ = await open_playground(session_headers(alice))
        await ws.send_json_to(chat("hot-bot"))
        start = await ws.receive_json_from(timeout=5)
        runtime.final(start["request_id"], FINAL)
        done = await ws.receive_json_from()
        await ws.disconnect()
        return start, done

    start, done = run(go)
    assert start["cost"] == {"units": 11, "micro_usd": 4070, "usd": "0.0040700000", "plan": "premium"}
    record_node_final(start["request_id"], FINAL)  # as the control worker records it
    ledger = UsageEvent.objects.get(key=f"inference:{start['request_id']}").cost
    assert done["cost"]["plan"] == "premium" and Decimal(done["cost"]["usd"]) == ledger
    assert done["cost"]["micro_usd"] == int((ledger * 10**6).to_integral_value())
