"""Reading a file a tenant names by URL, without letting the URL reach what it must not. The one fetcher of the
platform: adapter imports (adapters.url_import) and URL datasets (training.dataset_fetch) both read through it.

- ``https://`` from hosts the operator allows. The host is resolved once and the connection goes to the checked
  address (TLS still verifies the host's name), so a second DNS answer cannot swap in another address. Loopback,
  private, link-local and other non-global addresses are refused unless the operator allows that host by name for
  private addresses too. Redirects are followed by hand, each target checked as the first URL was. ``http://`` is
  refused: what arrives must be what the server sent.
- ``s3://`` from buckets the operator allows (endpoint ``VAJRA_S3_ENDPOINT_URL``), and ``file://`` where the caller
  has already checked the path against the operator's locations.

Every body is counted while it streams and cut off past the cap, whatever Content-Length said; every read waits
at most the idle timeout and the whole fetch at most the total timeout.
"""

import http.client
import ipaddress
import socket
import ssl
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from gpu_runtime import object_io

BLOCK_BYTES = 64 << 10
MAX_REDIRECTS = 5
REDIRECTS = {301, 302, 303, 307, 308}


class FetchRefused(Exception):
    """Why a URL was not read, in words the tenant can act on; ``status`` is the HTTP status to answer with."""

    def __init__(self, code, message, status=400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class Allow:
    """What an operator lets tenants fetch: host names or IP addresses (``*.example.com`` for any subdomain),
    ``s3://bucket`` entries, and the hosts that may resolve to non-global addresses."""

    hosts: tuple = ()
    buckets: tuple = ()
    private_hosts: tuple = ()

    @classmethod
    def from_entries(cls, entries, private_hosts=()):
        hosts, buckets = [], []
        for entry in entries:
            if entry.startswith("s3://"):
                buckets.append(entry[len("s3://"):].strip("/"))
            else:
                hosts.append(entry.lower())
        return cls(tuple(hosts), tuple(buckets), tuple(h.lower() for h in private_hosts))

    def host_allowed(self, host):
        return any(host == entry or (entry.startswith("*.") and host.endswith(entry[1:])) for entry in self.hosts)

    def __bool__(self):
        return bool(self.hosts or self.buckets)


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    idle_timeout_s: float = 30.0
    total_timeout_s: float = 600.0
    ca_file: str | None = None  # a private CA's bundle; None: the system's


def check_url(url, allow):
    """The URL split, when its scheme and host or bucket are allowed; no network is touched."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a malformed port raises here)
    except ValueError:
        raise FetchRefused("invalid_url", f"{url[:200]!r} is not a valid URL.") from None
    if parts.scheme == "http":
        raise FetchRefused("insecure_url", f"{url} is plain http://; use https:// so that what arrives is what the "
                                           "server sent.")
    if parts.scheme == "https":
        host = (parts.hostname or "").lower()
        if not host or parts.username or parts.password:
            raise FetchRefused("invalid_url", f"{url} names no host, or carries credentials; name a plain host.")
        if not allow.host_allowed(host):
            raise FetchRefused("url_host_not_allowed", f"{host} is not a host this platform imports from"
                               f"{_allowed_list(allow.hosts)}.")
        return parts
    if parts.scheme == "s3":
        if not parts.netloc or not parts.path.strip("/"):
            raise FetchRefused("invalid_url", f"{url} must be s3://bucket/key naming one object.")
        if parts.netloc not in allow.buckets:
            raise FetchRefused("url_bucket_not_allowed", f"bucket {parts.netloc} is not one this platform imports "
                               f"from{_allowed_list(allow.buckets)}.")
        return parts
    raise FetchRefused("unsupported_url", f"URLs must be https:// or s3://, not {parts.scheme or 'no scheme'}.")


def _allowed_list(entries):
    return f" (allowed: {', '.join(entries)})" if entries else ""


def resolve(host, port, allow):
    """The addresses ``host`` resolves to, all of them global unless the operator allows the host's private ones."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise FetchRefused("url_unreachable", f"{host} does not resolve.") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if host not in allow.private_hosts:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not ip.is_global or ip.is_multicast:
                raise FetchRefused("url_private_address", f"{host} resolves to {address}, a loopback, private or "
                                   "link-local address this platform does not fetch from.")
    return addresses


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address resolved and checked beforehand; the certificate is checked against the host name."""

    def __init__(self, host, port, *, address, context, timeout):
        super().__init__(host, port, context=context, timeout=timeout)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _Clock:
    def __init__(self, limits, url):
        self.limits, self.url = limits, url
        self.deadline = time.monotonic() + limits.total_timeout_s

    def timeout(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.expired()
        return min(self.limits.idle_timeout_s, left)

    def expired(self):
        return FetchRefused("url_timeout", f"{self.url} did not arrive within {self.limits.total_timeout_s:g} s "
                            f"(or stalled for {self.limits.idle_timeout_s:g} s); the source is too slow.", status=400)


def _too_large(url, max_bytes):
    return FetchRefused("url_too_large", f"{url} is over {max_bytes} bytes", status=413)


def _copy(read, target, *, url, max_bytes, clock, on_progress, total):
    received = 0
    while True:
        block = read(clock)
        if not block:
            return received
        received += len(block)
        if received > max_bytes:
            raise _too_large(url, max_bytes)
        target.write(block)
        if on_progress:
            on_progress(received, total)


def _open_https(url, allow, limits, clock):
    """The response to GET ``url`` after at most MAX_REDIRECTS redirects, each to an allowed host."""
    context = ssl.create_default_context(cafile=limits.ca_file)
    for _ in range(MAX_REDIRECTS + 1):
        parts = check_url(url, allow)
        host, port = parts.hostname.lower(), parts.port or 443
        address = resolve(host, port, allow)[0]
        connection = _PinnedHTTPSConnection(host, port, address=address, context=context, timeout=clock.timeout())
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            connection.request("GET", path, headers={"User-Agent": "vajra-import", "Accept-Encoding": "identity"})
            sock = connection.sock  # a response that ends with the connection takes it off ``connection``
            response = connection.getresponse()
        except BaseException:
            connection.close()
            raise
        if response.status in REDIRECTS:
            location = response.getheader("Location")
            connection.close()
            if not location:
                raise FetchRefused("url_http_error", f"{url} redirected without saying where.")
            target = urljoin(url, location)
            try:
                check_url(target, allow)
            except FetchRefused as exc:
                raise FetchRefused("url_redirect_refused",
                                   f"{url} redirects to {target[:300]}: {exc.message}") from None
            url = target
            continue
        if response.status != 200:
            connection.close()
            raise FetchRefused("url_http_error", f"{url} answered HTTP {response.status} {response.reason}.")
        return connection, sock, response
    raise FetchRefused("url_redirect_refused", f"{url} redirects more than {MAX_REDIRECTS} times.")


def _fetch_https(url, target, allow, limits, on_progress):
    clock = _Clock(limits, url)
    connection, sock, response = _open_https(url, allow, limits, clock)
    with closing(connection), closing(response):
        total = response.getheader("Content-Length")
        total = int(total) if total and total.isdigit() else None
        if total is not None and total > limits.max_bytes:
            raise _too_large(url, limits.max_bytes)

        def read(clock):
            sock.settimeout(clock.timeout())
            return response.read1(BLOCK_BYTES)

        return _copy(read, target, url=url, max_bytes=limits.max_bytes, clock=clock, on_progress=on_progress,
                     total=total)


def _fetch_object(url, target, limits, on_progress):
    """s3:// or file:// through object_io, streamed with the same cap and deadline."""
    clock = _Clock(limits, url)
    try:
        stream, total = object_io.open_read(url)
    except (OSError, ValueError) as exc:
        raise FetchRefused("url_unreachable", f"cannot read {url}: {exc}") from None
    except Exception as exc:  # botocore's ClientError: no such bucket or key, no access
        raise FetchRefused("url_unreachable", f"cannot read {url}: {exc}") from None
    with stream:
        if total is not None and total > limits.max_bytes:
            raise _too_large(url, limits.max_bytes)

        def read(clock):
            clock.timeout()
            return stream.read(BLOCK_BYTES)

        return _copy(read, target, url=url, max_bytes=limits.max_bytes, clock=clock, on_progress=on_progress,
                     total=total)


def fetch(url, target, *, allow, limits, on_progress=None):
    """Writes the body at ``url`` into the binary file ``target``; returns its size. ``on_progress(received,
    total)`` follows the transfer (``total`` is None when the source did not say). Refusals raise FetchRefused."""
    scheme = urlsplit(url).scheme
    try:
        if scheme == "file":  # the caller checked the path against the operator's locations
            return _fetch_object(url, target, limits, on_progress)
        check_url(url, allow)
        if scheme == "s3":
            return _fetch_object(url, target, limits, on_progress)
        return _fetch_https(url, target, allow, limits, on_progress)
    except FetchRefused:
        raise
    except TimeoutError:
        raise _Clock(limits, url).expired() from None
    except ssl.SSLError as exc:
        raise FetchRefused("url_unreachable",
                           f"TLS with {urlsplit(url).hostname} failed: {exc.reason or exc}.") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchRefused("url_unreachable", f"cannot read {url}: {exc or type(exc).__name__}.") from None


def read_bytes(url, *, max_bytes, allow=Allow()):
    """The body at ``url`` as bytes, for small files (a dataset), within ``max_bytes``."""
    import io

    buffer = io.BytesIO()
    fetch(url, buffer, allow=allow, limits=Limits(max_bytes=max_bytes))
    return buffer.getvalue()


def fetch_to_path(url, path, **kwargs):
    with open(Path(path), "wb") as target:
        return fetch(url, target, **kwargs)
