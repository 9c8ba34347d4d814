"""One price: on a plan other than the standard one, every place that shows a query's price shows the tenant's
plan (tier cards, the billing page, the playground page, /v1 and OpenAI responses), and what a finished request
shows as its ``cost`` is its ledger row, to the micro-dollar (and to the ledger's 1e-10 dollar), through REST, SSE,
the OpenAI API (answer and stream) and the playground websocket. The token stream is faked as in
tests/test_openai_api_unit.py; the ledger row is written by the one intake for finals (serving.finals.record_final)."""

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from adapters.models import Adapter
from billing.models import UsageEvent
from serving.models import InferenceRequest
from tests.factories import create_key, make_adapter, put_on_plan, record_node_final
from tests.fixtures.serving import FAKE_FINAL
from tests.helpers import post_json, sse_data

BASE = "smollm2-135m-instruct"
CHAT = "/v1/chat/completions"
PREMIUM = {"unit_price": Decimal("0.00037"), "units_warm": 7, "gpu_price_per_hour": Decimal("3.10"),
           "tenancy_factor": Decimal("0.7"), "billing_granularity_ms": 7}


@pytest.fixture
def premium(acme):
    return put_on_plan(acme, "premium", **PREMIUM)


@pytest.fixture
def warm_bot(acme, catalog):
    adapter = make_adapter(acme, catalog["base"], "warm-bot", versions=1)
    Adapter.objects.filter(pk=adapter.pk).update(tier=Adapter.WARM)
    return adapter


@pytest.fixture
def alice_api(alice, acme):
    return Client(headers={"Authorization": f"Bearer {create_key(alice, acme)[1]}"})


def billed(request_id):
    """The request's ledger row, written as the control worker writes it from the same final event."""
    record_node_final(request_id, FAKE_FINAL)
    return UsageEvent.objects.get(key=f"inference:{request_id}").cost


def assert_is_the_ledger(cost, ledger_cost):
    assert cost["plan"] == "premium" and Decimal(cost["usd"]) == ledger_cost
    assert cost["micro_usd"] == int((ledger_cost * 10**6).to_integral_value())


def test_tier_cards_and_pages_show_the_tenants_plan(premium, warm_bot, alice_client, alice_api, charlie_client):
    card = alice_api.get(reverse("api-v1-adapter", args=["warm-bot"])).json()["tier"]
    assert card == {"tier": "warm", "units_per_query": 7, "usd_per_query": 0.00259, "micro_usd_per_query": 2590,
                    "plan": "premium", "adapter_ready_ms_guarantee": 100}
    assert 'data-tier-price="warm">$0.002590' in alice_client.get(reverse("billing")).content.decode()
    assert 'data-tier-price="warm">$0.000500' in charlie_client.get(reverse("billing")).content.decode()  # standard
    playground = alice_client.get(reverse("playground")).content.decode()
    assert 'data-units="7" data-usd="0.002590"' in playground
    assert "$0.0026" in alice_client.get(reverse("adapter-detail", args=["warm-bot"])).content.decode()


def test_rest_answer_cost_is_the_ledger_row(premium, warm_bot, alice_api, node, runtime):
    response = post_json(alice_api, reverse("v1-infer", args=[BASE]), {"prompt": "Hi", "adapter_id": "warm-bot"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert_is_the_ledger(body["cost"], billed(body["id"]))
    assert body["cost"]["units"] == 7
    detail = alice_api.get(reverse("v1-request", args=[body["id"]])).json()
    assert detail["cost"] == body["cost"]  # the request's detail, once ended, shows the same


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_sse_quote_then_done_cost_is_the_ledger_row(premium, warm_bot, alice_api, node, runtime):
    response = post_json(alice_api, reverse("v1-infer", args=[BASE]), {"prompt": "Hi", "adapter_id": "warm-bot",
                                                                    "stream": True})
    events = {}
    for block in b"".join(response).decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "event" in fields:
            events[fields["event"]] = json.loads(fields["data"])
    quote, done = events["request"]["cost"], events["done"]["cost"]
    assert quote == {"units": 7, "micro_usd": 2590, "usd": "0.0025900000", "plan": "premium"}
    assert_is_the_ledger(done, billed(events["request"]["id"]))


def test_openai_answer_cost_is_the_ledger_row(premium, warm_bot, alice_api, node, runtime):
    answer = post_json(alice_api, CHAT, {"model": "warm-bot", "messages": [{"role": "user", "content": "Hi"}]}).json()
    assert_is_the_ledger(answer["vajra"]["cost"], billed(answer["vajra"]["request_id"]))


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_openai_stream_cost_is_the_ledger_row(premium, warm_bot, alice_api, node, runtime):
    data = sse_data(post_json(alice_api, CHAT, {"model": "warm-bot", "stream": True,
                                           "messages": [{"role": "user", "content": "Hi"}]}))
    last = json.loads(data[-2])
    assert_is_the_ledger(last["vajra"]["cost"], billed(last["vajra"]["request_id"]))
    assert InferenceRequest.objects.get().tier == "warm"


def test_a_plan_version_in_effect_later_prices_a_later_final(premium, warm_bot, alice_api, node, runtime):
    """The finished price takes the plan version in effect when the request ended, as the ledger does."""
    from billing.models import PricePlan

    PricePlan.objects.create(name="premium", version=2, effective_from=datetime(2021, 1, 1, tzinfo=UTC),
                             **{**PREMIUM, "unit_price": Decimal("0.0009")})
    answer = post_json(alice_api, CHAT, {"model": "warm-bot", "messages": [{"role": "user", "content": "Hi"}]}).json()
    cost = answer["vajra"]["cost"]
    assert cost["units"] == 7 and Decimal(cost["usd"]) > Decimal("0.0063")
    assert_is_the_ledger(cost, billed(answer["vajra"]["request_id"]))


def test_the_training_estimate_is_priced_by_the_tenants_plan(acme, post_train, dataset, sent):
    """test_estimate_by_hand's job (645120 gradients) on a plan at $0.08 per million gradients and $3.00 a GPU-hour:
    645120 x 0.08 / 1e6 x 3.00 = $0.1548288, what the ledger bills for those gradients; quoted rounded up."""
    from billing.plans import plan_for, training_cost

    put_on_plan(acme, "premium", gradient_price_per_million=Decimal("0.08"), gpu_price_per_hour=Decimal("3.00"))
    estimate = post_train(dataset=dataset.id, path="train/estimate", hp={"rank": 4}).json()
    assert (estimate["gradients"], estimate["cost_micro_usd"], estimate["cost_usd"]) == (645120, 154829, "0.154829")
    assert estimate["prices"] == {"c_gradient_usd": "0.08", "p_gpu_micro_usd_per_hour": 3000000, "plan": "premium"}
    assert training_cost(plan_for(acme), gradients=645120) == Decimal("0.1548288")


def test_a_stream_ends_with_its_final_while_the_database_cannot_price_it(
        premium, warm_bot, alice_api, node, runtime, monkeypatch):
    """The answer is complete: the done event goes out with the quote's cost, and the ledger row follows once the
    database is back (the control plane records the final)."""
    from django.db import OperationalError

    from serving import dispatch

    def unreachable(*args, **kwargs):
        raise OperationalError("the database went away")

    monkeypatch.setattr(dispatch, "final_cost", unreachable)
    response = post_json(alice_api, reverse("v1-infer", args=[BASE]), {"prompt": "Hi", "adapter_id": "warm-bot",
                                                                    "stream": True})
    events = [block for block in b"".join(response).decode().split("\n\n") if block.startswith("id:")
              or "event:" in block]
    done = [b for b in events if "event: done" in b]
    assert len(done) == 1
    data = json.loads(dict(line.split(": ", 1) for line in done[0].split("\n") if ": " in line)["data"])
    assert data["finish_reason"] == "stop" and data["cost"]["units"] == 7  # the quote, as the request began
