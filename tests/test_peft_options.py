"""Every PEFT LoRA option is served as PEFT serves it, or refused with a message that names it.

Each accepted option's adapter is built by PEFT itself on a tiny Llama, validated, copied into a slot (in a
bucket bigger than its largest rank, so zero padding is exercised) and compared with ``PeftModel``: in fp32 the
logits within 1e-4 and greedy tokens identical; in bf16 within twice the error of PEFT's own bf16 against its
fp32 (plus a little). The measured differences are printed (run with ``-s``)."""

import copy
import dataclasses
import json

import peft
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from gpu_runtime import adapter_config
from gpu_runtime.adapter_validation import AdapterRejected, BaseFacts, validate_adapter
from gpu_runtime.lora import SlotPool, adapter_weights_from_tensors
from gpu_runtime.trainer import TrainableLoRA
from tests.runtime_fixtures import runtime_model

CFG = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
           num_key_value_heads=2)
FACTS = BaseFacts.from_manifest({"name": "tiny", "architecture": {k: CFG[k] for k in CFG if k != "vocab_size"}})
BUCKET = 32  # every adapter below fits, most with padding
GREEDY_TOKENS = 8
FIGURES = {}

# option -> (LoraConfig arguments, edits to the saved adapter_config.json: None deletes the key)
ACCEPTED = {
    "plain": (dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), {}),
    "rslora": (dict(r=16, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "k_proj", "down_proj"]), {}),
    "alpha_pattern": (dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                           alpha_pattern={"v_proj": 32, "layers.1.self_attn.q_proj": 2}), {}),
    "rank_pattern": (dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                          rank_pattern={"q_proj": 2, "model.layers.0.mlp.down_proj": 12}), {}),
    "rslora+alpha_pattern+rank_pattern": (dict(
        r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj", "o_proj", "gate_proj"],
        rank_pattern={"v_proj": 4, r"layers\.2\.self_attn\.q_proj": 16}, alpha_pattern={"o_proj": 3, "q_proj": 40}),
        {}),
    "layers_to_transform": (dict(r=4, target_modules=["q_proj", "k_proj", "o_proj"], layers_to_transform=[0, 2]),
                            {}),
    "layers_to_transform+layers_pattern": (dict(r=4, target_modules=["v_proj", "up_proj"], layers_to_transform=1,
                                                layers_pattern="layers"), {}),
    "regex target_modules": (dict(r=4, target_modules=r".*\.layers\.[12]\.(self_attn\.(q|k)_proj|mlp\.up_proj)"),
                             {}),
    "exclude_modules": (dict(r=4, target_modules=["q_proj", "o_proj", "up_proj"],
                             exclude_modules=["o_proj", "layers.0.mlp.up_proj"]), {}),
    "all-linear": (dict(r=2, target_modules="all-linear"), {}),
    "PEFT defaults (no r, lora_alpha, target_modules)": (dict(), {"r": None, "lora_alpha": None,
                                                                   "target_modules": None}),
    "no lora_alpha (PEFT's 8, not r)": (dict(r=2, lora_alpha=32, target_modules=["q_proj", "v_proj"]),
                                        {"lora_alpha": None}),
    "fan_in_fan_out": (dict(r=4, target_modules=["q_proj"]), {"fan_in_fan_out": True}),
    "bias=all": (dict(r=4, target_modules=["q_proj"], bias="all"), {}),
    "init_lora_weights=gaussian, lora_dropout": (dict(r=4, target_modules=["v_proj"], lora_dropout=0.1,
                                                      init_lora_weights="gaussian"), {}),
}


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**CFG)).eval()


def build(base, path, kwargs, edits=None, seed=7):
    """An adapter saved by PEFT with random A and B (B scaled so the delta changes greedy tokens)."""
    model = get_peft_model(copy.deepcopy(base), LoraConfig(**kwargs))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.5 if "lora_B" in name else 0.2))
    model.save_pretrained(path)
    config = json.loads((path / "adapter_config.json").read_text())
    for key, value in (edits or {}).items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def ours(base, path, dtype):
    facts = validate_adapter(path, FACTS)
    model = runtime_model(base).to(dtype)
    pool = SlotPool(model, FACTS, buckets={BUCKET: 1})
    pool.write(1, adapter_weights_from_tensors(load_file(str(path / "adapter_model.safetensors")), facts),
               facts.scaling)
    pool.set_rows([1])
    return model


def reference(base, path, dtype):
    return PeftModel.from_pretrained(copy.deepcopy(base).to(dtype), path).eval()


@torch.no_grad()
def greedy(model, ids):
    for _ in range(GREEDY_TOKENS):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0].tolist()


@torch.no_grad()
def logits(model, ids):
    return model(ids).logits.float()


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if FIGURES:
        print("\nmax |logit diff| per option: fp32 ours vs PEFT, bf16 ours vs PEFT-fp32, PEFT-bf16 vs PEFT-fp32")
        for option, (fp32, ours_bf16, peft_bf16) in FIGURES.items():
            print(f"  {option}: {fp32:.2e}, {ours_bf16:.2e}, {peft_bf16:.2e}")


@pytest.mark.parametrize("option", list(ACCEPTED))
def test_accepted_option_serves_what_peft_serves(base, tmp_path, option):
    kwargs, edits = ACCEPTED[option]
    path = build(base, tmp_path / "adapter", kwargs, edits)
    ids = torch.randint(0, CFG["vocab_size"], (1, 10), generator=torch.Generator().manual_seed(1))
    expected = logits(reference(base, path, torch.float32), ids)
    served = ours(base, path, torch.float32)
    got = logits(served, ids)
    assert (got - logits(base, ids)).abs().max() > 0.05  # the adapter changes the output: the test can fail
    fp32 = float((got - expected).abs().max())
    assert fp32 < 1e-4, (option, fp32)
    assert greedy(served, ids) == greedy(reference(base, path, torch.float32), ids)

    peft_bf16 = float((logits(reference(base, path, torch.bfloat16), ids) - expected).abs().max())
    ours_bf16 = float((logits(ours(base, path, torch.bfloat16), ids) - expected).abs().max())
    FIGURES[option] = (fp32, ours_bf16, peft_bf16)
    print(f"{option}: fp32 {fp32:.2e}, bf16 ours vs PEFT-fp32 {ours_bf16:.2e}, PEFT-bf16 vs PEFT-fp32 "
          f"{peft_bf16:.2e}")
    assert ours_bf16 <= 2 * peft_bf16 + 1e-3, (option, ours_bf16, peft_bf16)


def test_patterns_give_each_layer_its_own_rank_alpha_and_scaling(base, tmp_path):
    kwargs, _ = ACCEPTED["rslora+alpha_pattern+rank_pattern"]
    facts = validate_adapter(build(base, tmp_path / "a", kwargs), FACTS)
    modules = facts.modules
    assert (modules[(2, "q_proj")].rank, modules[(2, "q_proj")].alpha) == (16, 40.0)  # both patterns' keys match
    assert (modules[(0, "q_proj")].rank, modules[(0, "v_proj")].rank, modules[(1, "o_proj")].alpha) == (8, 4, 3.0)
    assert modules[(0, "v_proj")].scaling == pytest.approx(16 / 2)  # alpha / sqrt(r) with r=4
    assert facts.rank == 16 and len(modules) == 4 * CFG["num_hidden_layers"]


def test_layers_to_transform_wraps_only_those_layers(base, tmp_path):
    kwargs, _ = ACCEPTED["layers_to_transform"]
    facts = validate_adapter(build(base, tmp_path / "a", kwargs), FACTS)
    assert facts.layers == [0, 2] and {layer for layer, _ in facts.modules} == {0, 2}


def refusal(path):
    with pytest.raises(AdapterRejected) as info:
        validate_adapter(path, FACTS)
    return info.value


# option -> (LoraConfig arguments, config edits, code, words the message must hold)
REFUSED = {
    "DoRA": (dict(r=4, target_modules=["q_proj"], use_dora=True), {}, "unsupported_option", "DoRA"),
    "modules_to_save": (dict(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]), {}, "unsupported_option",
                        "modules_to_save"),
    "lora_bias": (dict(r=4, target_modules=["q_proj"], lora_bias=True), {}, "unsupported_option", "lora_bias"),
    "trainable_token_indices": (dict(r=4, target_modules=["q_proj"], trainable_token_indices=[3, 5]), {},
                                "unsupported_option", "trainable_token_indices"),
    "target_parameters": (dict(r=4, target_modules=["q_proj"]), {"target_parameters": ["mlp.experts.gate_up"]},
                          "unsupported_option", "target_parameters"),
    "layer_replication": (dict(r=4, target_modules=["q_proj"]), {"layer_replication": [[0, 2], [1, 3]]},
                          "unsupported_option", "layer_replication"),
    "PiSSA init": (dict(r=4, target_modules=["q_proj"]), {"init_lora_weights": "pissa"}, "unsupported_option",
                   "PiSSA"),
    "MiCA init": (dict(r=4, target_modules=["q_proj"]), {"init_lora_weights": "mica"}, "unsupported_option", "MiCA"),
    "an option this server does not know": (dict(r=4, target_modules=["q_proj"]), {"use_hyper_lora": True},
                                            "unsupported_option", "use_hyper_lora"),
    "lm_head by regex": (dict(r=4, target_modules=r".*(q_proj|lm_head)"), {}, "unsupported_target_modules",
                         "lm_head"),
    "embed_tokens in the list": (dict(r=4, target_modules=["q_proj", "embed_tokens"]), {},
                                 "unsupported_target_modules", "embed_tokens"),
    "layers_to_transform with a regex": (dict(r=4, target_modules=r".*q_proj"), {"layers_to_transform": [0]},
                                         "bad_layers", "regex"),
    "a regex that backtracks for ever": (dict(r=4, target_modules=["q_proj"]),
                                         {"target_modules": r"(.*a)+\.q_proj"}, "bad_pattern", "too complex"),
    "a pattern key that backtracks for ever": (dict(r=4, target_modules=["q_proj"]),
                                               {"rank_pattern": {r"(\w+)*q": 2}}, "bad_pattern", "too complex"),
}


@pytest.mark.parametrize("option", list(REFUSED))
def test_refused_option_says_what_is_not_served(base, tmp_path, option):
    kwargs, edits, code, words = REFUSED[option]
    error = refusal(build(base, tmp_path / "adapter", kwargs, edits))
    assert error.code == code and words in error.message, error.to_json()


def test_trained_bias_tensors_are_refused_by_name(base, tmp_path):
    path = build(base, tmp_path / "a", dict(r=4, target_modules=["q_proj"], bias="all"))
    tensors = load_file(str(path / "adapter_model.safetensors"))
    tensors["base_model.model.model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    error = refusal(path)
    assert error.code == "unsupported_option" and "bias" in error.message


def test_every_lora_config_field_is_served_ignored_or_refused():
    """A PEFT upgrade that adds a LoraConfig field fails here until someone decides what it means for serving."""
    assert peft.__version__ == "0.21.2"
    known = adapter_config.SERVED_FIELDS | adapter_config.IGNORED_FIELDS | set(adapter_config.REFUSED_OPTIONS)
    assert {f.name for f in dataclasses.fields(LoraConfig)} == known


def test_training_on_from_an_adapter_starts_from_what_peft_serves(base, tmp_path):
    """The trainer's pairs for an adapter with patterns and rsLoRA give PEFT's logits before the first step, and
    the config it saves keeps the adapter's layers and patterns."""
    kwargs = dict(ACCEPTED["rslora+alpha_pattern+rank_pattern"][0], layers_to_transform=[0, 2])
    path = build(base, tmp_path / "a", kwargs)
    facts = validate_adapter(path, FACTS)
    model = runtime_model(base)
    pool = SlotPool(model, FACTS, buckets={BUCKET: 1})
    init = adapter_weights_from_tensors(load_file(str(path / "adapter_model.safetensors")), facts)
    pool.trainable = TrainableLoRA(FACTS, rank=facts.rank, alpha=facts.alpha, targets=facts.target_modules,
                                   device="cpu", seed=0, init=init, modules=facts.modules, shape=facts.shape)
    ids = torch.randint(0, CFG["vocab_size"], (1, 10), generator=torch.Generator().manual_seed(2))
    assert (logits(model, ids) - logits(reference(base, path, torch.float32), ids)).abs().max() < 1e-4
    saved = pool.trainable.peft_config("tiny")
    original = json.loads((path / "adapter_config.json").read_text())
    for field in adapter_config.SHAPE_FIELDS:
        assert saved[field] == original[field], field
