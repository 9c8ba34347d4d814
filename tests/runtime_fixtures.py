"""A tiny Llama with a word-level tokenizer and PEFT adapters, built in the test (random weights, the
same code paths as SmolLM2), for runtime tests that must not need the real model."""

import copy
import json

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from gpu_runtime.adapter_validation import BaseFacts
from gpu_runtime.base_model import BaseModel

VOCAB = 128
EOS = 2
CFG = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=256, eos_token_id=EOS, bos_token_id=1)
MANIFEST = {"name": "tiny-llama", "architecture": {k: CFG[k] for k in (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")}}
BASE_FACTS = BaseFacts.from_manifest(MANIFEST)


def tiny_tokenizer():
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))  # outside the vocab: decoding never skips a token
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=f"t{EOS}")


def tiny_base(seed=0):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**CFG)).eval()
    model.generation_config.eos_token_id = EOS
    return model


def tiny_base_model(model=None):
    model = model or tiny_base()
    return BaseModel("tiny-llama", model.requires_grad_(False), tiny_tokenizer(), "cpu", "float32", MANIFEST, {})


def make_adapter(base, path, *, seed, r=4, alpha=8, targets=("q_proj", "v_proj")):
    torch.manual_seed(seed)
    peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                                          init_lora_weights=False))
    # make the delta big enough to change greedy tokens, so a wrong slot would be caught
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.mul_(20)
    peft.save_pretrained(path)
    config = json.loads((path / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "tiny-llama"
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def words(ids):
    return " ".join(f"t{i}" for i in ids)
