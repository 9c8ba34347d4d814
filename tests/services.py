"""pytest plugin (loaded with -p before Django reads its settings): the services the suite needs.

With REDIS_URL set (CI, or a developer's own Redis) the suite uses it. Without it, this starts a
private redis-server on a unix socket under var/test/, exactly like ``make up`` does, and stops it at
exit. DATABASE_URL works the same way: set, PostgreSQL; unset, SQLite under var/.
"""

import atexit
import os
import shutil
from pathlib import Path

from vajra.embedded_redis import start_private_redis

ROOT = Path(__file__).resolve().parent.parent

# Playwright's sync API runs an event loop in the test thread; Django's ORM must still work there.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

if not os.environ.get("REDIS_URL"):
    _dir = ROOT / "var" / "test" / f"redis-{os.getpid()}"
    _proc, os.environ["REDIS_URL"] = start_private_redis(_dir)

    def _stop():
        _proc.terminate()
        _proc.wait(10)
        shutil.rmtree(_dir, ignore_errors=True)

    atexit.register(_stop)
