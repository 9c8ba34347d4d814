"""The web side's Redis client (rate limits, health), from settings.REDIS_URL, over hardened connections
(gpu_runtime/redis_io.py)."""

import functools

from django.conf import settings

from gpu_runtime.redis_io import client_from_url


@functools.cache
def _client(url):
    return client_from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)


def get_redis():
    return _client(settings.REDIS_URL)
