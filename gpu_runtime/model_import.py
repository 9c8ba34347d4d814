"""What an operator's base-model source must be before the model store converts it, without loading a model.

Sources: a local Hugging Face directory (config.json, safetensors weights, tokenizer, chat template), a tar or zip
of one, a GGUF file (de-quantised by transformers when converted), or an ``s3://`` URL of any of these (an object,
or a prefix holding a directory's files). Everything here reads files and JSON only: no torch, transformers or
gguf, so the web can check a directory before it starts an import (the conversion is
``gpu_runtime.model_store.import_model``, in its own process).

A source that cannot be served is refused with ``ImportRefused(code, message)``: an architecture the runtime's
LoRA layers do not target, no tokenizer, shards missing from the index, weights only in pickle files (never
unpickled), quantised checkpoints (GPTQ, AWQ, bitsandbytes, ...), configs too large or out of range, and paths
that leave the source (``..``, absolute names, symlinks pointing outside).

Progress goes to a JSON file written whole each time (``Progress``), which the web reads while the import runs.
"""

import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath

# transformers model types whose decoder blocks have the projections the slot LoRA layers wrap (q/k/v/o_proj under
# self_attn, gate/up/down_proj under mlp, in model.model.layers) and whose checkpoints transformers loads itself.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
MAX_CONFIG_BYTES = 1 << 20  # a real config.json is a few KB
MAX_INDEX_BYTES = 16 << 20  # the shard index of a 400B model is a few MB
MAX_MEMBERS = 10_000  # files in an archive or under an S3 prefix
# Bounds on the config's sizes: past them from_config would try to allocate more than any served model needs.
CONFIG_BOUNDS = {"num_hidden_layers": 512, "hidden_size": 65_536, "intermediate_size": 262_144,
                 "num_attention_heads": 1024, "num_key_value_heads": 1024, "vocab_size": 1 << 21,
                 "max_position_embeddings": 1 << 22}
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class ImportRefused(ValueError):
    """A source the model store will not import; ``code`` is stable, ``message`` says what to fix."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


def check_name(name):
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise ImportRefused("invalid_name", "A model name is 1-64 lowercase letters, digits, '.', '_' and '-', "
                                            "starting with a letter or digit.")
    return name


def source_kind(source):
    """"s3", "directory", "archive" or "gguf" for a source string (a path or URL); refuses anything else."""
    text = str(source)
    if text.startswith("s3://"):
        return "s3"
    path = Path(text)
    if path.is_dir():
        return "directory"
    if not path.is_file():
        raise ImportRefused("source_not_found", f"{text} is neither a directory, a file nor an s3:// URL.")
    return file_kind(path.name)


def file_kind(filename):
    lower = filename.lower()
    if lower.endswith(".gguf"):
        return "gguf"
    if lower.endswith(ARCHIVE_SUFFIXES):
        return "archive"
    if lower.endswith(PICKLE_SUFFIXES):
        raise ImportRefused("pickle_weights", f"{filename} is a pickle file: it is never loaded. Convert the "
                                              "checkpoint to safetensors (save_pretrained(safe_serialization=True)).")
    raise ImportRefused("unknown_source", f"{filename}: give a model directory, a .zip or .tar(.gz) of one, a "
                                          ".gguf file or an s3:// URL.")


def resolve_under(root, relative):
    """``root / relative`` resolved, refused when it leaves ``root`` (``..``, an absolute path, a symlink out)."""
    root = Path(root).resolve()
    text = str(relative)
    if not text or "\x00" in text or PurePosixPath(text).is_absolute() or ".." in PurePosixPath(text).parts:
        raise ImportRefused("unsafe_path", f"{text!r}: give a path inside the import folder, without '..'.")
    path = (root / text).resolve()
    if path != root and root not in path.parents:
        raise ImportRefused("unsafe_path", f"{text!r} leads outside the import folder (a symlink?).")
    return path


def _read_json(path, limit, what):
    size = path.stat().st_size
    if size > limit:
        raise ImportRefused(f"{what}_too_large", f"{path.name} is {size} bytes; at most {limit} are read.")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise ImportRefused(f"invalid_{what}", f"{path.name} is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ImportRefused(f"invalid_{what}", f"{path.name} must hold a JSON object.")
    return data


def check_architecture(model_type, architectures=()):
    if model_type not in SUPPORTED_MODEL_TYPES:
        listed = ", ".join(architectures) or "no architectures listed"
        raise ImportRefused("unsupported_architecture", f"model_type {model_type!r} ({listed}) is not served: the "
                                                        f"runtime serves {', '.join(SUPPORTED_MODEL_TYPES)}.")


def check_config(config):
    """The checks of config.json: a served architecture, not quantised, sizes in range."""
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "unknown") \
            if isinstance(config["quantization_config"], dict) else "unknown"
        raise ImportRefused("quantized_checkpoint", f"the checkpoint is quantised ({method}); the runtime serves "
                                                    "float weights only: import the unquantised checkpoint or a GGUF.")
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise ImportRefused("invalid_config", "config.json: architectures must be a list of names.")
    check_architecture(config.get("model_type"), architectures)
    for key, bound in CONFIG_BOUNDS.items():
        value = config.get(key)
        if key == "num_key_value_heads" and value is None:
            continue  # defaults to num_attention_heads
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= bound:
            raise ImportRefused("invalid_config", f"config.json: {key} must be an integer from 1 to {bound} "
                                                  f"(got {value!r}).")
    return config


def _walk(root):
    """Every file under ``root`` (relative path, lstat), refusing links that lead outside it and special files."""
    root = Path(root).resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                target = path.resolve()
                if target != root and root not in target.parents:
                    raise ImportRefused("unsafe_path", f"{path.relative_to(root)} is a symlink leading outside "
                                                       "the model directory.")
                info = path.stat()
            if stat.S_ISREG(info.st_mode):
                found.append((path.relative_to(root).as_posix(), info.st_size))
            elif not stat.S_ISDIR(info.st_mode):
                raise ImportRefused("unsafe_path", f"{path.relative_to(root)} is not a regular file.")
        if len(found) > MAX_MEMBERS:
            raise ImportRefused("too_many_files", f"the model directory holds more than {MAX_MEMBERS} files.")
    return dict(found)


def check_directory(directory):
    """The checks of a Hugging Face directory. Returns {"config", "weights": [file names], "bytes", "tokenizer"}."""
    directory = Path(directory)
    files = _walk(directory)
    if CONFIG_FILE not in files:
        raise ImportRefused("missing_config", f"{CONFIG_FILE} is missing: save the model with save_pretrained.")
    config = check_config(_read_json(directory / CONFIG_FILE, MAX_CONFIG_BYTES, "config"))
    if not any(name in files for name in TOKENIZER_FILES) or "tokenizer_config.json" not in files:
        raise ImportRefused("missing_tokenizer", "the tokenizer is missing: tokenizer_config.json and tokenizer.json "
                                                 "(or tokenizer.model) must sit beside config.json.")
    if INDEX_FILE in files:
        index = _read_json(directory / INDEX_FILE, MAX_INDEX_BYTES, "index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str)
                                                                         for v in weight_map.values()):
            raise ImportRefused("invalid_index", f"{INDEX_FILE} has no weight_map of tensor -> shard file.")
        shards = sorted(set(weight_map.values()))
        if any("/" in s or "\\" in s or s.startswith(".") or not s.endswith(".safetensors") for s in shards):
            raise ImportRefused("unsafe_path", f"{INDEX_FILE} names shards outside the directory or not in "
                                               "safetensors.")
        missing = [s for s in shards if s not in files]
        if missing:
            raise ImportRefused("missing_shards", f"{len(missing)} of {len(shards)} shards named in {INDEX_FILE} are "
                                                  f"missing: {', '.join(missing[:5])}.")
        weights = shards
    elif WEIGHTS_FILE in files:
        weights = [WEIGHTS_FILE]
    elif any(name.endswith(PICKLE_SUFFIXES) for name in files):
        raise ImportRefused("pickle_weights", "the weights are pickle files (.bin/.pt): they are never loaded. "
                                              "Save the model with safe_serialization=True.")
    else:
        raise ImportRefused("missing_weights", f"no {WEIGHTS_FILE} (or {INDEX_FILE} with its shards) in the "
                                               "directory.")
    has_template = "chat_template.jinja" in files or "chat_template" in _read_json(
        directory / "tokenizer_config.json", MAX_INDEX_BYTES, "tokenizer_config")
    return {"config": config, "weights": weights, "bytes": sum(files[w] for w in weights),
            "has_chat_template": has_template}


def model_root(directory):
    """The folder holding config.json: ``directory`` itself, or its one subfolder (archives usually wrap one)."""
    directory = Path(directory)
    if (directory / CONFIG_FILE).exists():
        return directory
    children = [c for c in directory.iterdir() if not c.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir() and not children[0].is_symlink():
        return children[0]
    return directory


def _member_path(name):
    """An archive member's or S3 object's path below the target folder ("." for the folder itself)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if PurePosixPath(name).is_absolute() or ".." in parts or name.startswith("/"):
        raise ImportRefused("unsafe_path", f"the archive member {name!r} leads outside the archive's folder.")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def extract_archive(archive, target, *, max_bytes, progress=None):
    """Extracts a zip or tar into ``target`` after checking every member: plain files and folders only (no links,
    devices or absolute or ``..`` names), at most MAX_MEMBERS members and ``max_bytes`` in all."""
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            members = z.infolist()
            _check_members([(m.filename, m.file_size, not m.is_dir() and stat.S_ISLNK(m.external_attr >> 16),
                             m.is_dir()) for m in members], max_bytes)
            for i, member in enumerate(members):
                dest = target / _member_path(member.filename)
                if member.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with z.open(member) as src, open(dest, "wb") as out:
                    _copy_bounded(src, out, member.file_size)
                if progress:
                    progress(i + 1, len(members))
        return target
    try:
        tar = tarfile.open(archive)
    except tarfile.TarError:
        raise ImportRefused("unreadable_archive", f"{archive.name} is neither a zip nor a tar archive.") from None
    with tar:
        members = tar.getmembers()
        if any(not (m.isfile() or m.isdir()) for m in members):
            bad = next(m for m in members if not (m.isfile() or m.isdir()))
            raise ImportRefused("unsafe_path", f"the archive member {bad.name!r} is a link or special file; archives "
                                               "may hold plain files and folders only.")
        _check_members([(m.name, m.size, False, m.isdir()) for m in members], max_bytes)
        for i, member in enumerate(members):
            tar.extract(member, target, filter="data")
            if progress:
                progress(i + 1, len(members))
    return target


def _check_members(members, max_bytes):
    if len(members) > MAX_MEMBERS:
        raise ImportRefused("too_many_files", f"the archive holds more than {MAX_MEMBERS} members.")
    total = 0
    for name, size, is_link, is_dir in members:
        if _member_path(name) == PurePosixPath(".") and not is_dir:
            raise ImportRefused("unsafe_path", f"the archive member {name!r} has no name.")
        if is_link:
            raise ImportRefused("unsafe_path", f"the archive member {name!r} is a symlink.")
        total += size
    if total > max_bytes:
        raise ImportRefused("source_too_large", f"the archive unpacks to {total} bytes; at most {max_bytes}.")


def _copy_bounded(src, out, size):
    """Copies a zip member, refusing one that unpacks past its declared size."""
    written = 0
    while block := src.read(1 << 20):
        written += len(block)
        if written > size:
            raise ImportRefused("unreadable_archive", "an archive member unpacks past its declared size.")
        out.write(block)


def s3_fetch(url, target, *, max_bytes, progress=None, client=None):
    """Downloads ``s3://bucket/key`` into ``target``: one object (returned as the file's path), or every object
    under the prefix ``key/`` (returned as the folder). Bounded in object count and bytes."""
    if client is None:
        import boto3

        client = boto3.client("s3", endpoint_url=os.environ.get("VAJRA_S3_ENDPOINT_URL") or None)
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = url[len("s3://"):].partition("/")
    key = key.strip("/")
    if not bucket or not key:
        raise ImportRefused("invalid_source", f"{url}: give s3://bucket/key.")
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    try:
        objects = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            objects += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
            if len(objects) > MAX_MEMBERS:
                raise ImportRefused("too_many_files", f"{url} holds more than {MAX_MEMBERS} objects.")
        single = [(k, s) for k, s in objects if k == key]
        if single:
            chosen, base = single, key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        else:
            chosen, base = [(k, s) for k, s in objects if k.startswith(key + "/") and not k.endswith("/")], key + "/"
        if not chosen:
            raise ImportRefused("source_not_found", f"nothing at {url}.")
        total = sum(s for _, s in chosen)
        if total > max_bytes:
            raise ImportRefused("source_too_large", f"{url} holds {total} bytes; at most {max_bytes}.")
        done = 0
        for name, size in chosen:
            dest = target / _member_path(name[len(base):])
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, name, str(dest))
            done += size
            if progress:
                progress(done, total)
    except (BotoCoreError, ClientError) as exc:
        raise ImportRefused("source_unreachable", f"{url}: {exc}") from None
    return target / _member_path(key.rsplit("/", 1)[-1]) if single else target


class Progress:
    """An import's progress as one JSON object in ``path`` (replaced whole on each update; no path: nothing is
    written): ``state`` running/succeeded/failed, ``phase``, ``percent``, ``error`` {code, message} when failed,
    ``manifest`` when done, ``updated_at``."""

    def __init__(self, path=None, **fields):
        self.path = Path(path) if path else None
        self.state = {"state": "running", "phase": "starting", "percent": 0, **fields}
        self._write()

    def update(self, phase, percent, **fields):
        self.state.update(phase=phase, percent=max(self.state["percent"], min(100, round(percent))), **fields)
        self._write()

    def succeeded(self, manifest):
        self.state.update(state="succeeded", phase="done", percent=100, manifest=manifest)
        self._write()

    def failed(self, code, message):
        self.state.update(state="failed", error={"code": code, "message": message})
        self._write()

    def _write(self):
        if self.path is None:
            return
        self.state["updated_at"] = time.time()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(self.state, f)
        os.replace(tmp, self.path)


def read_progress(path):
    """The progress object at ``path``, or None before the import wrote one."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)
