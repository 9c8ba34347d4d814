"""End to end on a tiny-llama node: a request at a tiny temperature (inside the accepted 0..2) sent through /v1 beside
a normal one is answered like a greedy one, and the normal one gets the answer it gets alone. The tiny model's logits
are small (|logit| < 1), so dividing them by 1e-37 stays finite in fp32; 1e-45 (a float32 subnormal) does not,
which is what 1e-37 does to SmolLM2's logits. A top_p of 1e-50 (below fp32's smallest number) keeps the best token."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from adapters.models import BaseModel
from gpu_runtime.model_store import TINY_MODEL
from serving.models import InferenceRequest
from tests.factories import create_key
from tests.processes import wait_for

pytestmark = pytest.mark.slow


def test_tiny_sampling_parameters_beside_a_normal_request_leave_it_fine(daphne, tiny_runtime_node, control_worker,
                                                                       alice, acme):
    wait_for(lambda: BaseModel.objects.filter(name=TINY_MODEL).exists(), 120, "the tiny node to register",
             tiny_runtime_node)
    _, secret = create_key(alice, acme)

    def infer(prompt, parameters):
        with httpx.Client(base_url=daphne, headers={"Authorization": f"Bearer {secret}"}, timeout=120) as client:
            body = {"prompt": prompt, "parameters": {**parameters, "max_tokens": 96}}
            return client.post(f"/v1/models/{TINY_MODEL}/infer", json=body)

    normal, tiny = "Hello there", "Tell me a story"
    alone = {prompt: infer(prompt, {"temperature": 0}) for prompt in (normal, tiny)}
    assert all(answer.status_code == 200 for answer in alone.values()), [a.text for a in alone.values()]
    for parameters in ({"temperature": 1e-37}, {"temperature": 1e-45}, {"temperature": 0.7, "top_p": 1e-50}):
        with ThreadPoolExecutor(2) as pool:  # the node runs both at once (concurrency 2): they share decode steps
            beside, hostile = pool.map(lambda args: infer(*args), [(normal, {"temperature": 0}), (tiny, parameters)])
        assert beside.status_code == 200, beside.text
        assert hostile.status_code == 200, hostile.text
        assert beside.json()["text"] == alone[normal].json()["text"]
        assert hostile.json()["text"] == alone[tiny].json()["text"]  # that small a temperature or top_p is greedy
        for answer in (beside, hostile):
            wait_for(lambda: InferenceRequest.objects.filter(pk=answer.json()["id"], status="succeeded").exists(),  # noqa: B023
                     60, "the control worker to record the final event")
