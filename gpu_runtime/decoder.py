"""The runtime's own decoder for the Llama family (``llama``, ``mistral``, ``qwen2``, ``qwen3``): the forward pass
transformers runs for these model types, op for op (RMSNorm in fp32, rotary embeddings, grouped-query SDPA with
the same masks and kernel choices, SiLU MLP), in plain torch modules. A node that serves one never imports
transformers' modeling code, which costs more than a second of a fresh process's start.

Module and parameter names are transformers' (``model.layers.N.self_attn.q_proj``, ``lm_head``...), so the
checkpoint's keys, PEFT adapters' target names, the slot LoRA layers (lora.py) and packed linears
(packed_linear.py) address it as they address a transformers model. ``DecoderConfig.read`` says which
configs it computes exactly; any other loads with transformers (base_model.py).

Calls take what the runtime passes a transformers causal LM: ``input_ids``, a 2-D ``attention_mask`` (1 real
token, 0 padding) over the cache and the new tokens, ``position_ids``, ``past_key_values`` (a kv_cache.KVCache,
appended in place), ``logits_to_keep``; the inner ``model`` gives the last hidden state (training)."""

import contextlib
import dataclasses
import functools
import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F

from .kv_cache import KVCache

# Each model type's config defaults where config.json leaves a field out (transformers' config classes).
_DEFAULTS = {
    "llama": {"max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
              "attention_bias": False, "sliding_window": None, "head_dim": None},
    "mistral": {"max_position_embeddings": 4096 * 32, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                "attention_bias": False, "sliding_window": 4096, "head_dim": None},
    "qwen2": {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
              "attention_bias": True, "sliding_window": None, "head_dim": None},
    "qwen3": {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
              "attention_bias": False, "sliding_window": None, "head_dim": 128},
}
ROPE_TYPES = ("default", "linear", "llama3")


class Unsupported(ValueError):
    """A config this decoder does not compute exactly; transformers runs it instead."""


@dataclass(frozen=True)
class DecoderConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    sliding_window: int | None
    rope_theta: float
    rope: tuple  # (rope_type, its parameters as sorted (key, value) pairs)
    eos_token_id: object = None
    bos_token_id: object = None
    pad_token_id: object = None

    @classmethod
    def read(cls, raw):
        """The config of a config.json's dict; Unsupported where this decoder would not compute what transformers
        does (another model type or activation, a RoPE variant, per-layer sliding windows, dropout)."""
        model_type = raw.get("model_type")
        if model_type not in _DEFAULTS:
            raise Unsupported(f"model type {model_type!r}")
        d = {**_DEFAULTS[model_type], **{k: v for k, v in raw.items() if v is not None or k == "sliding_window"}}
        if d.get("hidden_act", "silu") != "silu":
            raise Unsupported(f"activation {d['hidden_act']!r}")
        if model_type in ("qwen2", "qwen3") and d.get("use_sliding_window"):
            raise Unsupported("per-layer sliding windows")
        if model_type != "mistral":
            d["sliding_window"] = None
        if d.get("layer_types") and any(t != "full_attention" for t in d["layer_types"]) and model_type != "mistral":
            raise Unsupported("layers other than full attention")
        if float(d.get("attention_dropout", 0.0) or 0.0):
            raise Unsupported("attention dropout")
        if d.get("pretraining_tp", 1) not in (1, None):
            raise Unsupported("pretraining_tp")
        if d.get("is_causal", True) is False:
            raise Unsupported("bidirectional attention")
        if d.get("attn_implementation") not in (None, "sdpa"):
            raise Unsupported(f"attention implementation {d['attn_implementation']!r}")
        rope = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})  # transformers' precedence
        rope_type = rope.pop("rope_type", rope.pop("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise Unsupported(f"RoPE type {rope_type!r}")
        if rope.pop("partial_rotary_factor", d.get("partial_rotary_factor", 1.0)) not in (1, 1.0, None):
            raise Unsupported("partial rotary embeddings")
        if rope_type == "llama3":  # the top-level value wins, as transformers standardizes it
            rope["original_max_position_embeddings"] = (d.get("original_max_position_embeddings")
                                                         or rope.get("original_max_position_embeddings")
                                                         or d["max_position_embeddings"])
        needed = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor")}
        if any(not isinstance(rope.get(k), int | float) for k in needed.get(rope_type, ())):
            raise Unsupported(f"RoPE {rope_type} without {needed[rope_type]}")
        theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
        try:
            heads = d["num_attention_heads"]
            return cls(
                model_type=model_type, vocab_size=int(d["vocab_size"]), hidden_size=int(d["hidden_size"]),
                intermediate_size=int(d["intermediate_size"]), num_hidden_layers=int(d["num_hidden_layers"]),
                num_attention_heads=int(heads), num_key_value_heads=int(d.get("num_key_value_heads") or heads),
                head_dim=int(d["head_dim"] or d["hidden_size"] // heads),
                max_position_embeddings=int(d["max_position_embeddings"]), rms_norm_eps=float(d["rms_norm_eps"]),
                tie_word_embeddings=bool(d["tie_word_embeddings"]), qk_norm=model_type == "qwen3",
                **_biases(model_type, d),
                sliding_window=int(d["sliding_window"]) if d["sliding_window"] else None,
                rope_theta=float(theta), rope=(rope_type, tuple(sorted(rope.items()))),
                eos_token_id=d.get("eos_token_id"), bos_token_id=d.get("bos_token_id"),
                pad_token_id=d.get("pad_token_id"))
        except (KeyError, TypeError, ValueError) as exc:
            raise Unsupported(f"config field: {exc}") from None


def _biases(model_type, d):
    """Which projections have a bias, per model type (qwen2: q/k/v always; mistral: none)."""
    attention = bool(d["attention_bias"]) if model_type in ("llama", "qwen3") else model_type == "qwen2"
    return {"qkv_bias": attention, "o_bias": attention and model_type != "qwen2",
            "mlp_bias": model_type == "llama" and bool(d.get("mlp_bias", False))}


def inverse_frequencies(config):
    """RoPE's inverse frequencies, as transformers computes them for the config's RoPE type."""
    dim = config.head_dim
    # on the CPU even inside a ``meta`` device context (math on meta tensors imports torch's compiler stack)
    steps = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").to(dtype=torch.float)
    inv_freq = 1.0 / (config.rope_theta ** (steps / dim))
    rope_type, params = config.rope[0], dict(config.rope[1])
    if rope_type == "linear":
        inv_freq = inv_freq / params["factor"]
    elif rope_type == "llama3":
        factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
        old_context = params["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_context / low, old_context / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


class RMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.variance_epsilon = eps

    def forward(self, hidden):
        dtype = hidden.dtype
        hidden = hidden.to(torch.float32)
        variance = hidden.pow(2).mean(-1, keepdim=True)
        hidden = hidden * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden.to(dtype)


class RotaryEmbedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.register_buffer("inv_freq", inverse_frequencies(config), persistent=False)

    @torch.no_grad()
    def forward(self, x, position_ids):
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype=x.dtype), emb.sin().to(dtype=x.dtype)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _repeat_kv(states, n_rep):
    batch, heads, length, dim = states.shape
    if n_rep == 1:
        return states
    return states[:, :, None].expand(batch, heads, n_rep, length, dim).reshape(batch, heads * n_rep, length, dim)


class Attention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.layer_idx, self.head_dim = layer, config.head_dim
        self.groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = config.head_dim ** -0.5
        heads, kv_heads, bias = config.num_attention_heads, config.num_key_value_heads, config.qkv_bias
        self.q_proj = nn.Linear(config.hidden_size, heads * config.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_heads * config.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_heads * config.head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * config.head_dim, config.hidden_size, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)

    def forward(self, hidden, rotary, mask, cache):
        shape = (*hidden.shape[:-1], -1, self.head_dim)
        query, key = self.q_proj(hidden).view(shape), self.k_proj(hidden).view(shape)
        if hasattr(self, "q_norm"):
            query, key = self.q_norm(query), self.k_norm(key)
        query, key = query.transpose(1, 2), key.transpose(1, 2)
        value = self.v_proj(hidden).view(shape).transpose(1, 2)
        cos, sin = rotary[0].unsqueeze(1), rotary[1].unsqueeze(1)
        query = query * cos + _rotate_half(query) * sin
        key = key * cos + _rotate_half(key) * sin
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        length = query.shape[2]
        kwargs = {}
        # the kernel choices of transformers' SDPA attention: GQA inside SDPA without a mask; a lone query token
        # with a mask packs each KV head's query heads as its rows; otherwise the KV heads are repeated
        if self.groups > 1:
            if mask is None and key.shape[-1] == value.shape[-1] <= 256:
                kwargs["enable_gqa"] = True
            elif length == 1:
                query = query.reshape(query.shape[0], -1, self.groups, query.shape[-1])
            else:
                key, value = _repeat_kv(key, self.groups), _repeat_kv(value, self.groups)
        causal = length > 1 and mask is None
        if causal and key.shape[2] > length:
            key, value = key[:, :, :length], value[:, :, :length]
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, scale=self.scaling,
                                             is_causal=causal, **kwargs)
        out = out.reshape(out.shape[0], -1, length, value.shape[-1]).transpose(1, 2).contiguous()
        return self.o_proj(out.reshape(*hidden.shape[:-1], -1).contiguous())


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        bias = config.mlp_bias
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.self_attn = Attention(config, layer)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden, rotary, mask, cache):
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), rotary, mask, cache)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


def pass_mask(padding, *, length, past, window, device):
    """The boolean [rows, 1, length, past + length] mask of a pass (causal, the 2-D ``padding`` mask's zeros, the
    sliding window), or None where SDPA's own causal flag (or no mask) computes the same: transformers' rules."""
    total = past + length
    if padding is not None:
        padding = padding[:, :total].bool()
    unpadded = padding is None or bool(padding.all())
    if not (window is not None and total >= window):
        if (length == 1 or total == length) and unpadded:
            return None
        if past == 0 and (padding is None or (bool(padding[:, :length].all()) and not bool(padding[:, length:].any()))):
            return None
    q = torch.arange(length, device=device)[:, None] + past
    kv = torch.arange(total, device=device)[None, :]
    allowed = kv <= q
    if window is not None:
        allowed = allowed & (kv > q - window)
    rows = 1 if padding is None else padding.shape[0]
    mask = allowed[None, None].expand(rows, 1, length, total)
    if padding is not None:
        mask = mask & padding[:, None, None, :]
    return mask


class DecoderModel(nn.Module):
    """transformers' ``model.model``: embeddings, the layers and the final norm."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):
        hidden = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = KVCache()
        cache = past_key_values if use_cache else None
        past = cache.get_seq_length() if cache is not None else 0
        length = input_ids.shape[1]
        if position_ids is None:
            position_ids = (torch.arange(length, device=hidden.device) + past).unsqueeze(0)
        mask = pass_mask(attention_mask, length=length, past=past, window=self.config.sliding_window,
                         device=hidden.device)
        rotary = self.rotary_emb(hidden, position_ids)
        for layer in self.layers:
            hidden = layer(hidden, rotary, mask, cache)
        return SimpleNamespace(last_hidden_state=self.norm(hidden), past_key_values=cache)


class Decoder(nn.Module):
    """transformers' ``*ForCausalLM`` for the Llama family: ``model`` and the ``lm_head``."""

    def __init__(self, config, generation=None):
        super().__init__()
        self.config = config
        self.generation_config = SimpleNamespace(**{"eos_token_id": config.eos_token_id,
                                                    "bos_token_id": config.bos_token_id,
                                                    "pad_token_id": config.pad_token_id, **(generation or {})})
        self.model = DecoderModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @staticmethod
    def new_cache():
        return KVCache()

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True,
                logits_to_keep=0):
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, use_cache)
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        return SimpleNamespace(logits=logits, past_key_values=out.past_key_values)


@contextlib.contextmanager
def no_init_on_meta():
    """``nn.Linear`` and ``nn.Embedding`` initialise their weights in ``__init__``: random numbers for a tensor
    on ``meta`` are none at all, yet cost 7 of the skeleton's 18 ms here, and in a fresh process the first
    one imports torch's compiler stack (~1.5 s: meta kernels of the init functions are Python references).
    Skipped for meta weights only; the classes are patched for the duration, so another thread building real
    layers meanwhile gets the original initialisation through the wrapper."""
    originals = {cls: cls.reset_parameters for cls in (torch.nn.Linear, torch.nn.Embedding)}

    def skipping(original):
        @functools.wraps(original)
        def reset_parameters(self):
            if not self.weight.is_meta:
                original(self)
        return reset_parameters

    for cls, original in originals.items():
        cls.reset_parameters = skipping(original)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.reset_parameters = original


def build(config, weights, dtype, generation=None):
    """The decoder of ``config`` whose parameters are ``weights`` ({checkpoint key: tensor}, used as they are where
    already ``dtype``), frozen. Built on ``meta`` first: no memory, no random init. Unsupported where the keys or
    shapes are not the model's (a checkpoint of another layout)."""
    with torch.device("meta"), no_init_on_meta():
        decoder = Decoder(config, generation)
    decoder.requires_grad_(False)
    params = dict(decoder.named_parameters())  # a tied lm_head is listed once, as the embeddings
    if config.tie_word_embeddings and "lm_head.weight" in weights:
        raise Unsupported("the checkpoint holds a tied lm_head")
    if set(weights) != set(params):
        extra, missing = sorted(set(weights) - set(params)), sorted(set(params) - set(weights))
        raise Unsupported(f"keys the decoder does not have: {extra[:5]}" if extra else
                          f"keys missing from the checkpoint: {missing[:5]}")
    modules = dict(decoder.named_modules())
    for key, tensor in weights.items():
        if tuple(tensor.shape) != tuple(params[key].shape):
            raise Unsupported(f"{key}: shape {tuple(tensor.shape)} in the checkpoint, {tuple(params[key].shape)} "
                              "in the model")
        if tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        owner, _, name = key.rpartition(".")
        modules[owner]._parameters[name] = nn.Parameter(tensor, requires_grad=False)
    decoder.tie_weights()
    return decoder.eval()


def from_transformers(model):
    """The decoder computing what a transformers model of the Llama family computes, on the same parameter
    tensors (shared, not copied); Unsupported for a model this decoder does not cover."""
    weights = {k: v for k, v in model.state_dict().items() if not k.endswith("inv_freq")}
    config = DecoderConfig.read(model.config.to_dict())
    if config.tie_word_embeddings and model.lm_head.weight is not model.model.embed_tokens.weight:
        config = dataclasses.replace(config, tie_word_embeddings=False)  # a checkpoint with its own lm_head
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    dtype = next(model.parameters()).dtype
    generation = {k: getattr(model.generation_config, k, None) for k in ("eos_token_id", "bos_token_id",
                                                                          "pad_token_id")}
    decoder = build(config, weights, dtype, generation)
    decoder.requires_grad_(any(p.requires_grad for p in model.parameters()))
    return decoder.train(model.training)
