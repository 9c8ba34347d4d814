"""The database: DATABASE_URL (PostgreSQL in production and CI), else SQLite under var/."""

import os

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from .env import VAR_DIR, env_int, env_str

_url = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
# Connections are kept for a minute (checked before reuse): opening one per request costs milliseconds on
# every API call (PostgreSQL: connect + auth; SQLite: open + schema read).
_keep = 60
try:
    _db = dj_database_url.parse(_url, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", _keep, minimum=0),
                                conn_health_checks=True)
except (ValueError, KeyError) as exc:
    raise ImproperlyConfigured(f"DATABASE_URL={_url!r} cannot be parsed: {exc}") from None
if _db["ENGINE"] not in {"django.db.backends.postgresql", "django.db.backends.sqlite3"}:
    raise ImproperlyConfigured(f"DATABASE_URL={_url!r}: VAJRA supports postgres:// and sqlite:// only.")

if _db["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory, even for tests: the integration tests' daphne subprocess reads the same database.
    # One per test run, so that two runs side by side do not flush each other's.
    _db["TEST"] = {"NAME": str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")}
    _db.setdefault("OPTIONS", {})["timeout"] = 20
    # Writers take the lock when their transaction starts, so a second writer waits for it (up to the
    # timeout) instead of failing at once with "database is locked" when it upgrades a read lock.
    _db["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    # Write-ahead log: readers never wait for the writer, and a commit is an append (synchronous=NORMAL: a
    # crash of the process loses nothing; a power loss may lose the last commits). The web, control worker
    # and beat all write this one file, so this halves the submit path's lock waits (bench/platform_overhead).
    _db["OPTIONS"]["init_command"] = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"

else:
    # One test database per test run here too (pytest-django's default, test_<name>, would be one for all): a
    # second run beside the first would drop it under it.
    _db["TEST"] = {"NAME": f"test_{_db['NAME']}_{os.getpid()}"}

DATABASES = {"default": _db}
