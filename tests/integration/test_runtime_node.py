"""A real runtime node heartbeats to a real control worker (on tiny-llama) and streams SmolLM2's real tokens."""

import pytest

from fleet.heartbeats import nodes_mark_down
from fleet.models import Node
from tests.processes import wait_for

pytestmark = pytest.mark.slow


def test_node_loads_base_model_heartbeats_and_is_marked_down_when_gone(
        tiny_runtime_node, control_worker, client, settings):
    def loaded():
        node = Node.objects.filter(name=tiny_runtime_node.name).first()
        return node if node and node.state.get("model_loaded") else None

    node = wait_for(loaded, 180, "the node's heartbeat with the base model loaded", tiny_runtime_node)
    assert node.status == Node.UP
    assert node.base_model == "tiny-llama"
    assert node.device == "cpu" and node.state["dtype"] in {"float32", "bfloat16"}
    assert node.state["memory"]["host_max_rss"] > 0

    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert tiny_runtime_node.name in [n["name"] for n in ready["runtime"]["nodes"]]

    # web -> node queue -> runtime task -> result, JSON all the way
    from vajra.celery import app

    pong = app.send_task("runtime.ping", queue=f"node.{tiny_runtime_node.name}").get(timeout=60)
    assert pong["node"] == tiny_runtime_node.name and pong["model_loaded"] is True

    tiny_runtime_node.stop()
    settings.VAJRA_HEARTBEAT_SECONDS = 1
    settings.VAJRA_NODE_DOWN_AFTER_MISSED = 3
    wait_for(lambda: nodes_mark_down() or Node.objects.get(pk=node.pk).status == Node.DOWN, 30,
             "the silent node to be marked down")
    assert tiny_runtime_node.name not in [n["name"] for n in client.get("/readyz").json()["runtime"]["nodes"]]


def test_infer_task_streams_real_tokens_and_a_redelivery_does_nothing_twice(runtime_node):
    import os
    import uuid

    import redis

    from gpu_runtime.streams import read_events
    from vajra.celery import app

    request_id = f"req_{uuid.uuid4().hex}"
    payload = {"request_id": request_id, "messages": [{"role": "user", "content": "What is the capital of France?"}],
               "sampling": {"max_tokens": 12}}
    queue = f"node.{runtime_node.name}"
    final = app.send_task("runtime.infer", args=[payload], queue=queue).get(timeout=240)
    assert final["finish_reason"] in {"stop", "length"} and final["error"] is None
    assert 0 < final["usage"]["completion_tokens"] <= 12 and final["gpu_ms"] > 0

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    events = list(read_events(client, request_id))
    text = "".join(data["text"] for _, kind, data in events if kind == "delta")
    assert "Paris" in text, text
    assert [kind for _, kind, _ in events][-1] == "final"

    again = app.send_task("runtime.infer", args=[payload], queue=queue).get(timeout=60)
    assert again == final and len(list(read_events(client, request_id))) == len(events)

    bad = app.send_task("runtime.infer", args=[{"request_id": "req_bad", "prompt": "x",
                                                "sampling": {"temperature": 9}}], queue=queue).get(timeout=60)
    assert bad["error"]["code"] == "invalid_request" and "temperature" in bad["error"]["message"]
