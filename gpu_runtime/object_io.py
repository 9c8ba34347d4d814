"""Small reads and writes of object storage by URI for training: ``file://`` (or a plain path) and ``s3://``
(boto3, endpoint from ``VAJRA_S3_ENDPOINT_URL``). Adapter fetches go through adapter_store.ObjectStore.

A folder is written whole or not at all as readers see it: locally into ``<name>.partial`` then renamed; on
S3 the file named last in ``files`` (a marker such as ``state.json``) is uploaded last, and readers treat a
folder without it as unfinished.
"""

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

_s3_client = None


def _s3():
    global _s3_client
    if _s3_client is None:
        import boto3

        _s3_client = boto3.client("s3", endpoint_url=os.environ.get("VAJRA_S3_ENDPOINT_URL") or None)
    return _s3_client


def _split(uri):
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return "file", Path(parsed.path if parsed.scheme else uri)
    if parsed.scheme == "s3":
        return "s3", (parsed.netloc, parsed.path.strip("/"))
    raise ValueError(f"object storage scheme {parsed.scheme!r} is not supported (file:// or s3://)")


def join(uri, *parts):
    return uri.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts)


def read_bytes(uri, max_bytes=None):
    kind, where = _split(uri)
    if kind == "file":
        if max_bytes is not None and where.stat().st_size > max_bytes:
            raise ValueError(f"{uri} is over {max_bytes} bytes")
        return where.read_bytes()
    bucket, key = where
    body = _s3().get_object(Bucket=bucket, Key=key)["Body"]
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
    response = _s3().get_object(Bucket=bucket, Key=key)
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
        _s3().put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)


def subfolders(uri):
    """Names of the folders directly under ``uri`` (empty when it does not exist)."""
    kind, where = _split(uri)
    if kind == "file":
        if not where.is_dir():
            return []
        return sorted(p.name for p in where.iterdir() if p.is_dir() and not p.name.endswith(".partial"))
    bucket, prefix = where
    pages = _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/", Delimiter="/")
    return sorted(cp["Prefix"][len(prefix) + 1:].strip("/") for page in pages for cp in page.get("CommonPrefixes", []))


def exists(uri):
    kind, where = _split(uri)
    if kind == "file":
        return where.exists()
    bucket, key = where
    try:
        _s3().head_object(Bucket=bucket, Key=key)
    except Exception:  # botocore's ClientError (404) or no access: not there for us
        return False
    return True
