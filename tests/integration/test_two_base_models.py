"""Several base models in one fleet: a tiny Qwen2 checkpoint, saved here with ``save_pretrained``, is imported by
the model store's own command; one real node serves it and another serves tiny-llama. Each registers its model, the
catalog lists each model with its node, and an adapter uploaded for each model is served by that model's node only."""

import os
import subprocess
import sys

import httpx
import pytest

from adapters.models import BaseModel
from gpu_runtime.model_store import DEFAULT_MODEL, TINY_MODEL, read_manifest
from serving.models import InferenceRequest
from tests.factories import create_key
from tests.processes import ROOT, lora_zip, start_runtime_node, wait_for, wait_until_serving

QWEN = "tiny-qwen2"


@pytest.fixture(scope="session")
def qwen_store(tiny_model_store, base_model_store, tmp_path_factory):
    """tiny_model_store plus a random Qwen2 (2 layers, hidden 64, SmolLM2's tokenizer and chat template) imported
    from its save_pretrained directory through ``python -m gpu_runtime.model_store import --source``."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    source = tmp_path_factory.mktemp("qwen-src") / "qwen"
    tokenizer = AutoTokenizer.from_pretrained(base_model_store / DEFAULT_MODEL / "float32")
    torch.manual_seed(3)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    subprocess.run([sys.executable, "-m", "gpu_runtime.model_store", "import", "--source", str(source), "--name",
                    QWEN], cwd=ROOT, check=True, timeout=300, stdout=subprocess.DEVNULL,
                   env={**os.environ, "VAJRA_MODEL_STORE": str(tiny_model_store)})
    assert read_manifest(tiny_model_store, QWEN)["architecture"]["model_type"] == "qwen2"
    return tiny_model_store


@pytest.mark.slow
def test_two_nodes_on_two_base_models_each_serve_their_adapter(daphne, qwen_store, control_worker, alice, acme,
                                                               tmp_path):
    nodes = {model: start_runtime_node(qwen_store, tmp_path / f"{model}.log", name=f"{model}-node", base_model=model)
             for model in (TINY_MODEL, QWEN)}
    try:
        for model, proc in nodes.items():
            wait_until_serving(model, proc)
        assert BaseModel.objects.get(name=QWEN).architecture["model_type"] == "qwen2"
        _, secret = create_key(alice, acme)
        client = httpx.Client(base_url=daphne, headers={"Authorization": f"Bearer {secret}"}, timeout=120)
        catalog = {m["id"]: [n["name"] for n in m["nodes"]] for m in client.get("/api/v1/base-models").json()["data"]}
        assert catalog[TINY_MODEL] == [f"{TINY_MODEL}-node"] and catalog[QWEN] == [f"{QWEN}-node"]

        texts = {}
        for model in (TINY_MODEL, QWEN):
            upload = client.post("/api/v1/adapters", data={"name": f"{model}-bot", "base_model": model}, files={
                "file": ("adapter.zip", lora_zip(qwen_store / model / "float32", tmp_path / model), "application/zip")})
            assert upload.status_code == 201, upload.text
            for adapter in (None, f"{model}-bot"):
                body = {"prompt": "Hello there", "parameters": {"temperature": 0, "max_tokens": 8},
                        **({"adapter_id": adapter} if adapter else {})}
                answer = client.post(f"/v1/models/{model}/infer", json=body)
                assert answer.status_code == 200, answer.text
                result = answer.json()
                assert result["usage"]["completion_tokens"] > 0
                texts[model, adapter] = result["text"]
                row = wait_for(lambda: InferenceRequest.objects.filter(pk=result["id"],  # noqa: B023
                                                                       status="succeeded").first(),
                               60, "the control worker to record the final event")
                assert row.node.name == f"{model}-node"  # placement filters by base model
        for model in (TINY_MODEL, QWEN):
            assert texts[model, None] != texts[model, f"{model}-bot"]  # each adapter acts on its own model
        # an adapter names its own base model: the other model's path refuses it
        wrong = client.post(f"/v1/models/{QWEN}/infer", json={"prompt": "Hi", "adapter_id": f"{TINY_MODEL}-bot"})
        assert 400 <= wrong.status_code < 500, wrong.text
    finally:
        for proc in nodes.values():
            proc.stop()
