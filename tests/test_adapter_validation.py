"""Every refusal of the adapter validator, each with a crafted file; and a real PEFT adapter passes."""

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from gpu_runtime.adapter_validation import AdapterRejected, BaseFacts, validate_adapter

MANIFEST = {"name": "tiny-llama", "architecture": {
    "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 2}}
BASE = BaseFacts.from_manifest(MANIFEST, aliases=("org/tiny-llama",))


@pytest.fixture(scope="module")
def tiny_peft_adapter(tmp_path_factory):
    """A real adapter saved by PEFT from a real (tiny, random) Llama."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    path = tmp_path_factory.mktemp("adapter")
    peft.save_pretrained(path)
    config = json.loads((path / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "org/tiny-llama"
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def write_adapter(path, *, config=None, tensors=None, r=4, modules=("q_proj", "v_proj"), dtype=np.float32):
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": 8, "target_modules": list(modules),
           "base_model_name_or_path": "tiny-llama"}
    cfg.update(config or {})
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    if tensors is None:
        tensors = {}
        for layer in range(2):
            for module in modules:
                block, fan_in, fan_out = BASE.modules[module]
                prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
                tensors[f"{prefix}.lora_A.weight"] = np.full((r, fan_in), 0.01, dtype=dtype)
                tensors[f"{prefix}.lora_B.weight"] = np.full((fan_out, r), 0.02, dtype=dtype)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


def rejected(path, **kwargs):
    with pytest.raises(AdapterRejected) as info:
        validate_adapter(path, BASE, **kwargs)
    return info.value.code


def test_real_peft_adapter_passes(tiny_peft_adapter):
    facts = validate_adapter(tiny_peft_adapter, BASE)
    assert (facts.rank, facts.alpha, facts.target_modules, facts.dtype) == (4, 8.0, ["q_proj", "v_proj"], "F32")
    assert facts.scaling == 2.0 and len(facts.tensors) == 8


def test_crafted_adapter_in_f16_passes(tmp_path):
    assert validate_adapter(write_adapter(tmp_path / "a", dtype=np.float16), BASE).dtype == "F16"


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pkl"])
def test_pickle_is_refused_unopened(tmp_path, suffix):
    path = write_adapter(tmp_path / "a")
    (path / f"adapter_model{suffix}").write_bytes(b"\x80\x04 not even read")
    assert rejected(path) == "pickle_refused"


@pytest.mark.parametrize("config,code", [
    ({"base_model_name_or_path": "meta-llama/Llama-3-8B"}, "base_mismatch"),
    ({"peft_type": "PREFIX_TUNING"}, "not_lora"),
    ({"r": 0}, "bad_rank"),
    ({"r": 65}, "bad_rank"),
    ({"r": "8"}, "bad_rank"),
    ({"lora_alpha": -1}, "bad_alpha"),
    ({"target_modules": ["q_proj", "qkv_proj"]}, "unknown_target_modules"),
    ({"target_modules": []}, "bad_target_modules"),
    ({"use_dora": True}, "unsupported_option"),
    ({"layers_to_transform": [7]}, "bad_layers"),
])
def test_config_refusals(tmp_path, config, code):
    assert rejected(write_adapter(tmp_path / "a", config=config)) == code


def test_rank_cap_is_configurable(tmp_path):
    assert rejected(write_adapter(tmp_path / "a", r=8), max_rank=4) == "bad_rank"


def test_missing_files(tmp_path):
    path = write_adapter(tmp_path / "a")
    (path / "adapter_model.safetensors").unlink()
    assert rejected(path) == "missing_weights"
    (path / "adapter_config.json").unlink()
    assert rejected(path) == "missing_config"


def test_config_not_json(tmp_path):
    path = write_adapter(tmp_path / "a")
    (path / "adapter_config.json").write_text("{nope")
    assert rejected(path) == "invalid_config"


def test_wrong_shape(tmp_path):
    path = write_adapter(tmp_path / "a")
    good = write_adapter(tmp_path / "b")
    from safetensors.numpy import load_file

    tensors = load_file(str(good / "adapter_model.safetensors"))
    name = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
    tensors[name] = np.zeros((64, 4), dtype=np.float32)  # v_proj's out is 32 (2 kv heads x 16)
    write_adapter(path, tensors=tensors)
    assert rejected(path) == "shape_mismatch"


def test_extra_and_missing_tensors(tmp_path):
    from safetensors.numpy import load_file

    tensors = load_file(str(write_adapter(tmp_path / "good") / "adapter_model.safetensors"))
    extra = dict(tensors, **{"lm_head.weight": np.zeros((2, 2), dtype=np.float32)})
    assert rejected(write_adapter(tmp_path / "extra", tensors=extra)) == "unexpected_tensors"
    missing = {k: v for k, v in tensors.items() if "layers.1.self_attn.q_proj.lora_A" not in k}
    assert rejected(write_adapter(tmp_path / "missing", tensors=missing)) == "missing_tensors"


def test_dtypes(tmp_path):
    assert rejected(write_adapter(tmp_path / "f64", dtype=np.float64)) == "bad_dtype"
    from safetensors.numpy import load_file

    tensors = load_file(str(write_adapter(tmp_path / "good") / "adapter_model.safetensors"))
    first = next(iter(tensors))
    tensors[first] = tensors[first].astype(np.float16)
    assert rejected(write_adapter(tmp_path / "mixed", tensors=tensors)) == "mixed_dtypes"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values(tmp_path, bad):
    from safetensors.numpy import load_file

    tensors = load_file(str(write_adapter(tmp_path / "good") / "adapter_model.safetensors"))
    name = sorted(tensors)[3]
    tensors[name][0, 0] = bad
    assert rejected(write_adapter(tmp_path / "bad", tensors=tensors)) == "non_finite"


def test_bf16_values_are_checked_too(tmp_path):
    import torch
    from safetensors.numpy import load_file
    from safetensors.torch import save_file as save_torch

    tensors = {k: torch.from_numpy(v).to(torch.bfloat16)
               for k, v in load_file(str(write_adapter(tmp_path / "good") / "adapter_model.safetensors")).items()}
    path = write_adapter(tmp_path / "bf16")
    save_torch(tensors, str(path / "adapter_model.safetensors"))
    assert validate_adapter(path, BASE).dtype == "BF16"
    tensors[sorted(tensors)[0]][0, 0] = float("inf")
    save_torch(tensors, str(path / "adapter_model.safetensors"))
    assert rejected(path) == "non_finite"


def test_header_size_caps(tmp_path):
    path = write_adapter(tmp_path / "a")
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    assert rejected(path) == "header_too_large"
    weights.write_bytes(b"abc")
    assert rejected(path) == "invalid_safetensors"
    header = json.dumps({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1000]}}).encode()
    weights.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    assert rejected(path) == "invalid_safetensors"  # offsets past the end of the file


def test_file_size_cap(tmp_path):
    assert rejected(write_adapter(tmp_path / "a"), max_weights_bytes=100) == "weights_too_large"
