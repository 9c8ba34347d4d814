"""A Redis connection closed while a read is under way is a lost connection (gpu_runtime/redis_io.py), for the
web's client, the Celery transport and the runtime's stream writer: never a ValueError that the web answers 500."""

import threading
import time
import uuid

import pytest
import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from gpu_runtime.redis_io import ClosedFileIsConnectionError, client_from_url, hardened


def blocked_read_cut_off(client):
    """BLPOP on an empty list in a thread; the connection it reads is disconnected from here (as another thread
    or the pool would) once the read is under way. Returns what the read ended with: its value or exception."""
    key = f"vajra:test:redis-io:{uuid.uuid4().hex}"
    outcome = {}

    def read():
        try:
            outcome["value"] = client.blpop([key], timeout=3)
        except Exception as exc:  # noqa: BLE001 - the test looks at which it is
            outcome["error"] = exc

    reader = threading.Thread(target=read)
    reader.start()
    pool = client.connection_pool
    deadline = time.monotonic() + 5
    while not pool._in_use_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the BLPOP is sent and its reply awaited
    for connection in list(pool._in_use_connections):
        connection.disconnect()
    reader.join(10)
    assert not reader.is_alive()
    return outcome


def test_plain_redis_py_turns_a_cut_off_read_into_a_value_error():
    """The failure the hardening is for: a cut-off read surfaces as ValueError, which a view would answer 500."""
    client = redis.Redis.from_url(settings.REDIS_URL, retry=Retry(NoBackoff(), 0))
    outcome = blocked_read_cut_off(client)
    assert isinstance(outcome.get("error"), ValueError), outcome
    assert "closed file" in str(outcome["error"])


@pytest.mark.parametrize("which", ["client_from_url", "the web's get_redis"])
def test_a_hardened_client_reports_a_lost_connection(which):
    """A ConnectionError: the web answers it 503 (vajra.errors.REDIS_DOWN), and the next command reconnects."""
    from vajra.errors import REDIS_DOWN
    from vajra.redis import get_redis

    client = client_from_url(settings.REDIS_URL, retry=Retry(NoBackoff(), 0)) if which == "client_from_url" \
        else get_redis()
    assert issubclass(client.connection_pool.connection_class, ClosedFileIsConnectionError)
    outcome = blocked_read_cut_off(client)
    assert isinstance(outcome.get("error"), redis.ConnectionError), outcome
    assert isinstance(outcome["error"], REDIS_DOWN)
    assert "closed during a read" in str(outcome["error"])
    assert client.ping()


def test_other_value_errors_are_left_alone():
    class Base:
        def read_response(self, *args, **kwargs):
            raise ValueError("not a number")

        def can_read(self, *args, **kwargs):
            raise ValueError("not a number")

    cls = hardened(Base)
    assert hardened(cls) is cls  # a class that has the mixin is kept as it is
    connection = cls()
    with pytest.raises(ValueError, match="not a number"):
        connection.read_response()
    with pytest.raises(ValueError, match="not a number"):
        connection.can_read()


def test_the_celery_transport_and_the_stream_writer_use_hardened_connections():
    from gpu_runtime.streams import StreamWriter
    from vajra.celery import app

    with app.connection_for_write() as connection:
        channel = connection.default_channel
        assert issubclass(channel.pool.connection_class, ClosedFileIsConnectionError)
        assert issubclass(channel.async_pool.connection_class, ClosedFileIsConnectionError)
        key = f"vajra:test:redis-io:{uuid.uuid4().hex}"
        with connection.SimpleQueue(key) as queue:  # a publish and a read through them
            queue.put({"ok": 1})
            assert queue.get(timeout=5).payload == {"ok": 1}
    writer = StreamWriter.from_url(settings.REDIS_URL)
    assert issubclass(writer.redis.connection_pool.connection_class, ClosedFileIsConnectionError)
