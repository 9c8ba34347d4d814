"""The runtime's one client of object storage, by URI: ``file://`` (or a plain path: the Django storage's
filesystem by default) and ``s3://bucket/prefix`` on any S3-compatible store (AWS, MinIO, R2, GCS interop)
through boto3, with the endpoint from ``VAJRA_S3_ENDPOINT_URL`` and credentials from the standard AWS variables.
Adapter fetches (the adapter store), training's datasets, checkpoints and results, and the web's dataset URLs all
go through it.

A folder is written whole or not at all as readers see it: locally into ``<name>.partial`` then renamed; on
S3 the file named last in ``files`` (a marker such as ``state.json``) is uploaded last, and readers treat a
folder without it as unfinished. A fetched folder replaces its local copy whole the same way.
"""

import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

_clients = {}  # S3 endpoint URL (None: AWS) -> boto3 client
_clients_lock = threading.Lock()


class UnsupportedStorage(ValueError):
    """A URI whose scheme is neither file:// nor s3://."""


class ObjectNotFound(FileNotFoundError):
    """Nothing stored at the URI."""


def s3_client():
    """The S3 client for the endpoint ``VAJRA_S3_ENDPOINT_URL`` names now (one per endpoint, made once)."""
    endpoint = os.environ.get("VAJRA_S3_ENDPOINT_URL") or None
    with _clients_lock:
        if endpoint not in _clients:
            import boto3

            _clients[endpoint] = boto3.client("s3", endpoint_url=endpoint)
        return _clients[endpoint]


def _split(uri):
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return "file", Path(parsed.path if parsed.scheme else uri)
    if parsed.scheme == "s3":
        return "s3", (parsed.netloc, parsed.path.strip("/"))
    raise UnsupportedStorage(f"object storage scheme {parsed.scheme!r} is not supported (file:// or s3://)")


def join(uri, *parts):
    return uri.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts)


def read_bytes(uri, max_bytes=None):
    kind, where = _split(uri)
    if kind == "file":
        if max_bytes is not None and where.stat().st_size > max_bytes:
            raise ValueError(f"{uri} is over {max_bytes} bytes")
        return where.read_bytes()
    bucket, key = where
    body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    data = body.read(None if max_bytes is None else max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"{uri} is over {max_bytes} bytes")
    return data


def open_read(uri):
    """(a binary stream, its size in bytes or None) of the object at ``uri``, read a block at a time by the caller."""
    kind, where = _split(uri)
    if kind == "file":
        stream = open(where, "rb")
        return stream, os.fstat(stream.fileno()).st_size
    bucket, key = where
    response = s3_client().get_object(Bucket=bucket, Key=key)
    return response["Body"], response.get("ContentLength")


def write_folder(uri, files):
    """Writes ``files`` ({name: bytes}, the completion marker last) as the folder ``uri``, replacing it."""
    kind, where = _split(uri)
    if kind == "file":
        tmp = where.with_name(where.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        shutil.rmtree(where, ignore_errors=True)
        tmp.rename(where)
        return
    bucket, prefix = where
    for name, data in files.items():
        s3_client().put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)


def subfolders(uri):
    """Names of the folders directly under ``uri`` (empty when it does not exist)."""
    kind, where = _split(uri)
    if kind == "file":
        if not where.is_dir():
            return []
        return sorted(p.name for p in where.iterdir() if p.is_dir() and not p.name.endswith(".partial"))
    bucket, prefix = where
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/", Delimiter="/")
    return sorted(cp["Prefix"][len(prefix) + 1:].strip("/") for page in pages for cp in page.get("CommonPrefixes", []))


def exists(uri):
    kind, where = _split(uri)
    if kind == "file":
        return where.exists()
    bucket, key = where
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
    except Exception:  # botocore's ClientError (404) or no access: not there for us
        return False
    return True


def fetch_folder(uri, dest):
    """Copies the files directly in the folder ``uri`` (not its subfolders) to the local folder ``dest``, which is
    replaced whole: a reader never sees half a copy. Raises ObjectNotFound when the folder holds no file."""
    dest = Path(dest)
    kind, where = _split(uri)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if kind == "file":
        if not where.is_dir():
            raise ObjectNotFound(f"no files at {uri}")
        shutil.copytree(where, tmp)
    else:
        bucket, prefix = where
        client = s3_client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        files = [k for k in keys if "/" not in k[len(prefix) + 1:]]
        if not files:
            raise ObjectNotFound(f"no files at {uri}")
        tmp.mkdir(parents=True)
        for key in files:
            client.download_file(bucket, key, str(tmp / key.rsplit("/", 1)[-1]))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
