"""An adapter's tensors from one read of its file (gpu_runtime.adapter_read): the tensors safetensors reads, in each
dtype an adapter may come in, and every NaN or Inf refused as ``non_finite`` naming its tensor, as the validator's
scan does."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpu_runtime.adapter_read import read_adapter_tensors
from gpu_runtime.adapter_validation import WEIGHTS_FILE, AdapterRejected, validate_adapter
from tests.runtime_fixtures import BASE_FACTS, save_peft_adapter, tiny_base

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_peft_adapter(tiny_base(), tmp_path_factory.mktemp("objects") / "a", seed=3, r=4)


def in_dtype(saved, tmp_path, dtype, change=None):
    path = tmp_path / "adapter"
    shutil.copytree(saved, path)
    tensors = {name: t.to(dtype) for name, t in load_file(str(path / WEIGHTS_FILE)).items()}
    if change:
        change(tensors)
    save_file(tensors, str(path / WEIGHTS_FILE))
    return path, tensors


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_tensors_are_the_ones_safetensors_reads(saved, tmp_path, dtype):
    path, expected = in_dtype(saved, tmp_path, dtype)
    facts = validate_adapter(path, BASE_FACTS, check_values=False)
    got = read_adapter_tensors(path / WEIGHTS_FILE, facts)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == dtype and torch.equal(got[name], tensor), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_nan_or_inf_in_any_tensor_is_refused_naming_it(saved, tmp_path, dtype, value):
    def spoil(tensors):
        name = sorted(tensors)[len(tensors) // 2]
        tensors[name].view(-1)[-1] = value
        spoil.name = name

    path, _ = in_dtype(saved, tmp_path, dtype, spoil)
    facts = validate_adapter(path, BASE_FACTS, check_values=False)
    with pytest.raises(AdapterRejected) as info:
        read_adapter_tensors(path / WEIGHTS_FILE, facts)
    assert info.value.code == "non_finite" and spoil.name in info.value.message
    with pytest.raises(AdapterRejected) as scan:  # the validator's own scan refuses it the same way
        validate_adapter(path, BASE_FACTS)
    assert scan.value.code == "non_finite"


def test_the_largest_finite_values_pass(saved, tmp_path):
    def extremes(tensors):
        for tensor in tensors.values():
            tensor.view(-1)[0] = torch.finfo(tensor.dtype).max
            tensor.view(-1)[-1] = -torch.finfo(tensor.dtype).max

    for dtype in DTYPES:
        path, expected = in_dtype(saved, tmp_path / str(dtype), dtype, extremes)
        got = read_adapter_tensors(path / WEIGHTS_FILE, validate_adapter(path, BASE_FACTS, check_values=False))
        assert all(torch.equal(got[n], t) for n, t in expected.items())


def longer_header_same_size(path):
    """The file rewritten with a header 8 bytes longer and its last 8 data bytes gone: the same size, every
    tensor shifted."""
    raw = (path / WEIGHTS_FILE).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = raw[8:8 + header_len] + b" " * 8
    (path / WEIGHTS_FILE).write_bytes((header_len + 8).to_bytes(8, "little") + header + raw[8 + header_len:-8])


def grown(path):
    with open(path / WEIGHTS_FILE, "ab") as f:
        f.write(b"\0" * 8)


@pytest.mark.parametrize("change", [grown, longer_header_same_size])
def test_a_file_changed_after_validation_is_refused(saved, tmp_path, change):
    path, _ = in_dtype(saved, tmp_path, torch.float32)
    facts = validate_adapter(path, BASE_FACTS, check_values=False)
    change(path)
    with pytest.raises(AdapterRejected) as info:
        read_adapter_tensors(path / WEIGHTS_FILE, facts)
    assert info.value.code == "invalid_weights"
