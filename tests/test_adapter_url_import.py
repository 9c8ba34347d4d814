# ruff: noqa: F811 (the fixtures imported from test_adapters_api are named as arguments)
"""Adapters in from a URL: https:// from a local TLS server (a threaded http.server) and s3:// from moto's server.
Accepted imports are fetched by the control task's service and stored exactly as an upload; refusals are 4xx in the
one error shape. What the request can check (scheme, allow list, the host's addresses) writes nothing; what only
the fetch finds (redirects elsewhere, oversize or slow bodies, a bad adapter) fails the import with its reason and
writes no adapter, version or file."""

import hashlib
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from adapters.models import Adapter, AdapterImport, AdapterVersion
from adapters.url_import import TASK_ADAPTER_IMPORT, adapter_import_run
from gpu_runtime import object_io
from gpu_runtime.adapter_validation import WEIGHTS_FILE
from tests.adapter_files import in_folder, stored_files, zip_bytes
from tests.factories import create_key, key_client
from tests.helpers import ADAPTERS_URL as URL
from tests.helpers import assert_error

pytestmark = pytest.mark.usefixtures("adapter_storage")

URL = "/api/v1/adapter-imports"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and localhost, trusted through VAJRA_URL_FETCH_CA_FILE."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "cert.pem")], check=True, capture_output=True)
    return folder / "cert.pem", folder / "key.pem"


class Site:
    """What the local HTTPS server answers, by path: (status, headers, body chunks, seconds between chunks)."""

    def __init__(self):
        self.routes = {}

    def add(self, path, body=b"", status=200, headers=None, chunks=None, pause=0.0, length=True):
        headers = dict(headers or {})
        if length and chunks is None:
            headers.setdefault("Content-Length", str(len(body)))
        self.routes[path] = (status, headers, chunks if chunks is not None else [body], pause)


@pytest.fixture
def site(certificate):
    site = Site()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # a body without Content-Length runs until the server closes

        def do_GET(self):
            status, headers, chunks, pause = site.routes.get(self.path, (404, {"Content-Length": "0"}, [], 0))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            try:
                for chunk in chunks:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    time.sleep(pause)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # the client cut the body off

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, certificate))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    site.port = server.server_address[1]
    site.url = f"https://127.0.0.1:{site.port}"
    yield site
    server.shutdown()
    server.server_close()


@pytest.fixture
def allowed(settings, certificate):
    """The operator allows 127.0.0.1 by name, private address included, and trusts the test's certificate."""
    settings.VAJRA_ADAPTER_URL_ALLOW = ["127.0.0.1", "localhost", "s3://models"]
    settings.VAJRA_ADAPTER_URL_ALLOW_PRIVATE = ["127.0.0.1"]
    settings.VAJRA_URL_FETCH_CA_FILE = str(certificate[0])
    settings.VAJRA_ADAPTER_URL_TIMEOUT_S = 30.0
    settings.VAJRA_ADAPTER_URL_IDLE_TIMEOUT_S = 10.0
    return settings


@pytest.fixture
def sent(monkeypatch):
    from vajra.celery import app

    calls = []
    monkeypatch.setattr(app, "send_task", lambda name, args=None, **kw: calls.append((name, args)))
    return calls


@pytest.fixture
def start(alice_api, tiny_llama, sent, django_capture_on_commit_callbacks):
    """POST an import; when accepted, run the control task's service as the worker would. Returns the response
    and the import's JSON afterwards (None when refused)."""
    def run(url, name="support-bot", **fields):
        with django_capture_on_commit_callbacks(execute=True):
            response = alice_api.post(URL, {"name": name, "base_model": "tiny-llama", "url": url, **fields},
                                      format="json")
        if response.status_code != 202:
            assert sent == []
            return response, None
        import_id = response.json()["id"]
        assert sent[-1] == (TASK_ADAPTER_IMPORT, [import_id])
        adapter_import_run(import_id=import_id)
        return response, alice_api.get(f"{URL}/{import_id}").json()
    return run


def nothing_stored(adapter_storage):
    assert Adapter.objects.count() == 0 and AdapterVersion.objects.count() == 0
    assert stored_files(adapter_storage) == []


def failed_with(row, code, status):
    assert row["status"] == "failed" and row["model"] is None, row
    assert set(row["error"]) == {"message", "type", "param", "code"} and row["error"]["message"], row
    assert (row["error"]["code"], row["error"]["param"]) == (code, "url"), row
    assert row["error"]["type"] == "invalid_request_error"
    assert 400 <= status < 500


# ---- success ---------------------------------------------------------------------------------------------------

def test_https_import_becomes_a_version_like_an_upload(start, site, allowed, peft_v1, adapter_storage, alice_api):
    archive = zip_bytes(in_folder(peft_v1))
    site.add("/adapters/support-bot.zip", archive)
    response, row = start(f"{site.url}/adapters/support-bot.zip", description="From the mirror")
    assert response.json()["status"] == "queued"
    assert row["status"] == "succeeded" and row["model"] == "support-bot@v1" and row["error"] is None, row
    assert row["bytes_received"] == len(archive)
    version = AdapterVersion.objects.get()
    assert version.sha256 == hashlib.sha256(peft_v1[WEIGHTS_FILE]).hexdigest() and version.rank == 4
    assert (adapter_storage / version.storage_key / WEIGHTS_FILE).read_bytes() == peft_v1[WEIGHTS_FILE]
    assert version.adapter.description == "From the mirror"
    assert alice_api.get(URL).json()["data"][0]["id"] == row["id"]


def test_a_redirect_to_an_allowed_host_is_followed(start, site, allowed, peft_v1):
    site.add("/a.zip", zip_bytes(in_folder(peft_v1)))
    site.add("/moved.zip", status=302, headers={"Location": "/a.zip"})
    _, row = start(f"{site.url}/moved.zip")
    assert row["status"] == "succeeded", row


def test_s3_import_from_an_allowed_bucket(start, allowed, peft_v1, monkeypatch, adapter_storage, unchanged_db):
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.processes import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for name, value in {"VAJRA_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
                            "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(object_io, "_clients", {})
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="models")
        s3.create_bucket(Bucket="elsewhere")
        s3.put_object(Bucket="models", Key="team/support-bot.zip", Body=zip_bytes(in_folder(peft_v1)))
        with unchanged_db():
            assert_error(start("s3://elsewhere/team/support-bot.zip")[0], 400, code="url_bucket_not_allowed",
                         param="url")
        _, missing = start("s3://models/team/nothing.zip", name="other")
        failed_with(missing, "url_unreachable", 400)
        _, row = start("s3://models/team/support-bot.zip")
        assert row["status"] == "succeeded" and row["model"] == "support-bot@v1", row
        assert AdapterVersion.objects.get().sha256 == hashlib.sha256(peft_v1[WEIGHTS_FILE]).hexdigest()
    finally:
        server.stop()


# ---- refused when asked: nothing written ------------------------------------------------------------------------

def test_the_feature_is_off_until_an_operator_allows_hosts(start, site, unchanged_db, settings):
    assert settings.VAJRA_ADAPTER_URL_ALLOW == []
    with unchanged_db():
        error = assert_error(start(f"{site.url}/a.zip")[0], 400, code="url_import_disabled", param="url")
    assert "VAJRA_ADAPTER_URL_ALLOW" in error["message"]


@pytest.mark.parametrize("url, code", [
    ("http://127.0.0.1/a.zip", "insecure_url"),
    ("https://example.com/a.zip", "url_host_not_allowed"),
    ("ftp://127.0.0.1/a.zip", "unsupported_url"),
    ("file:///etc/passwd", "unsupported_url"),
    ("https://user:pw@127.0.0.1/a.zip", "invalid_url"),
    ("https://127.0.0.1:99999/a.zip", "invalid_url"),
    ("https://127.0.0.1/adapter/", "url_not_an_archive"),
    ("https://127.0.0.1/adapter_model.bin", "url_not_an_archive"),
])
def test_urls_refused_when_asked(start, allowed, url, code, unchanged_db):
    with unchanged_db():
        assert_error(start(url)[0], 400, code=code, param="url")


def test_a_host_resolving_to_a_private_address_is_refused_unless_allowed_by_name(start, site, allowed, unchanged_db):
    allowed.VAJRA_ADAPTER_URL_ALLOW_PRIVATE = []
    with unchanged_db():
        error = assert_error(start(f"{site.url}/a.zip")[0], 400, code="url_private_address", param="url")
        assert "127.0.0.1" in error["message"]
        assert_error(start(f"https://localhost:{site.port}/a.zip")[0], 400, code="url_private_address")


def test_other_tenants_imports_are_404(start, site, allowed, peft_v1, charlie, contoso, unchanged_db):
    site.add("/a.zip", zip_bytes(in_folder(peft_v1)))
    _, row = start(f"{site.url}/a.zip")
    charlie_api = key_client(create_key(charlie, contoso)[1])
    with unchanged_db():
        assert_error(charlie_api.get(f"{URL}/{row['id']}"), 404)
    assert charlie_api.get(URL).json()["data"] == []


def test_a_key_without_the_adapters_scope_cannot_import(alice, acme, allowed, site, tiny_llama, unchanged_db):
    client = key_client(create_key(alice, acme, scopes=("infer",))[1])
    with unchanged_db():
        assert_error(client.post(URL, {"name": "x", "base_model": "tiny-llama", "url": f"{site.url}/a.zip"},
                                 format="json"), 403)


# ---- refused while fetching: the import fails, nothing else is written ------------------------------------------

def test_a_redirect_to_a_host_not_allowed_is_refused(start, site, allowed, peft_v1, adapter_storage):
    site.add("/a.zip", zip_bytes(in_folder(peft_v1)))
    site.add("/moved.zip", status=302, headers={"Location": "https://example.com/a.zip"})
    _, row = start(f"{site.url}/moved.zip")
    failed_with(row, "url_redirect_refused", 400)
    assert "example.com" in row["error"]["message"]
    nothing_stored(adapter_storage)


def test_a_redirect_to_a_private_address_is_refused(start, site, allowed, peft_v1, adapter_storage):
    site.add("/a.zip", zip_bytes(in_folder(peft_v1)))  # localhost is allowed, but not its loopback address
    site.add("/moved.zip", status=307, headers={"Location": f"https://localhost:{site.port}/a.zip"})
    _, row = start(f"{site.url}/moved.zip")
    failed_with(row, "url_private_address", 400)
    nothing_stored(adapter_storage)


def test_a_declared_oversize_body_is_refused_before_reading(start, site, allowed, adapter_storage):
    allowed.VAJRA_MAX_UPLOAD_BYTES = 1 << 20
    site.add("/big.zip", headers={"Content-Length": str(50 << 20)}, chunks=[b"PK\x03\x04"], length=False)
    _, row = start(f"{site.url}/big.zip")
    failed_with(row, "url_too_large", 413)
    assert row["bytes_received"] == 0
    nothing_stored(adapter_storage)


def test_an_undeclared_oversize_body_is_cut_off_while_streaming(start, site, allowed, adapter_storage):
    allowed.VAJRA_MAX_UPLOAD_BYTES = 1 << 20
    site.add("/endless.zip", chunks=[b"\0" * (64 << 10)] * 64, length=False)  # 4 MiB, no Content-Length
    _, row = start(f"{site.url}/endless.zip")
    failed_with(row, "url_too_large", 413)
    assert AdapterImport.objects.get().error_status == 413
    nothing_stored(adapter_storage)


def test_a_content_length_that_understates_the_body_is_not_trusted(start, site, allowed, peft_v1, adapter_storage):
    archive = zip_bytes(in_folder(peft_v1))
    site.add("/liar.zip", headers={"Content-Length": "100"}, chunks=[archive], length=False)
    _, row = start(f"{site.url}/liar.zip")
    failed_with(row, "invalid_archive", 400)  # only the 100 declared bytes are read: a cut-short archive
    assert row["bytes_received"] == 100
    nothing_stored(adapter_storage)


def test_a_slow_body_times_out(start, site, allowed, adapter_storage):
    allowed.VAJRA_ADAPTER_URL_TIMEOUT_S = 1.0
    allowed.VAJRA_ADAPTER_URL_IDLE_TIMEOUT_S = 0.5
    site.add("/slow.zip", chunks=[b"P"] * 40, pause=0.2, length=False)  # each read is quick, the whole is not
    _, row = start(f"{site.url}/slow.zip")
    failed_with(row, "url_timeout", 400)
    nothing_stored(adapter_storage)


def test_an_http_error_fails_the_import(start, site, allowed, adapter_storage):
    _, row = start(f"{site.url}/missing.zip")
    failed_with(row, "url_http_error", 400)
    assert "404" in row["error"]["message"]


def test_an_adapter_the_validator_refuses_fails_with_its_code(start, site, allowed, bad_adapters, adapter_storage):
    site.add("/rank.zip", zip_bytes([(f"x/{name}", data) for name, data in bad_adapters["bad_rank"]]))
    _, row = start(f"{site.url}/rank.zip")
    assert row["status"] == "failed" and row["error"]["code"] == "bad_rank", row
    nothing_stored(adapter_storage)


# ---- the dashboard ----------------------------------------------------------------------------------------------

def test_the_adapters_page_imports_and_shows_the_status(alice_client, tiny_llama, site, allowed, peft_v1, sent,
                                                        django_capture_on_commit_callbacks):
    site.add("/a.zip", zip_bytes(in_folder(peft_v1)))
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post("/adapter-imports/", {"import-name": "support-bot", "import-base_model":
                                                           "tiny-llama", "import-url": f"{site.url}/a.zip"})
    assert response.status_code == 302, response.content[:500]
    row = AdapterImport.objects.get()
    assert sent == [(TASK_ADAPTER_IMPORT, [row.id])]
    assert b"queued" in alice_client.get("/adapters/").content
    adapter_import_run(import_id=row.id)
    page = alice_client.get("/adapters/").content.decode()
    assert "succeeded" in page and 'href="/adapters/support-bot/"' in page


def test_the_adapters_page_shows_refusals_and_writes_nothing(alice_client, tiny_llama, allowed, sent, unchanged_db):
    with unchanged_db():
        response = alice_client.post("/adapter-imports/", {"import-name": "support-bot", "import-base_model":
                                                           "tiny-llama", "import-url": "http://127.0.0.1/a.zip"})
    assert response.status_code == 400 and b"https://" in response.content and sent == []


def test_the_adapters_page_says_when_imports_are_off(alice_client, tiny_llama):
    assert b"Importing from URLs is off on this platform" in alice_client.get("/adapters/").content
