"""tiny-llama: the random-weight model store tests use to run real nodes fast. It is written in the layout the
runtime loads, tokenizes exactly as SmolLM2 does, and a node on it registers through heartbeats and serves
requests with and without an r=8 adapter."""

import json

import httpx
import pytest
import torch

from adapters.models import BaseModel
from gpu_runtime.adapter_validation import BaseFacts
from gpu_runtime.base_model import load_model_dir
from gpu_runtime.model_store import DEFAULT_MODEL, TINY_MODEL, is_imported, read_manifest, sha256_file, write_tiny_llama
from serving.models import InferenceRequest
from tests.factories import create_key
from tests.processes import sse_events, wait_for


def test_tiny_store_is_a_complete_store_entry(tiny_model_store, base_model_store, tmp_path):
    manifest = read_manifest(tiny_model_store, TINY_MODEL)
    assert is_imported(tiny_model_store, TINY_MODEL)
    arch = manifest["architecture"]
    assert (arch["num_hidden_layers"], arch["hidden_size"], arch["vocab_size"]) == (2, 64, 49152)
    for variant, info in manifest["variants"].items():
        assert sha256_file(tiny_model_store / TINY_MODEL / variant / "model.safetensors") == info["sha256"]
    facts = BaseFacts.from_manifest(manifest)
    assert facts.modules["q_proj"] == ("self_attn", 64, 64) and facts.modules["v_proj"] == ("self_attn", 64, 32)
    # the same seed writes the same weights; another seed does not
    again = write_tiny_llama(tmp_path, tokenizer_from=base_model_store / DEFAULT_MODEL / "float32")
    other = write_tiny_llama(tmp_path, "tiny-other", tokenizer_from=base_model_store / DEFAULT_MODEL / "float32",
                             seed=1)
    assert again["variants"]["float32"]["sha256"] == manifest["variants"]["float32"]["sha256"]
    assert other["variants"]["float32"]["sha256"] != manifest["variants"]["float32"]["sha256"]


def test_tiny_model_loads_and_tokenizes_like_smollm2(tiny_model_store, base_model_store):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_store / TINY_MODEL / "float32"
    model, tokenizer, _, loader = load_model_dir(path, torch.float32, "cpu")
    assert loader == "safetensors mmap"
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    smollm2 = AutoTokenizer.from_pretrained(base_model_store / DEFAULT_MODEL / "float32")
    text = "Grüße, 東京! 🚀"
    assert tokenizer.encode(text) == smollm2.encode(text)
    chat = [{"role": "user", "content": text}]
    assert (tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            == smollm2.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))


@pytest.mark.slow
def test_node_on_tiny_model_registers_and_serves_with_an_adapter(daphne, tiny_runtime_node, control_worker, alice,
                                                                 acme, tiny_adapter_zip):
    base = wait_for(lambda: BaseModel.objects.filter(name=TINY_MODEL).first(), 120,
                    "the tiny node to register its base model", tiny_runtime_node)
    assert base.architecture["num_hidden_layers"] == 2
    _, secret = create_key(alice, acme)
    client = httpx.Client(base_url=daphne, headers={"Authorization": f"Bearer {secret}"}, timeout=60)
    up = client.post("/api/v1/adapters", data={"name": "tiny-bot", "base_model": TINY_MODEL},
                     files={"file": ("adapter.zip", tiny_adapter_zip, "application/zip")})
    assert up.status_code == 201, up.text

    texts = {}
    for adapter in (None, "tiny-bot"):
        body = {"prompt": "Hello there", "parameters": {"temperature": 0, "max_tokens": 12},
                **({"adapter_id": adapter} if adapter else {})}
        answer = client.post(f"/v1/models/{TINY_MODEL}/infer", json=body)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["usage"]["completion_tokens"] > 0 and result["finish_reason"] in {"length", "stop"}
        texts[adapter] = result["text"]
        row = wait_for(lambda: InferenceRequest.objects.filter(pk=result["id"], status="succeeded").first(),  # noqa: B023
                       60, "the control worker to record the final event")
        assert row.completion_tokens == result["usage"]["completion_tokens"]
        assert row.node.name == tiny_runtime_node.name
        with client.stream("POST", f"/v1/models/{TINY_MODEL}/infer", json={**body, "stream": True}) as response:
            deltas = [json.loads(e["data"])["text"] for e in sse_events(response) if e["event"] == "delta"]
        assert "".join(deltas) == result["text"]  # greedy: the same answer streamed
    assert texts[None] != texts["tiny-bot"]  # the adapter changes what the random model says
