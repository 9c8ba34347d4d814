"""Rate limits counted in Redis (so every web process shares them): per key, per tenant, per login."""

import hashlib
import time

from django.conf import settings
from rest_framework.throttling import BaseThrottle

from vajra.redis import get_redis

from .principal import Principal

WINDOW_SECONDS = 60


def hit(bucket, limit, window=WINDOW_SECONDS):
    """Counts one event in a fixed window; returns seconds to wait (0 when allowed)."""
    return hit_all([(bucket, limit)], window)


def hit_all(buckets, window=WINDOW_SECONDS):
    """Counts one event in each of ``buckets`` ((name, limit) pairs), in one round trip to Redis; returns seconds to
    wait for the first window that allows it again (0 when every bucket allows it)."""
    slot = int(time.time() // window)
    pipe = get_redis().pipeline()
    for bucket, _ in buckets:
        key = f"vajra:rl:{bucket}:{slot}"
        pipe.incr(key)
        pipe.expire(key, window + 1)
    counts = pipe.execute()[::2]
    if all(count <= limit for count, (_, limit) in zip(counts, buckets, strict=True)):
        return 0
    return max(1, int((slot + 1) * window - time.time() + 0.999))


def rate_limit_wait(principal):
    """Counts one request for the principal's tenant (and key); seconds to wait, 0 when allowed."""
    tenant = principal.tenant
    buckets = [(f"tenant:{tenant.pk}", tenant.rate_limit_per_minute or settings.VAJRA_RATE_LIMIT_PER_TENANT)]
    if principal.is_key:
        buckets.append((f"key:{principal.api_key.prefix}", settings.VAJRA_RATE_LIMIT_PER_KEY))
    return hit_all(buckets)


class TenantRateThrottle(BaseThrottle):
    """Per-key and per-tenant requests per minute; 429 with Retry-After past either."""

    def allow_request(self, request, view):
        principal = request.auth
        self._wait = rate_limit_wait(principal) if isinstance(principal, Principal) else 0
        return self._wait == 0

    def wait(self):
        return self._wait


def _login_buckets(email, ip):
    """The counters a failed sign-in adds to, with the failures each allows: this account from this address,
    this account from anywhere (an attacker rotating addresses), this address against any account (one
    address trying many)."""
    email = email.strip().lower()

    def bucket(what):
        return "vajra:login:" + hashlib.sha256(what.encode()).hexdigest()[:32]
    return [(bucket(f"{email}|{ip}"), settings.VAJRA_LOGIN_MAX_FAILURES),
            (bucket(f"account|{email}"), settings.VAJRA_LOGIN_MAX_FAILURES_PER_ACCOUNT),
            (bucket(f"address|{ip}"), settings.VAJRA_LOGIN_MAX_FAILURES_PER_ADDRESS)]


def login_retry_after(email, ip):
    """Seconds before this email may try again from this address (0 if no counter has reached its limit)."""
    r = get_redis()
    buckets = _login_buckets(email, ip)
    pipe = r.pipeline()
    for bucket, _ in buckets:
        pipe.get(bucket)
        pipe.ttl(bucket)
    replies = pipe.execute()
    waits = [max(1, ttl) for (_, limit), failures, ttl in zip(buckets, replies[::2], replies[1::2], strict=True)
             if int(failures or 0) >= limit]
    return max(waits, default=0)


def login_failed(email, ip):
    pipe = get_redis().pipeline()
    for bucket, _ in _login_buckets(email, ip):
        pipe.incr(bucket)
        pipe.expire(bucket, settings.VAJRA_LOGIN_LOCKOUT_SECONDS)
    pipe.execute()


def login_succeeded(email, ip):
    """The right password clears this account's counters; the address's count against other accounts stays."""
    account_buckets = [bucket for bucket, _ in _login_buckets(email, ip)[:2]]
    get_redis().delete(*account_buckets)
