"""Redis connections whose "closed under me" failure is a ConnectionError, as every other broken connection is.

redis-py reads a reply into a buffer that ``Connection.disconnect()`` closes. When the connection is closed while
a read is under way (a disconnect from another thread, or from the pool), the read's own ConnectionError
("Connection closed by server") is replaced by ``ValueError: I/O operation on closed file`` from that buffer,
which no caller counts as Redis going away: a web request would answer 500 instead of 503. Here it is what it
is, a lost connection:
redis-py's retry and the callers' "Redis is down" handling (503, the runtime's pending writes, kombu's
reconnect) take it from there. Django-free: used by the web's client, the Celery transport and the runtime.
"""

import redis

CLOSED = "I/O operation on closed file"


def _closed_under_us(exc):
    return isinstance(exc, ValueError) and CLOSED in str(exc)


class ClosedFileIsConnectionError:
    """Mixin for a redis-py Connection class (TCP or unix socket)."""

    def read_response(self, *args, **kwargs):
        return self._reading(super().read_response, *args, **kwargs)

    def can_read(self, *args, **kwargs):
        return self._reading(super().can_read, *args, **kwargs)

    def _reading(self, read, *args, **kwargs):
        try:
            return read(*args, **kwargs)
        except ValueError as exc:
            if not _closed_under_us(exc):
                raise
            self.disconnect()
            raise redis.ConnectionError(f"the Redis connection was closed during a read ({exc})") from exc


def hardened(connection_class):
    """``connection_class`` with the mixin (a class that has it already is kept)."""
    if issubclass(connection_class, ClosedFileIsConnectionError):
        return connection_class
    return type(f"Hardened{connection_class.__name__}", (ClosedFileIsConnectionError, connection_class), {})


def client_from_url(url, **kwargs):
    """``redis.Redis.from_url(url, **kwargs)`` over hardened connections (whatever the URL's scheme)."""
    client = redis.Redis.from_url(url, **kwargs)
    pool = client.connection_pool
    pool.connection_class = hardened(pool.connection_class)
    return client
