"""The runtime's own Llama-family decoder (gpu_runtime.decoder) against transformers' models of each model type it
covers: the same logits to the bit in fp32 and bf16 for every kind of pass the runtime makes (a left-padded batch
prefill, masked decode steps, an unpadded prompt, a prefill after a cached prefix, the trainer's right-padded
forward with gradients), and the configs it leaves to transformers."""

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from gpu_runtime.decoder import DecoderConfig, Unsupported, from_transformers
from gpu_runtime.kv_cache import KVCache

SIZES = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
CONFIGS = {
    "llama": lambda: LlamaConfig(**SIZES),
    "llama, biases, tied, llama3 RoPE": lambda: LlamaConfig(**SIZES, attention_bias=True, mlp_bias=True,
                                                          tie_word_embeddings=True, rope_scaling=LLAMA3_ROPE),
    "llama, linear RoPE, no GQA": lambda: LlamaConfig(**{**SIZES, "num_key_value_heads": 4},
                                                     rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "mistral, sliding window 6": lambda: MistralConfig(**SIZES, sliding_window=6),
    "qwen2": lambda: Qwen2Config(**SIZES),
    "qwen3": lambda: Qwen3Config(**SIZES, head_dim=16),
}


def pair(make, dtype):
    """(a transformers model with every weight, bias and norm perturbed, the decoder on the same tensors)."""
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(make(), dtype=dtype).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return reference, from_transformers(reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_every_pass_gives_transformers_logits_to_the_bit(kind, dtype):
    reference, decoder = pair(CONFIGS[kind], dtype)
    assert decoder.model.layers[0].self_attn.q_proj.weight is not None
    assert dict(decoder.named_parameters()).keys() <= dict(reference.named_parameters()).keys()
    ids = torch.randint(3, 128, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :3] = mask[2, :5] = 0  # left padding, as the engine's prefill
    with torch.inference_mode():
        runs = []
        for model, cache in ((reference, DynamicCache()), (decoder, KVCache())):
            steps, step_mask = [], mask
            out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                        past_key_values=cache, use_cache=True)
            steps.append(out.logits[mask.bool()])
            torch.manual_seed(1)
            for _ in range(8):  # decode steps past the sliding window, padded rows masked
                positions = step_mask.sum(1, keepdim=True)
                step_mask = torch.cat([step_mask, torch.ones(3, 1, dtype=step_mask.dtype)], 1)
                out = model(input_ids=torch.randint(3, 128, (3, 1)), attention_mask=step_mask,
                            position_ids=positions, past_key_values=cache, use_cache=True)
                steps.append(out.logits)
            prompt = torch.arange(3, 15).unsqueeze(0)
            steps.append(model(input_ids=prompt, past_key_values=type(cache)(), use_cache=True,
                               logits_to_keep=1).logits)
            prefix = type(cache)()
            model(input_ids=prompt[:, :8], past_key_values=prefix, use_cache=True)
            steps.append(model(input_ids=prompt[:, 8:], past_key_values=prefix, use_cache=True,
                               logits_to_keep=1).logits)  # a prefill from a cached prefix
            runs.append(steps)
    for theirs, ours in zip(*runs, strict=True):
        assert torch.equal(theirs, ours)
    right = torch.ones(3, 9, dtype=torch.long)
    right[1, 6:] = 0  # the trainer's right-padded rows, with gradients
    hidden = [m.model(input_ids=ids, attention_mask=right, use_cache=False).last_hidden_state
              for m in (reference, decoder)]
    assert torch.equal(hidden[0][right.bool()], hidden[1][right.bool()])


def test_weights_are_shared_and_tied_as_in_the_transformers_model():
    reference, decoder = pair(CONFIGS["llama, biases, tied, llama3 RoPE"], torch.float32)
    assert decoder.lm_head.weight is decoder.model.embed_tokens.weight
    assert decoder.model.layers[1].mlp.down_proj.weight.data_ptr() == \
        reference.model.layers[1].mlp.down_proj.weight.data_ptr()
    assert decoder.generation_config.eos_token_id == reference.generation_config.eos_token_id


@pytest.mark.parametrize("config, why", [
    ({"model_type": "gpt2"}, "model type"),
    ({**SIZES, "model_type": "llama", "hidden_act": "gelu"}, "activation"),
    ({**SIZES, "model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE type"),
    ({**SIZES, "model_type": "qwen2", "use_sliding_window": True}, "sliding windows"),
    ({**SIZES, "model_type": "llama", "attention_dropout": 0.1}, "dropout"),
    ({"model_type": "llama", "hidden_size": 64}, "config field"),
    ({**SIZES, "model_type": "llama", "is_causal": False}, "bidirectional"),
    ({**SIZES, "model_type": "llama", "attn_implementation": "eager"}, "attention implementation"),
    ({**SIZES, "model_type": "llama", "rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                          "partial_rotary_factor": 0.5}}, "partial rotary"),
    ({**SIZES, "model_type": "llama", "rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "RoPE llama3"),
])
def test_configs_it_does_not_compute_exactly_are_left_to_transformers(config, why):
    with pytest.raises(Unsupported, match=why):
        DecoderConfig.read(config)


def test_llama3_rope_takes_the_top_level_original_context_and_rope_scaling_first():
    """transformers' precedence: a top-level original_max_position_embeddings over the one in the RoPE parameters
    (then max_position_embeddings), and rope_scaling over rope_parameters where a config holds both."""
    config = DecoderConfig.read({**SIZES, "model_type": "llama", "original_max_position_embeddings": 32,
                                 "rope_scaling": LLAMA3_ROPE, "rope_parameters": {"rope_type": "default"}})
    assert config.rope[0] == "llama3" and dict(config.rope[1])["original_max_position_embeddings"] == 32
    rope = {k: v for k, v in LLAMA3_ROPE.items() if k != "original_max_position_embeddings"}
    config = DecoderConfig.read({**SIZES, "model_type": "llama", "rope_parameters": rope})
    assert dict(config.rope[1])["original_max_position_embeddings"] == SIZES["max_position_embeddings"]
