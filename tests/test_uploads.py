"""adapters.uploads.unpack_upload with crafted archives: what a PEFT folder looks like passes, and every
unsafe or malformed upload is refused with its code before anything lands outside the private directory."""

import io
import struct
import tarfile
import zipfile
import zlib

import pytest

from adapters import uploads
from adapters.uploads import MAX_FILES, unpack_upload
from gpu_runtime.adapter_validation import CONFIG_FILE, WEIGHTS_FILE, AdapterRejected, validate_adapter
from tests.adapter_files import BASE, in_folder, tar_bytes, write_adapter, zip_bytes


@pytest.fixture(scope="module")
def adapter_files(tmp_path_factory):
    """A valid adapter's two files as bytes: {name: data}."""
    path = write_adapter(tmp_path_factory.mktemp("adapter") / "a")
    return {name: (path / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}





def fresh(tmp_path, name):
    path = tmp_path / name
    path.mkdir()
    return path


def refused(files, dest):
    with pytest.raises(AdapterRejected) as info:
        unpack_upload(files, dest)
    return info.value.code


# What passes

@pytest.mark.parametrize("archive_name,make", [
    ("adapter.zip", lambda m: zip_bytes(m)),
    ("adapter.zip", lambda m: zip_bytes(m, compression=zipfile.ZIP_STORED)),
    ("adapter.tar", lambda m: tar_bytes(m, mode="w")),
    ("adapter.tar.gz", lambda m: tar_bytes(m)),
    ("adapter.tgz", lambda m: tar_bytes(m)),
    ("adapter.tar.xz", lambda m: tar_bytes(m, mode="w:xz")),
])
def test_peft_folder_in_an_archive_is_flattened(tmp_path, adapter_files, archive_name, make):
    members = [("my-adapter/", b"")] if archive_name.endswith(".zip") else []
    members += in_folder(adapter_files) + [("my-adapter/README.md", b"# notes")]
    assert unpack_upload([(archive_name, make(members))], tmp_path) == [CONFIG_FILE, WEIGHTS_FILE]
    for name, data in adapter_files.items():
        assert (tmp_path / name).read_bytes() == data
    assert validate_adapter(tmp_path, BASE).rank == 4


def test_the_two_files_directly(tmp_path, adapter_files):
    assert unpack_upload(list(adapter_files.items()), tmp_path) == [CONFIG_FILE, WEIGHTS_FILE]
    assert validate_adapter(tmp_path, BASE).target_modules == ["q_proj", "v_proj"]


def test_a_zip_misnamed_as_tar_is_still_read(tmp_path, adapter_files):
    assert unpack_upload([("adapter.tar", zip_bytes(in_folder(adapter_files)))], tmp_path) == [CONFIG_FILE,
                                                                                               WEIGHTS_FILE]


# Path traversal and links

TRAVERSAL = ["../adapter_config.json", "my-adapter/../../adapter_config.json", "/etc/adapter_config.json",
             "C:\\temp\\adapter_config.json", "C:/adapter_config.json", "..\\..\\adapter_config.json"]


@pytest.mark.parametrize("name", TRAVERSAL)
def test_zip_path_traversal_is_refused(tmp_path, adapter_files, name):
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = zip_bytes([(name, adapter_files[CONFIG_FILE]), (WEIGHTS_FILE, adapter_files[WEIGHTS_FILE])])
    assert refused([("adapter.zip", archive)], dest) == "unsafe_archive"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dest"]  # nothing written, not even inside


@pytest.mark.parametrize("name", TRAVERSAL)
def test_tar_path_traversal_is_refused(tmp_path, adapter_files, name):
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = tar_bytes([(WEIGHTS_FILE, adapter_files[WEIGHTS_FILE]), (name, adapter_files[CONFIG_FILE])])
    assert refused([("adapter.tar.gz", archive)], dest) == "unsafe_archive"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dest"]


def test_zip_symlink_is_refused(tmp_path, adapter_files):
    link = zipfile.ZipInfo(WEIGHTS_FILE)
    link.external_attr = 0o120777 << 16  # S_IFLNK: the member's data is the link target
    archive = zip_bytes([(CONFIG_FILE, adapter_files[CONFIG_FILE]), (link, b"/etc/passwd")])
    assert refused([("adapter.zip", archive)], tmp_path) == "unsafe_archive"
    assert not (tmp_path / WEIGHTS_FILE).exists()


@pytest.mark.parametrize("link_type", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_links_are_refused(tmp_path, adapter_files, link_type):
    link = tarfile.TarInfo(WEIGHTS_FILE)
    link.type, link.linkname = link_type, "/etc/passwd"
    archive = tar_bytes([(CONFIG_FILE, adapter_files[CONFIG_FILE]), (link, None)])
    assert refused([("adapter.tar.gz", archive)], tmp_path) == "unsafe_archive"
    assert list(tmp_path.iterdir()) == []


def test_tar_device_file_is_refused(tmp_path, adapter_files):
    device = tarfile.TarInfo(WEIGHTS_FILE)
    device.type, device.devmajor, device.devminor = tarfile.CHRTYPE, 1, 3
    archive = tar_bytes([(CONFIG_FILE, adapter_files[CONFIG_FILE]), (device, None)])
    assert refused([("adapter.tar", archive)], tmp_path) == "unsafe_archive"


# Nested archives, counts, sizes

@pytest.mark.parametrize("inner", ["weights.zip", "weights.tar.gz", "weights.tgz", "x.7z"])
def test_nested_archive_is_refused(tmp_path, adapter_files, inner):
    nested = zip_bytes(in_folder(adapter_files))
    members = in_folder(adapter_files) + [(f"my-adapter/{inner}", nested)]
    assert refused([("adapter.zip", zip_bytes(members))], fresh(tmp_path, "zip")) == "nested_archive"
    assert refused([("adapter.tar.gz", tar_bytes(members))], fresh(tmp_path, "tar")) == "nested_archive"


def test_nested_zip_as_the_last_member_of_a_plain_tar_is_refused(tmp_path, adapter_files):
    # A zip's end record sits in its last bytes, so a plain tar ending in one looks like a zip by content.
    members = [("my-adapter/inner.zip", zip_bytes(in_folder(adapter_files)))]
    assert refused([("adapter.tar", tar_bytes(members, mode="w"))], tmp_path) == "nested_archive"


def test_archive_next_to_the_files_is_refused(tmp_path, adapter_files):
    files = [*adapter_files.items(), ("extra.zip", zip_bytes(in_folder(adapter_files)))]
    assert refused(files, tmp_path) == "nested_archive"


@pytest.mark.parametrize("make,name", [(zip_bytes, "a.zip"), (tar_bytes, "a.tar.gz")])
def test_too_many_files(tmp_path, make, name):
    members = [(f"my-adapter/f{i}.txt", b"x") for i in range(MAX_FILES + 1)]
    assert refused([(name, make(members))], tmp_path) == "too_many_files"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make,name", [(zip_bytes, "a.zip"), (tar_bytes, "a.tar.gz")])
def test_too_many_directory_entries(tmp_path, adapter_files, make, name):
    members = [(f"d{i}/", b"") for i in range(10_000)] if make is zip_bytes else [
        (_tar_dir(f"d{i}"), None) for i in range(10_000)]
    assert refused([(name, make(members + in_folder(adapter_files)))], tmp_path) == "too_many_files"


def _tar_dir(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


@pytest.fixture
def small_cap(monkeypatch):
    cap = 1 << 20
    monkeypatch.setattr(uploads, "MAX_EXPANDED_BYTES", cap)
    return cap


def test_zip_bomb_is_refused_while_reading(tmp_path, small_cap):
    archive = zip_bytes([(WEIGHTS_FILE, bytes(2 * small_cap))])
    assert len(archive) < small_cap // 100  # a few KB that would expand to 2 MB
    assert refused([("a.zip", archive)], tmp_path) == "archive_too_large"
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= small_cap


def test_zip_bomb_spread_over_members_is_refused(tmp_path, small_cap):
    part = bytes(small_cap * 3 // 5)
    archive = zip_bytes([(CONFIG_FILE, part), (WEIGHTS_FILE, part)])
    assert refused([("a.zip", archive)], tmp_path) == "archive_too_large"


def _lie_about_size(archive, claimed, crc=None):
    """Rewrites the uncompressed size (and optionally the CRC) in the local and central headers."""
    data = bytearray(archive)
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, claimed)
    struct.pack_into("<I", data, central + 24, claimed)
    if crc is not None:
        struct.pack_into("<I", data, local + 14, crc)
        struct.pack_into("<I", data, central + 16, crc)
    return bytes(data)


def test_zip_header_lying_about_its_size_never_expands_past_what_it_claims(tmp_path, small_cap):
    real = bytes(2 * small_cap)
    honest = zip_bytes([(WEIGHTS_FILE, real)])
    claimed = 1000
    assert zipfile.ZipFile(io.BytesIO(_lie_about_size(honest, claimed))).infolist()[0].file_size == claimed
    # The CRC of the full data no longer matches what was read: refused, and at most `claimed` bytes written.
    assert refused([("a.zip", _lie_about_size(honest, claimed))], tmp_path) == "invalid_archive"
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= claimed
    # With the CRC forged as well the reader still stops at the claimed size: the bomb never goes off.
    forged = _lie_about_size(honest, claimed, crc=zlib.crc32(real[:claimed]))
    dest = fresh(tmp_path, "forged")
    unpack_upload([("a.zip", forged)], dest)
    assert (dest / WEIGHTS_FILE).stat().st_size == claimed


def test_zip_declaring_more_than_the_cap_is_refused_before_reading(tmp_path):
    claimed = _lie_about_size(zip_bytes([(WEIGHTS_FILE, bytes(1000))], compression=zipfile.ZIP_STORED), 5000)
    with pytest.raises(AdapterRejected) as info:
        unpack_upload([("a.zip", claimed)], tmp_path, cap=2000)
    assert info.value.code == "archive_too_large"
    assert list(tmp_path.iterdir()) == []  # refused from the declared sizes: nothing extracted


def test_the_cap_follows_from_the_base_model():
    from gpu_runtime.adapter_validation import MAX_CONFIG_BYTES, MAX_LORA_RANK, max_weights_bytes

    # tiny-llama: 2 layers; q 64->64, k and v 64->32, o 64->64, gate and up 64->128, down 128->64
    data = 2 * (128 + 96 + 96 + 128 + 192 + 192 + 192) * MAX_LORA_RANK * 4
    assert data < max_weights_bytes(BASE) < data + (64 << 10) + 28 * 512 + 1
    assert uploads.upload_cap(BASE) == max_weights_bytes(BASE) + MAX_CONFIG_BYTES + uploads.EXTRA_FILES_BYTES


def test_tar_gz_bomb_is_refused(tmp_path, small_cap):
    archive = tar_bytes([(WEIGHTS_FILE, bytes(2 * small_cap))])
    assert len(archive) < small_cap // 100
    assert refused([("a.tar.gz", archive)], tmp_path) == "archive_too_large"
    assert list(tmp_path.iterdir()) == []  # refused from the header, before reading the member


def test_two_files_over_the_cap_are_refused(tmp_path, small_cap, adapter_files):
    files = [(CONFIG_FILE, adapter_files[CONFIG_FILE]), (WEIGHTS_FILE, bytes(small_cap))]
    assert refused(files, tmp_path) == "archive_too_large"


# Pickles, strays, duplicates, corruption

@pytest.mark.parametrize("name", ["adapter_model.bin", "adapter_model.pt", "training_state.pth", "x.pkl"])
def test_pickle_member_is_refused_unopened(tmp_path, adapter_files, name):
    members = in_folder(adapter_files) + [(f"my-adapter/{name}", b"\x80\x04 never read")]
    assert refused([("a.zip", zip_bytes(members))], tmp_path) == "pickle_refused"
    assert refused([*adapter_files.items(), (name, b"\x80\x04")], fresh(tmp_path, "two")) == "pickle_refused"


def test_unexpected_files_are_refused(tmp_path, adapter_files):
    members = in_folder(adapter_files) + [("my-adapter/tokenizer.json", b"{}"), ("my-adapter/run.sh", b"rm")]
    with pytest.raises(AdapterRejected) as info:
        unpack_upload([("a.zip", zip_bytes(members))], tmp_path)
    assert info.value.code == "unexpected_files"
    assert "run.sh" in info.value.message and "tokenizer.json" in info.value.message


def test_duplicate_names_in_different_folders_are_refused(tmp_path, adapter_files):
    members = in_folder(adapter_files) + [("other/adapter_config.json", b"{}")]
    assert refused([("a.zip", zip_bytes(members))], tmp_path) == "duplicate_file"
    assert refused([("a.tar.gz", tar_bytes(members))], fresh(tmp_path, "t")) == "duplicate_file"


def test_duplicate_upload_of_the_same_file_is_refused(tmp_path, adapter_files):
    files = [*adapter_files.items(), (CONFIG_FILE, adapter_files[CONFIG_FILE])]
    assert refused(files, tmp_path) == "duplicate_file"


@pytest.mark.parametrize("name,data", [
    ("a.zip", b"PK\x03\x04 this is not a zip"),
    ("a.tar.gz", b"\x1f\x8b\x08\x00 not gzip either"),
    ("a.tar", b"just some text, not a tar"),
    ("a.7z", b"7z\xbc\xaf\x27\x1c"),
    ("a.zip", b""),
])
def test_corrupt_archive_is_invalid(tmp_path, name, data):
    assert refused([(name, data)], tmp_path) == "invalid_archive"


def test_corrupt_deflate_stream_is_invalid(tmp_path, adapter_files):
    archive = bytearray(zip_bytes([(WEIGHTS_FILE, adapter_files[WEIGHTS_FILE])]))
    start = archive.index(b"PK\x03\x04") + 30 + len(WEIGHTS_FILE)
    archive[start:start + 64] = b"\xff" * 64  # garbage where the compressed data begins
    assert refused([("a.zip", bytes(archive))], tmp_path) == "invalid_archive"


def test_truncated_tar_gz_is_invalid(tmp_path, adapter_files):
    archive = tar_bytes(in_folder(adapter_files))
    assert refused([("a.tar.gz", archive[: len(archive) // 2])], tmp_path) == "invalid_archive"


def test_encrypted_zip_member_is_invalid(tmp_path, adapter_files):
    archive = bytearray(zip_bytes([(WEIGHTS_FILE, adapter_files[WEIGHTS_FILE])]))
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = archive.index(signature) + flags_at
        archive[at] |= 0x1  # the "encrypted" flag: zipfile asks for a password
    assert refused([("a.zip", bytes(archive))], tmp_path) == "invalid_archive"


# Request bodies are bounded per route before anything parses them (vajra.body_limits).

def _asgi(app, path, headers, chunks):
    """Runs one HTTP request through an ASGI app; returns (status, headers, body, messages the app received)."""
    import asyncio

    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    given, sent = [], []

    async def receive():
        message = pending.pop(0) if pending else {"type": "http.disconnect"}
        given.append(message)
        return message

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), *headers], "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, given


def _assert_413(status, headers, body, limit):
    import json

    assert status == 413
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "body_too_large"
    assert str(limit) in error["message"]
    assert headers[b"x-request-id"].startswith(b"req_")


def test_body_over_the_upload_limit_is_refused_from_content_length_before_reading(settings, unchanged_db):
    from vajra.asgi import application

    settings.VAJRA_MAX_UPLOAD_BYTES = 1 << 20
    headers = [(b"content-length", str(200 << 20).encode()),
               (b"content-type", b"multipart/form-data; boundary=x")]
    with unchanged_db():
        status, response_headers, body, given = _asgi(application, "/api/v1/adapters", headers, [b"x" * 100])
    _assert_413(status, response_headers, body, 1 << 20)
    assert given == []  # not one byte of the body was read


def test_other_routes_take_the_small_limit(settings, unchanged_db):
    from vajra.asgi import application

    settings.VAJRA_MAX_BODY_BYTES = 64 << 10
    with unchanged_db():
        status, headers, body, given = _asgi(application, "/v1/models/tiny/infer",
                                             [(b"content-length", str(65 << 10).encode())], [b"{}"])
    _assert_413(status, headers, body, 64 << 10)
    assert given == []


def test_chunked_body_is_counted_and_refused_at_the_limit(settings, unchanged_db):
    from vajra.asgi import application

    settings.VAJRA_MAX_BODY_BYTES = 64 << 10
    chunks = [b"a" * (16 << 10)] * 64  # 1 MiB without Content-Length
    with unchanged_db():
        status, headers, body, given = _asgi(application, "/v1/models/tiny/infer",
                                             [(b"content-type", b"application/json")], chunks)
    _assert_413(status, headers, body, 64 << 10)
    assert len(given) <= 5  # reading stopped at the chunk that crossed 64 KiB


def test_bodies_within_the_limit_reach_the_app_whole(settings):
    from vajra.body_limits import BodyLimitMiddleware

    settings.VAJRA_MAX_BODY_BYTES = 64 << 10
    received = []

    async def echo(scope, receive, send):
        while True:
            message = await receive()
            received.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"".join(received)})

    chunks = [b"b" * (16 << 10)] * 4  # exactly the limit, chunked
    status, _, body, _ = _asgi(BodyLimitMiddleware(echo), "/v1/models/tiny/infer", [], chunks)
    assert status == 200 and body == b"".join(chunks)
