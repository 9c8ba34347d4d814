"""Every refusal of the adapter validator, each with a crafted file; and a real PEFT adapter passes."""

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_runtime.adapter_validation import AdapterRejected, validate_adapter
from tests.adapter_files import BASE, write_adapter


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



def rejected(path, **kwargs):
    with pytest.raises(AdapterRejected) as info:
        validate_adapter(path, BASE, **kwargs)
    return info.value.code


def test_real_peft_adapter_passes(tiny_peft_adapter):
    facts = validate_adapter(tiny_peft_adapter, BASE)
    assert (facts.rank, facts.alpha, facts.target_modules, facts.dtype) == (4, 8.0, ["q_proj", "v_proj"], "F32")
    assert set(facts.scaling.values()) == {2.0} and len(facts.scaling) == 4 and len(facts.tensors) == 8


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


# Exact framing: every header field's type is checked, and the tensors tile the data section exactly.

def raw_safetensors(path, header, data):
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def good_header(tmp_path):
    """The header and data of a valid adapter, to break one field at a time."""
    weights = write_adapter(tmp_path / "good") / "adapter_model.safetensors"
    raw = weights.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


FIRST = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


@pytest.mark.parametrize("field,value", [
    ("dtype", ["F32"]),
    ("data_offsets", ["0", "1024"]),
    ("shape", ["four", 64]),
    ("shape", [4.0, 64]),
    ("shape", [-4, -64]),
    ("shape", "4x64"),
    ("data_offsets", [0]),
    ("data_offsets", [1024, 0]),
    ("data_offsets", [True, 1024]),
])
def test_malformed_header_fields_are_refused(tmp_path, field, value):
    header, data = good_header(tmp_path)
    header[FIRST][field] = value
    path = write_adapter(tmp_path / "a")
    raw_safetensors(path / "adapter_model.safetensors", header, data)
    assert rejected(path) == "invalid_safetensors"


def test_header_entry_with_extra_or_missing_keys_is_refused(tmp_path):
    header, data = good_header(tmp_path)
    path = write_adapter(tmp_path / "a")
    header[FIRST]["extra"] = 1
    raw_safetensors(path / "adapter_model.safetensors", header, data)
    assert rejected(path) == "invalid_safetensors"
    del header[FIRST]["extra"], header[FIRST]["shape"]
    raw_safetensors(path / "adapter_model.safetensors", header, data)
    assert rejected(path) == "invalid_safetensors"


def test_empty_layers_to_transform_is_refused(tmp_path):
    assert rejected(write_adapter(tmp_path / "a", config={"layers_to_transform": []})) == "bad_layers"


@pytest.mark.parametrize("config,code", [
    ({"layers_to_transform": [0, 0]}, "bad_layers"),
    ({"layers_to_transform": [True]}, "bad_layers"),
    ({"layers_to_transform": "0"}, "bad_layers"),
    ({"layers_to_transform": {"0": 1}}, "bad_layers"),
    ({"target_modules": {"q_proj": 1}}, "bad_target_modules"),
    ({"target_modules": 5}, "bad_target_modules"),
    ({"r": True}, "bad_rank"),
    ({"r": 4.0}, "bad_rank"),
    ({"lora_alpha": "8"}, "bad_alpha"),
    ({"lora_alpha": 10**400}, "bad_alpha"),
    ({"base_model_name_or_path": ["tiny-llama"]}, "invalid_config"),
    ({"alpha_pattern": {"q_proj": "4"}}, "bad_alpha_pattern"),
    ({"rank_pattern": {"q_proj": 0}}, "bad_rank_pattern"),
    ({"rank_pattern": ["q_proj"]}, "bad_rank_pattern"),
])
def test_config_field_types_are_refused(tmp_path, config, code):
    assert rejected(write_adapter(tmp_path / "a", config=config)) == code


def test_non_finite_alpha_is_refused(tmp_path):
    path = write_adapter(tmp_path / "a")
    config = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps(config).replace('"lora_alpha": 8', '"lora_alpha": NaN'))
    assert rejected(path) == "bad_alpha"


@pytest.mark.parametrize("alpha", [1e300, 4 * 10**4 + 1])
def test_alpha_whose_scaling_is_out_of_bounds_is_refused(tmp_path, alpha):
    # alpha / r past MAX_LORA_SCALING makes every delta overflow (1e300 / 4 is inf in F16 and F32 weights)
    assert rejected(write_adapter(tmp_path / "a", config={"lora_alpha": alpha})) == "bad_alpha"


def test_alpha_at_the_scaling_bound_is_accepted(tmp_path):
    facts = validate_adapter(write_adapter(tmp_path / "a", config={"lora_alpha": 4 * 10**4}), BASE)
    assert set(facts.scaling.values()) == {1e4}


def test_trailing_bytes_after_the_tensors_are_refused(tmp_path):
    path = write_adapter(tmp_path / "a")
    with open(path / "adapter_model.safetensors", "ab") as f:
        f.write(bytes(4096))
    assert rejected(path) == "invalid_safetensors"


def test_gaps_and_overlaps_between_tensors_are_refused(tmp_path):
    header, data = good_header(tmp_path)
    path = write_adapter(tmp_path / "a")
    ordered = sorted(header, key=lambda n: header[n]["data_offsets"][0])
    # A gap: every tensor after the first moves 8 bytes on, over 8 bytes of padding.
    gapped = {n: dict(header[n], data_offsets=[o + 8 * (i > 0) for o in header[n]["data_offsets"]])
              for i, n in enumerate(ordered)}
    first_end = header[ordered[0]]["data_offsets"][1]
    raw_safetensors(path / "adapter_model.safetensors", gapped, data[:first_end] + bytes(8) + data[first_end:])
    assert rejected(path) == "invalid_safetensors"
    # An overlap: two tensors read the same bytes, and the file ends where the last one ends.
    overlapping = dict(header)
    overlapping[ordered[1]] = dict(header[ordered[1]], data_offsets=header[ordered[0]]["data_offsets"])
    raw_safetensors(path / "adapter_model.safetensors", overlapping, data)
    assert rejected(path) == "invalid_safetensors"


def test_deeply_nested_header_and_config_are_refused(tmp_path):
    path = write_adapter(tmp_path / "a")
    deep = b"[" * 100_000 + b"]" * 100_000
    (path / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(deep)) + deep)
    assert rejected(path) == "invalid_safetensors"
    (path / "adapter_config.json").write_bytes(b"[" * 30_000 + b"]" * 30_000)
    assert rejected(path) == "invalid_config"


# Whatever the bytes, the validator answers with an adapter or its own refusal.

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
ENTRY = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "F64", "I8"]) | JSON,
    "shape": st.lists(st.integers(min_value=-2, max_value=80), max_size=3) | JSON,
    "data_offsets": st.lists(st.integers(min_value=-2, max_value=4096), min_size=2, max_size=2) | JSON,
}) | JSON
HEADER_NAMES = st.sampled_from([
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", "__metadata__"]) | st.text(max_size=12)
CONFIG = st.fixed_dictionaries({}, optional={
    "peft_type": st.just("LORA") | JSON, "r": st.integers(min_value=-1, max_value=70) | JSON,
    "lora_alpha": JSON, "target_modules": st.just(["q_proj"]) | JSON,
    "layers_to_transform": st.lists(st.integers(min_value=-1, max_value=3), max_size=3) | JSON,
    "base_model_name_or_path": st.just("tiny-llama") | JSON, "use_dora": JSON, "rank_pattern": JSON,
}) | JSON


def _answer(path):
    try:
        validate_adapter(path, BASE)
    except AdapterRejected as exc:
        assert exc.code and exc.message
        return exc.code
    return "ok"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.dictionaries(HEADER_NAMES, ENTRY, max_size=4), data=st.binary(max_size=256))
def test_arbitrary_headers_and_bytes_get_a_refusal_or_an_adapter(tmp_path, header, data):
    path = write_adapter(tmp_path / "h", config={"target_modules": ["q_proj"], "layers_to_transform": [0]})
    encoded = json.dumps(header).encode()
    (path / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    _answer(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=CONFIG)
def test_arbitrary_adapter_config_gets_a_refusal_or_an_adapter(tmp_path, config):
    path = write_adapter(tmp_path / "c")
    (path / "adapter_config.json").write_text(json.dumps(config))
    _answer(path)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_arbitrary_weights_file_gets_a_refusal(tmp_path, raw):
    path = write_adapter(tmp_path / "w")
    (path / "adapter_model.safetensors").write_bytes(raw)
    assert _answer(path) != "ok"
