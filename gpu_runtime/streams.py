"""Writes each request's events to its Redis Stream and reads cancel flags (see contract.py)."""

import json

import redis

from .contract import attempt_key, cancel_key, stream_key


class StreamWriter:
    def __init__(self, client: redis.Redis, ttl_seconds=3600):
        self.redis = client
        self.ttl = ttl_seconds

    @classmethod
    def from_url(cls, url, ttl_seconds=3600):
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2), ttl_seconds)

    def _add(self, request_id, event_type, data):
        key = stream_key(request_id)
        pipe = self.redis.pipeline()
        pipe.xadd(key, {"type": event_type, "data": json.dumps(data)})
        pipe.expire(key, self.ttl)
        pipe.execute()

    def event(self, stream_id, event_type, data):
        """Any other entry (a training job's ``progress``); readers skip types they do not know."""
        self._add(stream_id, event_type, data)

    def delta(self, request_id, text, attempt=1):
        # A failover attempt's entries say which attempt wrote them, so readers skip a superseded one's.
        self._add(request_id, "delta", {"text": text, "attempt": attempt} if attempt > 1 else {"text": text})

    def final(self, request_id, payload):
        self._add(request_id, "final", payload)

    def run_state(self, request_id):
        """(final event or None, current attempt or None) in one round trip: a task runs its request only when it
        has not finished and the task carries the current attempt (contract.py, "Failover")."""
        pipe = self.redis.pipeline()
        pipe.xrevrange(stream_key(request_id), count=1)
        pipe.get(attempt_key(request_id))
        entries, attempt = pipe.execute()
        final, current = None, int(attempt) if attempt is not None else None
        if entries and entries[0][1].get(b"type") == b"final":
            final = json.loads(entries[0][1][b"data"])
            if current is not None and final.get("attempt", 1) != current:
                final = None  # a superseded attempt's end: the current attempt has still to run
        return final, current

    def cancelled(self, request_ids):
        if not request_ids:
            return set()
        flags = self.redis.mget([cancel_key(r) for r in request_ids])
        return {r for r, flag in zip(request_ids, flags, strict=True) if flag is not None}

    def stopped(self, requests):
        """Of ``(request_id, attempt)`` pairs, those cancelled and those a failover superseded (another node now
        runs the request's next attempt): two sets of request ids, from one round trip."""
        if not requests:
            return set(), set()
        ids = [r for r, _ in requests]
        flags = self.redis.mget([cancel_key(r) for r in ids] + [attempt_key(r) for r in ids])
        cancelled = {r for r, flag in zip(ids, flags[:len(ids)], strict=True) if flag is not None}
        superseded = {r for (r, attempt), current in zip(requests, flags[len(ids):], strict=True)
                      if current is not None and int(current) != attempt}
        return cancelled, superseded


def read_events(client, request_id, last_id="0", block_ms=5000):
    """Yields (entry id, type, data) from a request's stream until its final event (for tests and tools)."""
    key = stream_key(request_id)
    while True:
        result = client.xread({key: last_id}, block=block_ms, count=100)
        if not result:
            raise TimeoutError(f"no event on {key} within {block_ms} ms")
        for entry_id, fields in result[0][1]:
            last_id = entry_id
            event_type = fields[b"type"].decode()
            yield entry_id.decode(), event_type, json.loads(fields[b"data"])
            if event_type == "final":
                return
