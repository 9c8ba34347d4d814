"""Node loss with real processes: two runtime nodes on SmolLM2, daphne, the control worker and beat. A node is
killed (SIGKILL, no goodbye) while it streams an answer: the stream says so (``retry``), the other node answers
from the start, the client gets the whole greedy answer, the request is billed once; the dead node is marked
down within its missed heartbeats (1 s apart here); started again, it rejoins and gets work."""

import json
import os
import threading

import httpx
import pytest

from adapters.models import BaseModel
from billing.models import UsageEvent
from fleet.models import Node
from serving.models import InferenceRequest
from tests.factories import create_key
from tests.processes import sse_events, start_runtime_node, wait_for

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
BODY = {"prompt": "Once upon a time, in a small village by the sea, there lived", "stream": True,
        "parameters": {"temperature": 0, "max_tokens": 48}}


@pytest.fixture
def two_nodes(base_model_store, tmp_path):
    names = [f"node-a-{os.getpid()}", f"node-b-{os.getpid()}"]
    procs = {name: start_runtime_node(base_model_store, tmp_path / f"{name}.log", name=name) for name in names}
    yield procs
    for proc in procs.values():
        proc.stop()


def loaded(name):
    node = Node.objects.filter(name=name, status=Node.UP).first()
    return node if node and node.state.get("model_loaded") else None


def test_a_node_killed_mid_stream_hands_the_request_to_the_other_and_rejoins(
        daphne, control_worker, beat, two_nodes, base_model_store, tmp_path, alice, acme, charlie, contoso):
    for name, proc in two_nodes.items():
        wait_for(lambda name=name: loaded(name), 240, f"{name} to load its base model", proc)
    assert BaseModel.objects.filter(name=MODEL).exists()
    _, secret = create_key(alice, acme)
    client = httpx.Client(base_url=daphne, headers={"Authorization": f"Bearer {secret}"}, timeout=180)
    a_name, b_name = sorted(two_nodes)

    events, first_delta = [], threading.Event()

    def read():
        with client.stream("POST", f"/v1/models/{MODEL}/infer", json=BODY) as response:
            assert response.status_code == 200, response.read()
            for event in sse_events(response):
                events.append(event)
                if event["event"] == "delta":
                    first_delta.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert first_delta.wait(180), "no token streamed"
    request_id = json.loads(events[0]["data"])["id"]
    row = InferenceRequest.objects.get(pk=request_id)
    assert row.node.name == a_name  # idle nodes, no affinity yet: the tie goes by name
    two_nodes[a_name].popen.kill()  # the whole node process, mid-answer
    two_nodes[a_name].popen.wait()

    down = wait_for(lambda: Node.objects.filter(name=a_name, status=Node.DOWN).first(), 30, f"{a_name} marked down")
    reader.join(240)
    assert not reader.is_alive()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "request" and kinds[-1] == "done" and kinds.count("retry") == 1, kinds
    retry = json.loads(events[kinds.index("retry")]["data"])
    assert retry["attempt"] == 2 and retry["node"] == b_name and a_name in retry["reason"]
    done = json.loads(events[-1]["data"])
    assert done["finish_reason"] in ("stop", "length") and not done.get("error")
    after = "".join(json.loads(e["data"])["text"] for e in events[kinds.index("retry"):] if e["event"] == "delta")

    row = wait_for(lambda: InferenceRequest.objects.filter(pk=request_id, status="succeeded").first(), 60,
                   "the retried request to be recorded")
    assert (row.node.name, row.attempt, row.payload) == (b_name, 2, None)
    assert row.completion_tokens == done["usage"]["completion_tokens"]
    assert UsageEvent.objects.filter(request_id=request_id, kind="inference").count() == 1  # billed once

    # the retry answered from the start: the same greedy answer as a request that never lost its node
    again = client.post(f"/v1/models/{MODEL}/infer", json={**BODY, "stream": False})
    assert again.status_code == 200, again.text
    assert again.json()["text"] == after

    # the node comes back under its name: it rejoins (up, a new start) and gets work
    before = down.started_at
    two_nodes[a_name] = start_runtime_node(base_model_store, tmp_path / f"{a_name}-again.log", name=a_name)
    back = wait_for(lambda: (n := loaded(a_name)) and n.started_at > before and n, 240, f"{a_name} to rejoin",
                    two_nodes[a_name])
    assert back.status == Node.UP
    _, other_secret = create_key(charlie, contoso)  # a tenant with no affinity: the tie goes to the rejoined node
    answer = httpx.post(f"{daphne}/v1/models/{MODEL}/infer", timeout=180,
                        headers={"Authorization": f"Bearer {other_secret}"}, json={**BODY, "stream": False})
    assert answer.status_code == 200, answer.text
    served = wait_for(lambda: InferenceRequest.objects.filter(pk=answer.json()["id"], status="succeeded").first(),
                      60, "the rejoined node's request to be recorded")
    assert served.node.name == a_name and served.attempt == 1
