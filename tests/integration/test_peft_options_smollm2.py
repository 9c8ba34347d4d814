"""rsLoRA + alpha_pattern + rank_pattern on the real SmolLM2 against PEFT: an adapter whose layers differ in rank
and scaling, in a slot bigger than its largest rank, gives PEFT's logits (fp32 within 1e-4, bf16 within twice
PEFT's own bf16 error) and PEFT's greedy tokens. The measured differences are printed (run with ``-s``)."""

import copy
import os
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from gpu_runtime.adapter_validation import BaseFacts, validate_adapter
from gpu_runtime.base_model import load_base_model
from gpu_runtime.config import RuntimeConfig
from gpu_runtime.lora import SlotPool, adapter_weights_from_tensors

pytestmark = pytest.mark.slow

OPTIONS = dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
               rank_pattern={"v_proj": 4, r"layers\.(3|7)\.self_attn\.q_proj": 16},
               alpha_pattern={"o_proj": 4, "down_proj": 32})


@pytest.fixture(scope="module")
def smollm2(base_model_store, tmp_path_factory):
    os.environ.setdefault("VAJRA_MODEL_STORE", str(base_model_store))
    config = RuntimeConfig.from_env()
    base = load_base_model(config.__class__(**{**config.__dict__, "dtype": "float32", "device": "cpu",
                                               "model_store": base_model_store}))
    reference = AutoModelForCausalLM.from_pretrained(Path(base_model_store) / base.name / "float32",
                                                     dtype=torch.float32).eval()  # PEFT's, on transformers' model
    torch.manual_seed(11)
    peft = get_peft_model(copy.deepcopy(reference), LoraConfig(**OPTIONS, init_lora_weights=False))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.mul_(0.3)
    path = tmp_path_factory.mktemp("smol-options") / "adapter"
    peft.save_pretrained(path)
    return base, reference, path


def served(base, path, dtype):
    facts = BaseFacts.from_manifest(base.manifest)
    adapter = validate_adapter(path, facts)
    model = copy.deepcopy(base.model).to(dtype)
    pool = SlotPool(model, facts, {32: 1})
    pool.write(1, adapter_weights_from_tensors(load_file(str(path / "adapter_model.safetensors")), adapter),
               adapter.scaling)
    pool.set_rows([1])
    return model


@torch.inference_mode()
def greedy(model, ids, tokens=16):
    for _ in range(tokens):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0].tolist()


def test_rslora_alpha_and_rank_patterns_match_peft(smollm2):
    base, base_reference, path = smollm2
    facts = validate_adapter(path, BaseFacts.from_manifest(base.manifest))
    assert facts.modules[(3, "q_proj")].rank == 16 and facts.modules[(0, "v_proj")].rank == 4
    ids = torch.tensor([base.tokenizer("The tides of the ocean are caused by").input_ids])
    with torch.inference_mode():
        reference = PeftModel.from_pretrained(copy.deepcopy(base_reference), path).eval()
        expected = reference(ids).logits
        ours = served(base, path, torch.float32)
        fp32 = float((ours(ids).logits - expected).abs().max())
        assert (expected - base.model(ids).logits).abs().max() > 0.5  # the adapter matters
        peft_bf16 = float((PeftModel.from_pretrained(copy.deepcopy(base_reference).to(torch.bfloat16), path)(ids)
                           .logits.float() - expected).abs().max())
        ours_bf16 = float((served(base, path, torch.bfloat16)(ids).logits.float() - expected).abs().max())
    print(f"\nSmolLM2 rslora+alpha_pattern+rank_pattern: fp32 {fp32:.2e}, bf16 ours vs PEFT-fp32 {ours_bf16:.2e}, "
          f"PEFT-bf16 vs PEFT-fp32 {peft_bf16:.2e}")
    assert fp32 < 1e-4
    assert ours_bf16 <= 2 * peft_bf16 + 1e-2
    assert greedy(ours, ids) == greedy(reference, ids)
