"""Secrets, hosts, cookies, HTTPS. Production (DJANGO_DEBUG=false) refuses to start on the dev secret."""

from django.core.exceptions import ImproperlyConfigured

from .base import DEBUG
from .env import env_bool, env_int, env_list, env_networks, env_str

_DEV_SECRET = "django-insecure-vajra-dev-only-never-use-in-production-0123456789abcdef"
SECRET_KEY = env_str("DJANGO_SECRET_KEY", _DEV_SECRET if DEBUG else None)
if not SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG=false.")
if not DEBUG and (SECRET_KEY == _DEV_SECRET or len(SECRET_KEY) < 50):
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be a random string of at least 50 characters.")

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
# Origins that browsers may post forms and open websockets from, e.g. https://vajra.example.com
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

_https = not DEBUG and env_bool("DJANGO_HTTPS", True)
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", _https)
SESSION_COOKIE_SECURE = _https
CSRF_COOKIE_SECURE = _https
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000 if _https else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
# The proxies in front of web (addresses or CIDRs). Only a request whose peer is one of them has its
# X-Forwarded-For read (vajra/client_ip.py); with none, the peer is the client whatever the headers say.
VAJRA_TRUSTED_PROXIES = env_networks("VAJRA_TRUSTED_PROXIES", [])
# Behind a proxy that ends TLS, its X-Forwarded-Proto says whether the client came over https; the header is read
# from VAJRA_TRUSTED_PROXIES only (vajra.middleware.ForwardedProtoMiddleware drops anyone else's), so it needs them.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("DJANGO_BEHIND_PROXY", False) else None
if SECURE_PROXY_SSL_HEADER and not VAJRA_TRUSTED_PROXIES:
    raise ImproperlyConfigured("DJANGO_BEHIND_PROXY=true needs VAJRA_TRUSTED_PROXIES: X-Forwarded-Proto is read "
                               "from those proxies only.")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Rate limits (per minute), counted in Redis. A tenant's own limit overrides the tenant default.
VAJRA_RATE_LIMIT_PER_KEY = env_int("VAJRA_RATE_LIMIT_PER_KEY", 600, minimum=1)
VAJRA_RATE_LIMIT_PER_TENANT = env_int("VAJRA_RATE_LIMIT_PER_TENANT", 3000, minimum=1)
VAJRA_SIGNUPS_PER_IP_PER_HOUR = env_int("VAJRA_SIGNUPS_PER_IP_PER_HOUR", 20, minimum=1)
# Failed sign-ins before a lockout: for one account from one address, for one account from any address, and
# for one address against any account.
VAJRA_LOGIN_MAX_FAILURES = env_int("VAJRA_LOGIN_MAX_FAILURES", 5, minimum=1)
VAJRA_LOGIN_MAX_FAILURES_PER_ACCOUNT = env_int("VAJRA_LOGIN_MAX_FAILURES_PER_ACCOUNT", 20, minimum=1)
VAJRA_LOGIN_MAX_FAILURES_PER_ADDRESS = env_int("VAJRA_LOGIN_MAX_FAILURES_PER_ADDRESS", 50, minimum=1)
VAJRA_LOGIN_LOCKOUT_SECONDS = env_int("VAJRA_LOGIN_LOCKOUT_SECONDS", 900, minimum=1)
VAJRA_INVITE_TTL_HOURS = env_int("VAJRA_INVITE_TTL_HOURS", 168, minimum=1)
