"""The web side's Redis client (rate limits, health), from settings.REDIS_URL."""

import functools

import redis
from django.conf import settings


@functools.cache
def _client(url):
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)


def get_redis():
    return _client(settings.REDIS_URL)
