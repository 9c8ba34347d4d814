"""The base-model loader (gpu_runtime.base_model): the safetensors mmap fast path gives, in the runtime's decoder,
the very model and tokenizer ``from_pretrained`` / ``AutoTokenizer`` give (the same parameters, identical logits
in fp32 and bf16, tied embeddings tied, rotary buffers equal, the same token ids for generation), frozen, with
every phase timed; what it does not cover falls back to ``from_pretrained``. A slow test checks the same on the
real SmolLM2."""

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from gpu_runtime.base_model import _auto_tokenizer, _head_added_tokens, load_base_model, load_model_dir, load_tokenizer
from gpu_runtime.config import RuntimeConfig
from gpu_runtime.tokenizer import Tokenizer
from gpu_runtime.tokenizer import Unsupported as TokenizerUnsupported
from tests.runtime_fixtures import CFG, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
NAME = "tiny-llama"
CHAT_TEMPLATE = ("{% for m in messages %}{{ 't1 ' + m['content'] + ' t2 ' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ 't1 t3' }}{% endif %}")
PHASES = ("read", "to_device", "warm_up", "tokenizer")
LOADER = "vajra.runtime.base_model"


def tiny_llama(tied, seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**CFG, tie_word_embeddings=tied)).eval()


def make_store(root, *, tied=True, variants=("float32",), shard=False):
    """A model store as gpu_runtime.model_store writes it: manifest + one save_pretrained dir per variant."""
    model = tiny_llama(tied)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    info = {}
    for variant in variants:
        target = root / NAME / variant
        model.to(getattr(torch, variant)).save_pretrained(target, **({"max_shard_size": "100KB"} if shard else {}))
        tokenizer.save_pretrained(target)
        files = sorted(target.glob("*.safetensors"))
        info[variant] = {"bytes": sum(f.stat().st_size for f in files), "sha256": "-"}
    (root / NAME / "manifest.json").write_text(json.dumps({"name": NAME, "variants": info,
                                                           "architecture": {"tie_word_embeddings": tied}}))
    return root


def runtime_config(store, dtype="float32"):
    return dataclasses.replace(RuntimeConfig.from_env(), model_store=store, base_model=NAME, device="cpu", dtype=dtype)


def assert_same_model(model, reference, ids_list):
    assert not model.training
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in reference.named_parameters()]
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in ours)
    ref_buffers = dict(reference.named_buffers())
    for name, buffer in model.named_buffers():  # non-persistent rotary inv_freq: not in any checkpoint
        assert buffer.dtype == ref_buffers[name].dtype and torch.equal(buffer, ref_buffers[name]), name
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        assert getattr(model.generation_config, key) == getattr(reference.generation_config, key), key
    for key in ("vocab_size", "max_position_embeddings", "hidden_size", "num_hidden_layers"):
        assert getattr(model.config, key) == getattr(reference.config, key), key
    with torch.inference_mode():
        for ids in ids_list:
            assert torch.equal(model(ids).logits, reference(ids).logits)


def assert_frozen_and_timed(base):
    assert not any(p.requires_grad for p in base.model.parameters())
    assert all(not p.is_meta and p.device.type == "cpu" for p in base.model.parameters())
    for phase in PHASES:
        assert isinstance(base.timings_ms[phase], float) and base.timings_ms[phase] >= 0, phase


PROMPTS = [torch.tensor([[1, 5, 9, 77, 3]]), torch.tensor([[4] * 40]), torch.randint(0, 128, (3, 17))]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fast_path_is_the_from_pretrained_model(tmp_path, caplog, dtype):
    store = make_store(tmp_path, variants=("float32", "bfloat16"))
    linear_init = torch.nn.Linear.reset_parameters
    with caplog.at_level(logging.INFO, logger=LOADER):
        base = load_base_model(runtime_config(store, dtype))
    assert "via safetensors mmap" in caplog.text and "instead" not in caplog.text
    assert base.dtype == dtype and base.device == "cpu"
    directory = store / NAME / dtype
    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=getattr(torch, dtype)).eval()
    assert_same_model(base.model, reference, PROMPTS)
    assert base.model.lm_head.weight is base.model.model.embed_tokens.weight  # tied, not a copy
    assert_frozen_and_timed(base)
    assert base.timings_ms["page_in"] >= 0
    for phase in ("read", "to device", "warm-up"):
        assert phase in caplog.text
    # the skeleton's skipped initialisation (meta tensors only) is not left behind
    assert torch.nn.Linear.reset_parameters is linear_init
    torch.manual_seed(3)
    expected = torch.nn.init.kaiming_uniform_(torch.empty(8, 8), a=math.sqrt(5))
    torch.manual_seed(3)
    assert torch.equal(torch.nn.Linear(8, 8, bias=False).weight, expected)


def test_untied_checkpoint_loads_its_own_lm_head(tmp_path, caplog):
    store = make_store(tmp_path, tied=False)
    with caplog.at_level(logging.INFO, logger=LOADER):
        base = load_base_model(runtime_config(store))
    assert "via safetensors mmap" in caplog.text
    reference = AutoModelForCausalLM.from_pretrained(store / NAME / "float32", dtype=torch.float32).eval()
    assert base.model.lm_head.weight is not base.model.model.embed_tokens.weight
    assert_same_model(base.model, reference, PROMPTS)
    assert_frozen_and_timed(base)


def test_a_checkpoint_holding_a_tied_copy_falls_back_to_from_pretrained(tmp_path, caplog):
    """config says tied, the file has its own lm_head: from_pretrained keeps both apart, and so must we."""
    store = make_store(tmp_path)
    weights_file = store / NAME / "float32" / "model.safetensors"
    weights = load_file(weights_file)
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"] * 0.5
    save_file(weights, weights_file, metadata={"format": "pt"})
    with caplog.at_level(logging.INFO, logger=LOADER):
        base = load_base_model(runtime_config(store))
    assert "via from_pretrained" in caplog.text
    reference = AutoModelForCausalLM.from_pretrained(store / NAME / "float32", dtype=torch.float32).eval()
    assert_same_model(base.model, reference, PROMPTS)


def test_a_sharded_checkpoint_falls_back_to_from_pretrained(tmp_path, caplog):
    store = make_store(tmp_path, shard=True)
    assert not (store / NAME / "float32" / "model.safetensors").exists()
    with caplog.at_level(logging.INFO, logger=LOADER):
        base = load_base_model(runtime_config(store))
    assert "loading it with from_pretrained instead" in caplog.text and "via from_pretrained" in caplog.text
    reference = AutoModelForCausalLM.from_pretrained(store / NAME / "float32", dtype=torch.float32).eval()
    assert_same_model(base.model, reference, PROMPTS)
    assert base.model.lm_head.weight is base.model.model.embed_tokens.weight
    assert_frozen_and_timed(base)


def tokenizer_state(tokenizer):
    return {
        "class": type(tokenizer).__name__,
        "vocab": tokenizer.get_vocab(),
        "added": {i: repr(t) for i, t in tokenizer.added_tokens_decoder.items()},
        "special": tokenizer.special_tokens_map,
        "special_ids": tokenizer.all_special_ids,
        "ids": (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id),
        "sides": (tokenizer.padding_side, tokenizer.truncation_side, tokenizer.model_max_length),
        "chat_template": tokenizer.chat_template,
        "backend": tokenizer.backend_tokenizer.to_str(),
        "init_kwargs": {k: repr(v) for k, v in tokenizer.init_kwargs.items()},
    }


def assert_same_tokenizer(ours, theirs, texts, chats, tools=None, *, template_ids=True):
    """What the runtime asks of a tokenizer gives the same answers from ``ours`` as from ``theirs``: ids, text,
    token strings, special tokens, and the chat template's renders (text and ids, with and without tools and the
    generation prompt)."""
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "chat_template", "special_tokens_map"):
        assert getattr(ours, key) == getattr(theirs, key), key
    for text in texts:
        assert ours(text).input_ids == theirs(text).input_ids, text
        assert ours(text, add_special_tokens=False).input_ids == theirs(text, add_special_tokens=False).input_ids
        ids = theirs(text).input_ids
        assert ours.decode(ids) == theirs.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
        assert [ours.convert_ids_to_tokens(i) for i in ids] == [theirs.convert_ids_to_tokens(i) for i in ids]
    for chat in chats:
        for generation_prompt in (True, False):
            for kwargs in ({}, {"tools": tools}):
                kwargs = {"add_generation_prompt": generation_prompt, **kwargs}
                assert ours.apply_chat_template(chat, tokenize=False, **kwargs) == theirs.apply_chat_template(
                    chat, tokenize=False, **kwargs)
                if template_ids:
                    assert ours.apply_chat_template(chat, return_dict=False, **kwargs) == \
                        theirs.apply_chat_template(chat, return_dict=False, **kwargs)


TOOLS = [{"type": "function", "function": {
    "name": "weather", "description": "Weather <now> & 'later'",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
# a template using what transformers gives templates: tojson without HTML escaping, namespace, dict, loop
# controls, {% generation %}, raise_exception on a role it does not take
RICH_TEMPLATE = (
    "{% set ns = namespace(n=0) %}{% if tools %}{{ 't3 ' + (tools | tojson | length | string) + ' ' }}"
    "{{ dict(a=1) | tojson }}{% endif %}{% for m in messages %}{% if m['role'] == 'tool' %}"
    "{{ raise_exception('no tools here') }}{% endif %}{% if loop.index > 9 %}{% break %}{% endif %}"
    "{% set ns.n = ns.n + 1 %}{% if m['role'] == 'assistant' %}{% generation %}{{ 't4 ' + m['content'] }}"
    "{% endgeneration %}{% else %}{{ 't1 ' + m['content'] + ' t2 ' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 't1 t3 ' + eos_token }}{% endif %}")


def test_tokenizer_gives_the_auto_tokenizer_ids_and_text(tmp_path):
    store = make_store(tmp_path)
    directory = store / NAME / "float32"
    texts = ["t1 t5 t9", "t2 t7 t100 t127", "t0 t3 t3", "t2", ""]
    chats = [[{"role": "user", "content": "t5 t6"}], [{"role": "user", "content": "t9"},
                                                      {"role": "assistant", "content": "t10 t11"}]]
    ours = load_tokenizer(directory)
    assert isinstance(ours, Tokenizer)  # the runtime's: no transformers import on a node
    assert_same_tokenizer(ours, AutoTokenizer.from_pretrained(directory), texts, chats, TOOLS)

    (directory / "chat_template.jinja").write_text(RICH_TEMPLATE)
    ours, theirs = load_tokenizer(directory), AutoTokenizer.from_pretrained(directory)
    assert_same_tokenizer(ours, theirs, texts, chats, TOOLS, template_ids=False)  # it writes words outside the vocab
    for tokenizer in (ours, theirs):
        with pytest.raises(jinja2.TemplateError, match="no tools here"):
            tokenizer.apply_chat_template([{"role": "tool", "content": "t1"}], tokenize=False)
    ours.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"  # the sandbox holds for any template
    with pytest.raises(jinja2.exceptions.SecurityError):
        ours.apply_chat_template([{"role": "user", "content": "t1"}], tokenize=False)


def test_conversations_render_as_transformers_renders_them(tmp_path):
    directory = make_store(tmp_path) / NAME / "float32"
    (directory / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['role'] }}:{{ m.get('content', '-') }};{% endfor %}")
    ours, theirs = load_tokenizer(directory), AutoTokenizer.from_pretrained(directory)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]  # a None key is left out
    assert ours.apply_chat_template(chat, tokenize=False) == theirs.apply_chat_template(chat, tokenize=False)
    for tokenizer in (ours, theirs):
        with pytest.raises(ValueError):  # an empty conversation
            tokenizer.apply_chat_template([], tokenize=False)


@pytest.mark.parametrize("model", ["WordLevel", "BPE"])
def test_decoding_cleans_up_spaces_as_transformers_does(tmp_path, model):
    """clean_up_tokenization_spaces joins " ." and " n't" back, except for BPE models, whose spaces are real."""
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import BPE, WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    directory = make_store(tmp_path) / NAME / "float32"
    vocab = {word: i for i, word in enumerate(["[UNK]", "t1", "it", "is", "n't", ".", "?", "'s", ",", "eos"])}
    backend = Backend(WordLevel(vocab, unk_token="[UNK]") if model == "WordLevel" else
                      BPE(vocab, merges=[], unk_token="[UNK]"))
    backend.pre_tokenizer = WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="eos",
                            clean_up_tokenization_spaces=True).save_pretrained(directory)
    ours, theirs = load_tokenizer(directory), AutoTokenizer.from_pretrained(directory)
    assert isinstance(ours, Tokenizer)
    ids = theirs("it is n't . it 's , t1 ?", add_special_tokens=False).input_ids
    assert ours.decode(ids) == theirs.decode(ids)
    assert (" ." in ours.decode(ids)) == (model == "BPE")
    _edit_json(directory / "tokenizer_config.json",
               clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True)
    ours, theirs = load_tokenizer(directory), AutoTokenizer.from_pretrained(directory)
    assert ours.decode(ids) == theirs.decode(ids) and " ." not in ours.decode(ids)


def _edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("change, why", [
    (lambda d: _edit_json(d / "tokenizer_config.json", tokenizer_class="GPT2Tokenizer"), "GPT2Tokenizer"),
    (lambda d: _edit_json(d / "config.json", model_type="qwen2"), "model type"),
    (lambda d: _edit_json(d / "tokenizer_config.json", split_special_tokens=True), "split_special_tokens"),
    (lambda d: _edit_json(d / "tokenizer_config.json", image_token="t9"), "special tokens beyond"),
    (lambda d: (d / "special_tokens_map.json").write_text(json.dumps({"eos_token": "t3"})), "special_tokens_map"),
    (lambda d: ((d / "additional_chat_templates").mkdir(), (d / "additional_chat_templates" / "tool_use.jinja")
                .write_text("{{ tools }}")), "named chat templates"),
    (lambda d: _edit_json(d / "tokenizer_config.json", pad_token="t5"), "not one of tokenizer.json's added"),
    (lambda d: _edit_json(d / "tokenizer_config.json", bos_token=""), "an empty bos_token"),
    (lambda d: ((d / "chat_template.jinja").unlink(missing_ok=True),
                _edit_json(d / "tokenizer_config.json", chat_template=[{"name": "default", "template": "{{ 1 }}"},
                                                                         {"name": "rag", "template": "{{ 2 }}"}])),
     "several named chat templates"),
])
def test_what_transformers_adds_to_a_tokenizer_loads_with_auto_tokenizer(tmp_path, change, why):
    """Tokenizer settings under which AutoTokenizer does more than the tokenizers library (another class, split
    special tokens, named templates, more special tokens, a vocabulary word made special, an empty special token
    its templates still see) load with it."""
    directory = make_store(tmp_path) / NAME / "float32"
    change(directory)
    with pytest.raises(TokenizerUnsupported, match=why):
        Tokenizer.load(directory)
    assert not isinstance(load_tokenizer(directory), Tokenizer)


def test_training_records_encode_as_with_auto_tokenizer(tmp_path):
    from gpu_runtime.training_data import encode_record

    directory = make_store(tmp_path) / NAME / "float32"
    record = {"prompt": "t5 t6", "completion": "t7 t8"}
    assert encode_record(load_tokenizer(directory), record, 2) == \
        encode_record(AutoTokenizer.from_pretrained(directory), record, 2)


def test_auto_tokenizer_short_cut_is_the_auto_tokenizer(tmp_path):
    store = make_store(tmp_path)
    directory = store / NAME / "float32"
    assert "added_tokens_decoder" not in json.loads((directory / "tokenizer_config.json").read_text())
    texts = ["t1 t5 t9", "t2 t7 t100 t127", "t0 t3 t3"]
    chats = [[{"role": "user", "content": "t5 t6"}]]
    assert _head_added_tokens(directory / "tokenizer.json") is not None  # the short cut is taken
    ours = _auto_tokenizer(directory)
    assert tokenizer_state(ours) == tokenizer_state(AutoTokenizer.from_pretrained(directory))
    assert_same_tokenizer(ours, AutoTokenizer.from_pretrained(directory), texts, chats, TOOLS)

    # a special_tokens_map.json, which transformers merges over the config's special tokens
    (directory / "special_tokens_map.json").write_text(json.dumps({"eos_token": "t3", "bos_token": "t4"}))
    ours, theirs = _auto_tokenizer(directory), AutoTokenizer.from_pretrained(directory)
    assert (ours.eos_token, ours.bos_token) == (theirs.eos_token, theirs.bos_token) == ("t3", "t4")
    assert tokenizer_state(ours) == tokenizer_state(theirs)
    (directory / "special_tokens_map.json").unlink()

    # added_tokens after the model (not how tokenizers writes it): no short cut, the same tokenizer
    data = json.loads((directory / "tokenizer.json").read_text())
    data = {"model": data.pop("model"), **data}
    (directory / "tokenizer.json").write_text(json.dumps(data))
    assert _head_added_tokens(directory / "tokenizer.json") is None
    assert tokenizer_state(_auto_tokenizer(directory)) == tokenizer_state(AutoTokenizer.from_pretrained(directory))


def test_phases_add_up_to_the_ready_time(tmp_path):
    store = make_store(tmp_path)
    _, _, timings, loader = load_model_dir(store / NAME / "float32", torch.float32, "cpu")
    assert loader == "safetensors mmap"
    assert timings["tokenizer"] <= timings["read"] and timings["page_in"] <= timings["read"]


# ---- the real SmolLM2 --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_store():
    """The real SmolLM2 imported into var/models (once; later runs reuse it, as make up does)."""
    store = ROOT / "var" / "models"
    subprocess.run([sys.executable, "-m", "gpu_runtime.model_store", "import"], cwd=ROOT, check=True,
                   env={**os.environ, "VAJRA_MODEL_STORE": str(store)}, stdout=subprocess.DEVNULL, timeout=600)
    return store


@pytest.mark.slow
def test_smollm2_fast_path_is_the_from_pretrained_model(smollm2_store, caplog):
    config = dataclasses.replace(RuntimeConfig.from_env(), model_store=smollm2_store, device="cpu", dtype="float32")
    with caplog.at_level(logging.INFO, logger=LOADER):
        base = load_base_model(config)
    assert "via safetensors mmap" in caplog.text
    directory = smollm2_store / config.base_model / "float32"
    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    chats = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello! <|im_end|> not special here"}]]
    texts = ["Hello", "def fibonacci(n):\n    return n", "<|im_start|>user\nhé ☃ 日本語<|im_end|>", "  two  spaces"]
    assert isinstance(base.tokenizer, Tokenizer)
    assert_same_tokenizer(base.tokenizer, tokenizer, texts, chats, TOOLS)
    prompts = [torch.tensor([tokenizer.apply_chat_template(chat, add_generation_prompt=True)["input_ids"]])
               for chat in chats]
    assert_same_model(base.model, reference, prompts)
    assert base.model.lm_head.weight is base.model.model.embed_tokens.weight
    assert_frozen_and_timed(base)
