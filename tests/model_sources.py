"""Tiny random checkpoints of several architectures saved with ``save_pretrained`` (no hub is reachable), as an
operator would hand them to the model store's import: a Hugging Face directory with config, safetensors weights,
tokenizer and chat template."""

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from tests.runtime_fixtures import CFG, tiny_tokenizer

CHAT_TEMPLATE = ("{% for m in messages %}{{ 't1 ' + m['content'] + ' t2 ' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ 't1 t3' }}{% endif %}")
ARCHITECTURES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
                 "mistral": (MistralConfig, MistralForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}


def tiny_checkpoint(path, arch="qwen2", *, seed=0, shard=False, **config):
    """Writes a random ``arch`` model of the tiny test shape, its word-level tokenizer and a chat template to
    ``path``; returns the model (float32, eval)."""
    config_class, model_class = ARCHITECTURES[arch]
    torch.manual_seed(seed)
    model = model_class(config_class(**{**CFG, **config})).eval()
    model.save_pretrained(path, **({"max_shard_size": "100KB"} if shard else {}))
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return model
