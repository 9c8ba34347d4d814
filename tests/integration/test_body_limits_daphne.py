"""Request bodies under the real server: daphne refuses an oversized body from its headers or its counted chunks
(413 in the one error shape, before the body is read), and hands an accepted body to Django whole."""

import hashlib
import json
import socket

import httpx
import pytest

from tests.factories import create_key
from tests.processes import start_daphne
from training.models import Dataset

pytestmark = pytest.mark.slow


@pytest.fixture
def server(transactional_db, tmp_path):
    proc, url = start_daphne(tmp_path / "daphne.log", VAJRA_VAR_DIR=str(tmp_path / "var"))
    yield url
    proc.stop()


def _raw(url, head, body_chunks=()):
    """Sends the request head (and body chunks, as far as the server lets them in); returns the raw response."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head)
        try:
            for chunk in body_chunks:
                s.sendall(chunk)
        except OSError:  # the server answered and closed: the rest is never sent
            pass
        response = b""
        while data := s.recv(65536):
            response += data
    return response


def _error_of(response):
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), response[:300]
    assert b"x-request-id: req_" in head
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "body_too_large"
    return error


def test_oversized_bodies_are_refused_before_they_are_read(server, unchanged_db):
    with unchanged_db():
        # 300 MB declared to the upload route (256 MiB), nothing sent: the answer comes from the headers alone.
        error = _error_of(_raw(server, b"POST /api/v1/adapters HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
                                       b"300000000\r\nContent-Type: multipart/form-data; boundary=x\r\n\r\n"))
        assert "268435456" in error["message"]
        # Chunked, no Content-Length: counted while it arrives, refused where it crosses 2 MiB.
        chunk = b"40000\r\n" + b"a" * 0x40000 + b"\r\n"
        error = _error_of(_raw(server, b"POST /v1/models/x/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: "
                                       b"chunked\r\nContent-Type: application/json\r\n\r\n", [chunk] * 64))
        assert "2097152" in error["message"]


def test_accepted_body_reaches_django_whole(server, alice, acme):
    line = json.dumps({"prompt": "p" * 200, "completion": "c" * 200}).encode() + b"\n"
    data = line * (3_000_000 // len(line))  # 3 MB: many body chunks, spooled to disk by twisted
    key = create_key(alice, acme)[1]
    response = httpx.post(f"{server}/api/v1/datasets", files={"file": ("big.jsonl", data)},
                          headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert response.status_code == 201, response.text
    dataset = Dataset.objects.get(id=response.json()["id"])
    assert (dataset.size_bytes, dataset.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    # The same file chunked (no Content-Length): counted, within the limit, so it reaches the API, which answers
    # in the error shape (Django parses multipart only with a Content-Length).
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="c.jsonl"\r\n\r\n'
    parts = [head, *(data[i:i + 100_000] for i in range(0, len(data), 100_000)), b"\r\n--b--\r\n"]
    chunked = httpx.post(f"{server}/api/v1/datasets", content=iter(parts),
                         headers={"Authorization": f"Bearer {key}", "Content-Type": "multipart/form-data; boundary=b"},
                         timeout=60)
    assert chunked.status_code == 400 and chunked.json()["error"]["code"] == "no_file", chunked.text
