"""One price end to end on the tiny model: a tenant on a plan other than the standard one asks a real node through
/v1 and the OpenAI API; the cost each answer shows is the ledger row the control worker writes from the node's
final event, to the micro-dollar."""

from decimal import Decimal

import httpx
import pytest

from adapters.models import BaseModel
from billing.models import UsageEvent
from gpu_runtime.model_store import TINY_MODEL
from tests.factories import create_key, put_on_plan
from tests.processes import wait_for


@pytest.mark.slow
def test_a_real_nodes_answers_cost_what_the_ledger_bills(daphne, tiny_runtime_node, control_worker, alice, acme):
    put_on_plan(acme, "premium", unit_price=Decimal("0.00037"), gpu_price_per_hour=Decimal("3.10"),
                tenancy_factor=Decimal("0.7"), billing_granularity_ms=7)
    wait_for(lambda: BaseModel.objects.filter(name=TINY_MODEL).first(), 120, "the tiny node to register",
             tiny_runtime_node)
    _, secret = create_key(alice, acme)
    client = httpx.Client(base_url=daphne, headers={"Authorization": f"Bearer {secret}"}, timeout=60)
    rest = client.post(f"/v1/models/{TINY_MODEL}/infer",
                       json={"prompt": "Hello there", "parameters": {"temperature": 0, "max_tokens": 6}})
    chat = client.post("/v1/chat/completions", json={"model": TINY_MODEL, "max_tokens": 6, "temperature": 0,
                                                     "messages": [{"role": "user", "content": "Hi"}]})
    assert rest.status_code == 200 and chat.status_code == 200, (rest.text, chat.text)
    for request_id, cost in ((rest.json()["id"], rest.json()["cost"]),
                             (chat.json()["vajra"]["request_id"], chat.json()["vajra"]["cost"])):
        row = wait_for(lambda: UsageEvent.objects.filter(key=f"inference:{request_id}").first(),  # noqa: B023
                       60, "the control worker to bill the request")
        assert row.plan.name == "premium" and cost["plan"] == "premium"
        assert Decimal(cost["usd"]) == row.cost and cost["micro_usd"] == int((row.cost * 10**6).to_integral_value())
        assert row.billed_gpu_ms % 7 == 0 and row.units == 1
