"""The client's address, the one answer that rate limits, the login lockout, the signup limit and the audit log
all use.

The peer that web sees (REMOTE_ADDR) is the client unless it is one of VAJRA_TRUSTED_PROXIES. Only then is
X-Forwarded-For read, from the right: each trusted proxy appends the address it received the request from, so the
right-most entry that is not a trusted proxy is the client; whatever lies left of it was written by the client
and proves nothing.
"""

import ipaddress

from django.conf import settings


def parse_ip(raw):
    """An address as written in REMOTE_ADDR or one X-Forwarded-For entry (``[::1]:443`` and ``1.2.3.4:80``
    included), or None when it is not one."""
    raw = raw.strip()
    if raw.startswith("[") and "]" in raw:
        raw = raw[1:raw.index("]")]
    elif raw.count(":") == 1:
        raw = raw.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


def is_trusted_proxy(address):
    return any(address in network for network in settings.VAJRA_TRUSTED_PROXIES)


def client_address(peer, forwarded_for=""):
    """The client's address given the peer's and the X-Forwarded-For header; "" when the peer is not an
    address at all (a unix socket)."""
    address = parse_ip(peer or "")
    if address is None:
        return ""
    if not is_trusted_proxy(address):
        return str(address)
    hops = [hop for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        forwarded = parse_ip(hop)
        if forwarded is None:  # not written by a proxy we trust: the last trusted hop is all we know
            break
        address = forwarded
        if not is_trusted_proxy(address):
            break
    return str(address)


def client_ip(request):
    return client_address(request.META.get("REMOTE_ADDR", ""), request.META.get("HTTP_X_FORWARDED_FOR", ""))
