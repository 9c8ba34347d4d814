"""A tiny Llama with a word-level tokenizer and PEFT adapters, built in the test (random weights, the
same code paths as SmolLM2), for runtime tests that must not need the real model; and what engine tests do with
it: requests, PEFT's reference tokens, the text a request streamed, an engine held busy, an adapter slot poisoned."""

import copy
import json
import math
import threading
import time
import uuid

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from gpu_runtime.adapter_validation import BaseFacts
from gpu_runtime.base_model import BaseModel
from gpu_runtime.decoder import Decoder, from_transformers
from gpu_runtime.generation import AdapterRef, GenerationRequest, SamplingParams
from gpu_runtime.streams import read_events

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


def runtime_model(model):
    """A copy of a transformers model in the runtime's decoder (gpu_runtime.decoder), as a node loads it: the model
    the engine, slots and trainer work on, while PEFT's references run on the transformers model itself."""
    return from_transformers(copy.deepcopy(model))


def tiny_base_model(model=None):
    """The runtime's base on ``model`` (a runtime_model; a transformers model is converted, its weights shared)."""
    model = model or tiny_base()
    if not isinstance(model, Decoder):
        model = from_transformers(model.requires_grad_(False))
    return BaseModel("tiny-llama", model.requires_grad_(False), tiny_tokenizer(), "cpu", "float32", MANIFEST, {})


def save_peft_adapter(base, path, *, seed, r=4, alpha=8, targets=("q_proj", "v_proj")):
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


def reference_tokens(base, adapter_path, prompt_ids, n):
    """PEFT's greedy tokens for the prompt with the adapter alone (or the base model), up to EOS."""
    model = PeftModel.from_pretrained(copy.deepcopy(base), adapter_path).eval() if adapter_path else base
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, min_new_tokens=0)
    tokens = out[0, len(prompt_ids):].tolist()
    return tokens[: tokens.index(EOS)] if EOS in tokens else tokens


def request(prompt_ids, adapter=None, **sampling):
    return GenerationRequest(request_id=f"req_{uuid.uuid4().hex}", prompt=words(prompt_ids), adapter=adapter,
                            tenant="acme", sampling=SamplingParams(**{"max_tokens": 32, **sampling}))


def ref(path, i):
    return AdapterRef(adapter_id=f"adapter-{i}", version=1, uri=str(path))


def streamed_text(client, request_id):
    deltas, final = [], None
    for _, kind, data in read_events(client, request_id):
        if kind == "delta":
            deltas.append(data["text"])
        else:
            final = data
    return "".join(deltas), final


def streamed_choices(client, request_id):
    """({choice index: its text}, {choice index: its logprob entries}, final) of a request's stream."""
    texts, logprobs, final = {}, {}, None
    for _, kind, data in read_events(client, request_id):
        if kind == "delta":
            index = data.get("index", 0)
            texts[index] = texts.get(index, "") + data["text"]
            logprobs.setdefault(index, []).extend(data.get("logprobs") or [])
        else:
            final = data
    return texts, logprobs, final


def hold_engine(engine, seconds):
    """Keeps the engine thread busy for ``seconds`` from now: what is submitted meanwhile waits for the next
    admission round, and is admitted together."""
    holding = threading.Event()
    engine.call(lambda: (holding.set(), time.sleep(seconds)))
    assert holding.wait(10)


def poison_slot(pool, slot):
    """Writes NaN into every buffer of one adapter slot: whatever that row computes through its LoRA is NaN. The
    pool's version moves as with any slot write, so no layer keeps the slot's weights it gathered before."""
    rank, local = pool._slot_of[slot]
    with torch.no_grad():
        for wrapper in pool.layers.values():
            if rank in wrapper.A:
                wrapper.A[rank][local].fill_(math.nan)
    pool.version += 1
