"""Unpacking a tenant's adapter upload safely, and checking it with the runtime's validator (no torch).

Accepted: a zip or tar (optionally gzip/bzip2/xz) of a PEFT directory, or the two files themselves.
Refused before anything is written outside a private temporary directory: path traversal, absolute
paths, links, device files, nested archives, too many files, and uploads that expand past the size cap
(decompression bombs: declared sizes are checked first, and actual sizes are counted while reading, never
trusted from headers). The cap follows from the base model: its largest legal adapter (``upload_cap``).
Uploaded files are read as streams from Django's temporary files, a block at a time, never whole.
"""

import hashlib
import io
import lzma
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from gpu_runtime.adapter_validation import (
    CONFIG_FILE,
    MAX_CONFIG_BYTES,
    MAX_WEIGHTS_BYTES,
    PICKLE_SUFFIXES,
    WEIGHTS_FILE,
    AdapterRejected,
    max_weights_bytes,
)

MAX_FILES = 16
MAX_ENTRIES = 4 * MAX_FILES  # directories included
# Room for the files a PEFT save carries besides the two that matter (README.md and the like), and a margin.
EXTRA_FILES_BYTES = 1 << 20
# The cap when no base model is named: the validator's absolute ceiling on a weights file.
MAX_EXPANDED_BYTES = MAX_WEIGHTS_BYTES + MAX_CONFIG_BYTES + EXTRA_FILES_BYTES
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".gz", ".bz2", ".xz", ".7z", ".rar")
# Other files a PEFT save may carry next to the two that matter; kept out of storage.
IGNORED = {"README.md", "training_args.json", ".gitattributes"}


def _reject(code, message):
    raise AdapterRejected(code, message)


def _safe_name(name):
    """The file name an archive member may have: inside the archive root, no traversal."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        _reject("unsafe_archive", f"archive member {name!r} points outside the adapter folder")
    return path


def upload_cap(base):
    """The most bytes an adapter upload for ``base`` may expand to: its largest legal weights file, the config and
    the room for PEFT's other small files."""
    return max_weights_bytes(base) + MAX_CONFIG_BYTES + EXTRA_FILES_BYTES


def _too_large(cap):
    _reject("archive_too_large", f"the upload expands past {cap} bytes, more than the largest legal adapter for "
            "this base model")


def _copy_limited(source, target, budget, cap):
    """Copies at most ``budget`` bytes, refusing past it (the header's size is not trusted)."""
    written = 0
    while chunk := source.read(1 << 20):
        written += len(chunk)
        if written > budget:
            _too_large(cap)
        target.write(chunk)
    return written


def _check_member_name(path, names):
    lowered = path.name.lower()
    if lowered.endswith(PICKLE_SUFFIXES):
        _reject("pickle_refused", f"{path.name}: pickle formats are never opened. Upload adapter_model.safetensors.")
    if lowered.endswith(ARCHIVE_SUFFIXES):
        _reject("nested_archive", f"{path.name}: archives inside archives are not accepted")
    if path.name in names:
        _reject("duplicate_file", f"{path.name} appears twice in the archive")
    names.add(path.name)


def _check_entry_count(count):
    if count > MAX_ENTRIES:
        _reject("too_many_files", f"the archive holds more than {MAX_ENTRIES} entries (files and folders)")


def _extract_planned(planned, dest, cap):
    """Extracts members whose names and types have all been checked; sizes are counted while reading."""
    budget = cap
    for open_member, path in planned:
        with open_member() as source, open(dest / path.name, "wb") as target:
            budget -= _copy_limited(source, target, budget, cap)


def _extract_zip(source, dest, cap):
    with zipfile.ZipFile(source) as archive:
        entries = archive.infolist()
        _check_entry_count(len(entries))
        members = [m for m in entries if not m.is_dir()]
        if len(members) > MAX_FILES:
            _reject("too_many_files", f"the archive holds {len(members)} files; at most {MAX_FILES}")
        if sum(m.file_size for m in members) > cap:  # declared sizes first; actual sizes are counted too
            _too_large(cap)
        names, planned = set(), []
        for member in members:
            path = _safe_name(member.filename)
            if (member.external_attr >> 16) & 0o170000 == 0o120000:
                _reject("unsafe_archive", f"{member.filename} is a symbolic link")
            if member.flag_bits & 0x1:
                _reject("invalid_archive", f"{member.filename} is encrypted; upload the archive without a password")
            _check_member_name(path, names)
            planned.append((lambda m=member: archive.open(m), path))
        _extract_planned(planned, dest, cap)


def _extract_tar(source, dest, cap):
    with tarfile.open(fileobj=source, mode="r:*") as archive:
        names, planned, declared = set(), [], 0
        # Checked while listing: walking the members of a compressed tar decompresses everything before
        # each header, so a bomb or a flood of entries is refused before the walk gets far.
        for count, member in enumerate(archive, start=1):
            _check_entry_count(count)
            if member.isdir():
                continue
            if len(planned) >= MAX_FILES:
                _reject("too_many_files", f"the archive holds more than {MAX_FILES} files")
            if member.issym() or member.islnk():
                _reject("unsafe_archive", f"{member.name} is a link")
            if not member.isfile():
                _reject("unsafe_archive", f"{member.name} is not a regular file")
            path = _safe_name(member.name)
            _check_member_name(path, names)
            declared += member.size  # a tar header's size frames the data that follows, so it cannot understate
            if declared > cap:
                _too_large(cap)
            planned.append((lambda m=member: archive.extractfile(m), path))
        _extract_planned(planned, dest, cap)


def _is_zip(name, source):
    # By name first: a plain tar whose last member is a zip ends with that zip's end record, so sniffing
    # the content alone would open the inner zip instead of refusing it as a nested archive.
    if name.lower().endswith(".zip"):
        return True
    magic = source.read(4)
    source.seek(0)
    return magic == b"PK\x03\x04"


def _stream(data):
    """An uploaded file (Django's UploadedFile, read from its start) or bytes, as a seekable binary stream."""
    if isinstance(data, bytes | bytearray):
        return io.BytesIO(data)
    data.seek(0)
    return data


def unpack_upload(files, dest, *, cap=None):
    """Writes the adapter's files into ``dest`` from uploaded (name, file) pairs (a file is an UploadedFile or
    bytes): one archive or the two files. Members inside one top-level folder are flattened. ``cap`` is the most
    bytes the upload may expand to (``upload_cap`` of the base model). Returns the names kept."""
    dest = Path(dest)
    cap = MAX_EXPANDED_BYTES if cap is None else cap
    if len(files) == 1 and files[0][0].lower().endswith(ARCHIVE_SUFFIXES):
        name, data = files[0]
        try:
            source = _stream(data)
            if _is_zip(name, source):
                _extract_zip(source, dest, cap)
            else:
                _extract_tar(source, dest, cap)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError,
                NotImplementedError):  # NotImplementedError: a zip compression method Python lacks
            _reject("invalid_archive", f"{name} could not be opened as a .zip, .tar, .tar.gz or .tgz archive: it "
                                       "may be damaged, cut short, or another kind of file. Upload the archive again, "
                                       "or upload adapter_config.json and adapter_model.safetensors themselves.")
    else:
        names = set()
        budget = cap
        for name, data in files:
            path = _safe_name(os.path.basename(name))
            _check_member_name(path, names)
            with open(dest / path.name, "wb") as target:
                budget -= _copy_limited(_stream(data), target, budget, cap)
    for extra in [p for p in dest.iterdir() if p.name in IGNORED]:
        extra.unlink()
    kept = sorted(p.name for p in dest.iterdir())
    unknown = sorted(set(kept) - {CONFIG_FILE, WEIGHTS_FILE})
    if unknown:
        _reject("unexpected_files", f"unexpected files {', '.join(unknown)}; upload only {CONFIG_FILE} and "
                f"{WEIGHTS_FILE}")
    return kept


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class UploadDir:
    """A private temporary directory for one upload, removed on exit."""

    def __enter__(self):
        self.path = Path(tempfile.mkdtemp(prefix="vajra-upload-"))
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)
