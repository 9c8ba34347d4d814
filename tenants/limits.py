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
    slot = int(time.time() // window)
    key = f"vajra:rl:{bucket}:{slot}"
    pipe = get_redis().pipeline()
    pipe.incr(key)
    pipe.expire(key, window + 1)
    count, _ = pipe.execute()
    if count <= limit:
        return 0
    return max(1, int((slot + 1) * window - time.time() + 0.999))


def rate_limit_wait(principal):
    """Counts one request for the principal's tenant (and key); seconds to wait, 0 when allowed."""
    tenant = principal.tenant
    tenant_limit = tenant.rate_limit_per_minute or settings.VAJRA_RATE_LIMIT_PER_TENANT
    waits = [hit(f"tenant:{tenant.pk}", tenant_limit)]
    if principal.is_key:
        waits.append(hit(f"key:{principal.api_key.prefix}", settings.VAJRA_RATE_LIMIT_PER_KEY))
    return max(waits)


class TenantRateThrottle(BaseThrottle):
    """Per-key and per-tenant requests per minute; 429 with Retry-After past either."""

    def allow_request(self, request, view):
        principal = request.auth
        self._wait = rate_limit_wait(principal) if isinstance(principal, Principal) else 0
        return self._wait == 0

    def wait(self):
        return self._wait


def _login_bucket(email, ip):
    digest = hashlib.sha256(f"{email.strip().lower()}|{ip}".encode()).hexdigest()[:32]
    return f"vajra:login:{digest}"


def login_retry_after(email, ip):
    """Seconds this email+address must wait before trying again (0 if not locked out)."""
    r = get_redis()
    bucket = _login_bucket(email, ip)
    failures = int(r.get(bucket) or 0)
    if failures < settings.VAJRA_LOGIN_MAX_FAILURES:
        return 0
    return max(1, r.ttl(bucket))


def login_failed(email, ip):
    r = get_redis()
    bucket = _login_bucket(email, ip)
    pipe = r.pipeline()
    pipe.incr(bucket)
    pipe.expire(bucket, settings.VAJRA_LOGIN_LOCKOUT_SECONDS)
    pipe.execute()


def login_succeeded(email, ip):
    get_redis().delete(_login_bucket(email, ip))


def client_ip(request):
    return request.META.get("REMOTE_ADDR", "")
