"""The base's linear layers on oneDNN with packed weights (gpu_runtime.packed_linear) give the plain layers' results
to float rounding, the same greedy tokens, the same state dict and the same gradients."""

import copy

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from gpu_runtime.packed_linear import PackedLinear, pack_linears, packing_available

CFG = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2)

pytestmark = pytest.mark.skipif(not packing_available(torch.float32), reason="this torch has no oneDNN linear")


def tiny_model(dtype=torch.float32):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**CFG)).eval().to(dtype)


def test_every_linear_is_packed_and_the_state_dict_is_the_same():
    model = tiny_model()
    keys = list(model.state_dict())
    linears = sum(type(m) is nn.Linear for m in model.modules())
    assert pack_linears(model, batch_hint=4) == linears == 2 * 7 + 1
    assert all(type(m) is not nn.Linear for m in model.modules())
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_logits_and_greedy_tokens_match_the_plain_model(dtype):
    if not packing_available(dtype):
        pytest.skip(f"no packed oneDNN linear for {dtype} on this CPU")
    plain = tiny_model(dtype)
    packed = copy.deepcopy(plain)
    pack_linears(packed, batch_hint=4)
    ids = torch.randint(0, CFG["vocab_size"], (5, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = plain(ids).logits.float(), packed(ids).logits.float()
        tolerance = 1e-5 if dtype == torch.float32 else 2e-2
        assert torch.allclose(a, b, rtol=tolerance, atol=tolerance), (a - b).abs().max()
        assert any(m.packed is not None for m in packed.modules() if isinstance(m, PackedLinear))
        if dtype == torch.float32:
            kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
            assert torch.equal(plain.generate(ids, **kw), packed.generate(ids, **kw))


def test_a_deep_copy_after_a_forward_packs_its_own_weights():
    model = tiny_model()
    pack_linears(model)
    ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        first = model(ids).logits
    twin = copy.deepcopy(model)  # the opaque packed tensor itself cannot be copied
    assert all(m.packed is None for m in twin.modules() if isinstance(m, PackedLinear))
    assert all(m.packed is not None for m in model.modules() if isinstance(m, PackedLinear))
    with torch.inference_mode():
        assert torch.equal(twin(ids).logits, first)


def test_with_gradients_the_plain_linear_runs_and_gradients_match():
    plain = tiny_model()
    packed = copy.deepcopy(plain)
    pack_linears(packed)
    ids = torch.tensor([[5, 6, 7, 8]])
    grads = []
    for model in (plain, packed):
        embed = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        model(inputs_embeds=embed).logits.square().mean().backward()
        grads.append(embed.grad)
    assert torch.equal(grads[0], grads[1])  # the plain linear's exact gradients: the packed copy is not used
