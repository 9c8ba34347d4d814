"""One Redis URL, three client spellings.

Operators set ``REDIS_URL`` (``redis://host:6379/0`` or ``unix:///path/redis.sock``). redis-py and
channels-redis read that as is; kombu/Celery only understands unix sockets as ``redis+socket://``.
Torch-free and Django-free: the web side and the runtime both use it.
"""

import os
from pathlib import Path
from urllib.parse import urlparse


def default_redis_url(var_dir):
    """The private Redis that ``make up`` and the test suite start when REDIS_URL is unset."""
    return f"unix://{Path(var_dir).resolve() / 'run' / 'redis.sock'}"


def redis_url_from_env(var_dir):
    return os.environ.get("REDIS_URL", "").strip() or default_redis_url(var_dir)


def celery_url(redis_url):
    parsed = urlparse(redis_url)
    if parsed.scheme == "unix":
        db = dict(p.split("=", 1) for p in parsed.query.split("&") if "=" in p).get("db")
        return f"redis+socket://{parsed.path}" + (f"?virtual_host={db}" if db else "")
    return redis_url


def socket_path(redis_url):
    """The unix socket path of a unix:// URL, else None."""
    parsed = urlparse(redis_url)
    return parsed.path if parsed.scheme == "unix" else None
