"""Metrics and who may read them: /metrics (vajra/metrics.py) and django-prometheus's database metrics."""

from django.core.exceptions import ImproperlyConfigured

from .database import DATABASES
from .env import env_str

# /metrics answers a staff session, or `Authorization: Bearer <VAJRA_METRICS_TOKEN>` (Prometheus). Unset: staff only.
VAJRA_METRICS_TOKEN = env_str("VAJRA_METRICS_TOKEN", "")
if VAJRA_METRICS_TOKEN and len(VAJRA_METRICS_TOKEN) < 24:
    raise ImproperlyConfigured("VAJRA_METRICS_TOKEN must be at least 24 characters (a random string).")

# Same engines, counting connections, queries and their latency (django_db_* metrics).
_INSTRUMENTED = {
    "django.db.backends.postgresql": "django_prometheus.db.backends.postgresql",
    "django.db.backends.sqlite3": "django_prometheus.db.backends.sqlite3",
}
DATABASES["default"]["ENGINE"] = _INSTRUMENTED.get(DATABASES["default"]["ENGINE"], DATABASES["default"]["ENGINE"])

# Probes (/healthz, /readyz) and Prometheus reach pods over plain HTTP inside the cluster: no redirect to https.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
