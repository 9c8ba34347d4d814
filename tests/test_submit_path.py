"""The submit path's latency work (bench/platform_overhead): an ASGI request's key, rate limit, row and task go
to a submit thread in one trip; concurrent submits all land and the quota holds; refusals still write nothing
and send nothing; the task carries no result subscription and no prompt in its repr; placement with one
candidate reads no recent requests; the relay shares one Redis client per event loop."""

import asyncio
import json
import threading

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client
from rest_framework.exceptions import Throttled

from adapters.models import BaseModel
from fleet.placement import place
from gpu_runtime.generation import GenerationRequest
from serving import dispatch, relay
from serving.models import InferenceRequest
from tenants.keys import principal_from_key
from tests.factories import create_key, make_node, put_on_plan
from tests.helpers import db_snapshot

pytestmark = pytest.mark.django_db(transaction=True)
BASE = "smollm2-135m-instruct"
INFER = f"/v1/models/{BASE}/infer"

@pytest.fixture
def base(db):
    return BaseModel.objects.create(name=BASE, context_length=2048)


@pytest.fixture
def node(base):
    return make_node("n1", base=BASE, slots=4)


@pytest.fixture
def secret(alice, acme):
    return create_key(alice, acme)[1]


def asgi_post(path, body, secret):
    async def go():
        return await AsyncClient().post(path, body if isinstance(body, str) else json.dumps(body),
                                        content_type="application/json", headers={"Authorization": f"Bearer {secret}"})

    return async_to_sync(go)()


def test_an_asgi_infer_authenticates_and_submits_in_one_trip_to_a_submit_thread(node, secret, sent, monkeypatch, acme):
    import serving.v1

    threads = []

    def recording(raw_key):
        threads.append(threading.current_thread().name)
        return principal_from_key(raw_key)

    monkeypatch.setattr(serving.v1, "principal_from_key", recording)
    response = asgi_post(INFER, {"prompt": "Tell me a secret recipe", "parameters": {"max_tokens": 4}}, secret)
    assert response.status_code == 200, response.content
    assert response.json()["text"] == "Hi"
    [(name, args, options, thread)] = sent
    assert threads == [thread] and thread.startswith("vajra-submit"), "key and submit: one trip, one thread"
    assert name == "runtime.infer" and args[0]["prompt"] == "Tell me a secret recipe"
    # the node keys its prefix cache and its admission turns by the tenant the message carries: the tenant's id, which
    # no rename of the slug or later signup can give to another tenant
    assert GenerationRequest.from_json(args[0]).tenant == f"t{acme.pk}"
    row = InferenceRequest.objects.get()
    assert options["task_id"] == row.id and options["queue"] == "node.n1"
    assert options["ignore_result"] is True, "no result subscription per task: the answer is on the Redis Stream"
    assert "secret recipe" not in options["argsrepr"] and row.id in options["argsrepr"]


def test_the_test_client_keeps_the_submit_on_its_own_thread(node, secret, sent):
    response = Client(headers={"Authorization": f"Bearer {secret}"}).post(
        INFER, json.dumps({"prompt": "Hello"}), content_type="application/json")
    assert response.status_code == 200, response.content
    assert sent[0][3] == threading.current_thread().name


@pytest.mark.parametrize("body, secret_of, status", [
    ("{not json", "bad", 401),  # a bad key is a 401 whatever the body: authentication still comes first
    ("{not json", "good", 400),
    ({"prompt": "Hi", "adapter_id": "nope"}, "good", 404),
    ({"prompt": "Hi", "parameters": {"max_tokens": 0}}, "good", 400),
])
def test_refusals_on_the_submit_thread_write_nothing_and_send_nothing(node, secret, sent, body, secret_of, status):
    before = db_snapshot()
    response = asgi_post(INFER, body, secret if secret_of == "good" else "nope.wrong")
    assert response.status_code == status, response.content
    assert db_snapshot() == before and sent == []


def test_no_capacity_on_the_submit_thread_is_a_503_with_a_scale_up_signal_and_no_row(base, secret, sent):
    from fleet.models import ScaleUpSignal

    response = asgi_post(INFER, {"prompt": "Hi"}, secret)
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert InferenceRequest.objects.count() == 0 and sent == []
    assert ScaleUpSignal.objects.get().base_model == BASE


def test_concurrent_submits_all_land_and_the_quota_holds(node, base, secret, sent, acme):
    put_on_plan(acme, max_concurrent_requests=5)
    principal = principal_from_key(secret)
    sampling = {"temperature": 0.0, "max_tokens": 4, "top_p": 1.0, "top_k": 0, "stop": [], "seed": None}

    def submit(i):
        return dispatch.inference_submit(principal=principal, base_model=base, prompt=f"p{i}", sampling=sampling,
                                         api="infer")

    async def go():
        return await asyncio.gather(*(dispatch.on_submit_thread(submit, i) for i in range(8)),
                                    return_exceptions=True)

    results = async_to_sync(go)()
    rows = [r for r in results if isinstance(r, InferenceRequest)]
    assert len(rows) == 5 and sum(isinstance(r, Throttled) for r in results) == 3, results
    assert InferenceRequest.objects.count() == 5 and len(sent) == 5
    assert {args[0]["request_id"] for _, args, _, _ in sent} == {r.id for r in rows}


def test_placement_with_one_candidate_reads_no_recent_requests(acme, base, django_assert_num_queries):
    only = make_node("only", base=BASE, slots=4)
    with django_assert_num_queries(1):  # the up nodes
        assert place(tenant=acme, base_model=base) == only
    make_node("second", base=BASE, slots=4)
    with django_assert_num_queries(3):  # and the tenant's recent requests (affinity), the requests in flight (load)
        assert place(tenant=acme, base_model=base).name in {"only", "second"}


def test_the_relay_shares_one_redis_client_per_event_loop():
    async def clients():
        return relay._client(), relay._client()

    first, again = async_to_sync(clients)()
    assert first is again
    other, _ = asyncio.run(clients())
    assert other is not first, "a client belongs to the loop that opened its connections"
