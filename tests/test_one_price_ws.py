"""One price in the playground: on a plan other than the standard one, the start event quotes the plan's price and
the done event shows what the ledger bills for the request, to the micro-dollar (the runtime played as in
tests/test_playground_ws.py)."""

from decimal import Decimal

import pytest

from adapters.models import Adapter
from billing.models import UsageEvent
from serving.dispatch import inference_finish
from tests.conftest import put_on_plan
from tests.test_playground_ws import (  # noqa: F401
    FINAL,
    base_model,
    chat,
    make_adapter,
    node,
    open_playground,
    redis_client,
    run,
    runtime,
    session_headers,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_password_hashing")]


def test_the_playground_quotes_the_plan_and_its_done_cost_is_the_ledger_row(alice, acme, base_model, node,  # noqa: F811
                                                                          runtime):  # noqa: F811
    put_on_plan(acme, "premium", unit_price=Decimal("0.00037"), units_hot=11, gpu_price_per_hour=Decimal("3.10"),
                tenancy_factor=Decimal("0.7"), billing_granularity_ms=7)
    make_adapter(acme, base_model, "hot-bot", tier=Adapter.HOT)

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
    inference_finish(request_id=start["request_id"], final=FINAL)  # as the control worker records it
    ledger = UsageEvent.objects.get(key=f"inference:{start['request_id']}").cost
    assert done["cost"]["plan"] == "premium" and Decimal(done["cost"]["usd"]) == ledger
    assert done["cost"]["micro_usd"] == int((ledger * 10**6).to_integral_value())
