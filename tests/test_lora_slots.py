"""Slot-based LoRA against PEFT, the reference: one forward pass over rows with different adapters (and a
base-only row) gives each row the logits PEFT gives with that adapter alone."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from gpu_runtime.adapter_validation import BaseFacts, validate_adapter
from gpu_runtime.lora import SlotPool, adapter_weights_from_tensors
from tests.runtime_fixtures import runtime_model

CFG = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2)
MANIFEST = {"name": "tiny", "architecture": {**{k: CFG[k] for k in CFG if k != "vocab_size"},
                                             "num_hidden_layers": 2}}
ADAPTERS = [  # (rank, alpha, targets)
    (4, 8, ["q_proj", "v_proj"]),
    (8, 16, ["q_proj", "k_proj", "o_proj", "down_proj"]),
    (2, 2, ["gate_proj", "up_proj"]),
    (16, 8, ["v_proj"]),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(**CFG)).eval()
    paths = []
    for i, (r, alpha, targets) in enumerate(ADAPTERS):
        torch.manual_seed(100 + i)
        peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                               init_lora_weights=False))
        path = tmp_path_factory.mktemp(f"adapter{i}")
        peft.save_pretrained(path)
        paths.append(path)
    return base, paths


def peft_logits(base, path, ids):
    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(base), path).eval()
    with torch.no_grad():
        return model(ids).logits


def test_mixed_batch_matches_peft_per_row(tiny):
    base, paths = tiny
    facts_base = BaseFacts.from_manifest({"name": "tiny", "architecture": MANIFEST["architecture"]})
    model = runtime_model(base)
    pool = SlotPool(model, facts_base, buckets={4: 2, 8: 1, 16: 2})
    slot_ids = []
    for path, free in zip(paths, ([1], [3], [2], [4]), strict=True):
        facts = validate_adapter(path, facts_base)
        weights = adapter_weights_from_tensors(load_file(str(path / "adapter_model.safetensors")), facts)
        pool.write(free[0], weights, facts.scaling)
        slot_ids.append(free[0])
    torch.manual_seed(1)
    ids = torch.randint(0, CFG["vocab_size"], (1, 12))
    batch = ids.repeat(len(paths) + 1, 1)
    pool.set_rows(slot_ids + [0])
    with torch.no_grad():
        mixed = model(batch).logits
    for row, path in enumerate(paths):
        expected = peft_logits(base, path, ids)[0]
        assert torch.allclose(mixed[row], expected, atol=1e-5), (row, (mixed[row] - expected).abs().max())
    with torch.no_grad():
        assert torch.allclose(mixed[-1], base(ids).logits[0], atol=1e-6)  # the base-only row


def test_rank_8_adapter_in_a_16_bucket_is_exact_and_clear_restores_base(tiny):
    base, paths = tiny
    facts_base = BaseFacts.from_manifest({"name": "tiny", "architecture": MANIFEST["architecture"]})
    model = runtime_model(base)
    pool = SlotPool(model, facts_base, buckets={16: 1})
    facts = validate_adapter(paths[1], facts_base)
    pool.write(1, adapter_weights_from_tensors(load_file(str(paths[1] / "adapter_model.safetensors")), facts),
               facts.scaling)
    ids = torch.randint(0, CFG["vocab_size"], (1, 7))
    pool.set_rows([1])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, peft_logits(base, paths[1], ids), atol=1e-5)
    pool.clear(1)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, base(ids).logits, atol=1e-6)
    assert pool.slots_for_rank(8) == [1] and pool.slots_for_rank(32) == []


def test_a_slot_written_between_steps_of_the_same_batch_serves_its_new_adapter(tiny):
    """Every row has an adapter of one bucket (the whole-batch path). While the batch keeps its rows and slots the
    pool keeps its groups and the layers their gathered A/B; once a slot gets another adapter (other rank, alpha and
    modules), the next step's rows get PEFT's logits for the new one."""
    base, paths = tiny
    facts_base = BaseFacts.from_manifest({"name": "tiny", "architecture": MANIFEST["architecture"]})
    model = runtime_model(base)
    pool = SlotPool(model, facts_base, buckets={4: 2})

    def write(slot, path):
        facts = validate_adapter(path, facts_base)
        pool.write(slot, adapter_weights_from_tensors(load_file(str(path / "adapter_model.safetensors")), facts),
                   facts.scaling)

    write(1, paths[0])
    write(2, paths[2])
    ids = torch.randint(0, CFG["vocab_size"], (1, 6), generator=torch.Generator().manual_seed(2))
    pool.set_rows([1, 2])
    groups = pool.groups
    for _ in range(2):  # the second step reuses the groups and the gathered weights
        pool.set_rows([1, 2])
        assert pool.groups is groups
        with torch.no_grad():
            logits = model(ids.repeat(2, 1)).logits
        assert torch.allclose(logits[0], peft_logits(base, paths[0], ids)[0], atol=1e-5)
        assert torch.allclose(logits[1], peft_logits(base, paths[2], ids)[0], atol=1e-5)
    write(1, paths[2])
    pool.set_rows([1, 2])
    assert pool.groups is not groups
    with torch.no_grad():
        logits = model(ids.repeat(2, 1)).logits
    expected = peft_logits(base, paths[2], ids)[0]
    assert torch.allclose(logits[0], expected, atol=1e-5) and torch.allclose(logits[1], expected, atol=1e-5)


@pytest.mark.parametrize("budget", [0, 1 << 30])
def test_gathered_weights_are_kept_within_the_budget_and_freed_when_the_batch_changes(tiny, monkeypatch, budget):
    """Past the budget the layers gather per step (same logits); within it they keep, and a new batch frees it."""
    from gpu_runtime import lora

    monkeypatch.setattr(lora, "GATHER_BUDGET_BYTES", budget)
    base, paths = tiny
    facts_base = BaseFacts.from_manifest({"name": "tiny", "architecture": MANIFEST["architecture"]})
    model = runtime_model(base)
    pool = SlotPool(model, facts_base, buckets={4: 2})
    for slot, path in ((1, paths[0]), (2, paths[2])):
        facts = validate_adapter(path, facts_base)
        pool.write(slot, adapter_weights_from_tensors(load_file(str(path / "adapter_model.safetensors")), facts),
                   facts.scaling)
    ids = torch.randint(0, CFG["vocab_size"], (1, 5), generator=torch.Generator().manual_seed(3))
    pool.set_rows([1, 2])
    with torch.no_grad():
        logits = model(ids.repeat(2, 1)).logits
    assert torch.allclose(logits[0], peft_logits(base, paths[0], ids)[0], atol=1e-5)
    assert torch.allclose(logits[1], peft_logits(base, paths[2], ids)[0], atol=1e-5)
    kept = [w for w in pool.layers.values() if w._gathered]
    assert (len(kept) > 0) == (budget > 0) and pool._kept_bytes <= budget
    pool.set_rows([2])
    assert pool._kept_bytes == 0 and not any(w._gathered for w in pool.layers.values())
