"""Writes each request's events to its Redis Stream and reads cancel flags (see contract.py).

Redis may restart under a running engine. A write that fails is kept, in order, and written by the next write or
``flush`` once Redis answers again (tried at most every ``retry_s``, so the engine thread never waits on a dead
Redis). Each entry carries ``seq`` (0, 1, 2, ... per stream): a reader that sees a gap knows entries were lost
(a Redis that restarted without its data) instead of relaying a silently shortened answer.

The engine adds a step's entries (one delta per row, the finals of the rows that ended) inside ``held()``: they go
to Redis together when the step's rows are done, one round trip per step instead of one per row.
"""

import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .contract import attempt_key, cancel_key, stream_key
from .redis_io import client_from_url

log = logging.getLogger("vajra.runtime.streams")
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


class StreamWriter:
    def __init__(self, client: redis.Redis, ttl_seconds=3600, *, retry_s=0.5, max_pending=100_000):
        self.redis = client
        self.ttl = ttl_seconds
        self.retry_s = retry_s
        self.max_pending = max_pending
        self._seq = {}  # (stream id, attempt) -> next seq (dropped at its final event, or when superseded)
        self._pending = OrderedDict()  # stream id -> [(type, data json, seq)] not yet written, in order
        self._pending_count = 0
        self._next_try = 0.0
        self._lock = threading.Lock()  # the worker's writer is shared by task threads
        self._held = threading.local()  # depth of held() blocks on each thread

    @classmethod
    def from_url(cls, url, ttl_seconds=3600):
        # One quick try per call: the writer keeps what fails and retries later itself.
        client = client_from_url(url, socket_timeout=5, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
        return cls(client, ttl_seconds)

    def _add(self, request_id, event_type, data, attempt=1):
        # seq counts each attempt's entries from 0: a failover attempt on another node starts its own count.
        counter = (request_id, attempt)
        data = json.dumps(data)
        with self._lock:
            seq = self._seq.pop(counter, 0) if event_type == "final" else self._seq.get(counter, 0)
            if event_type != "final":
                self._seq[counter] = seq + 1
            entry = (event_type, data, seq)
            if self._pending_count >= self.max_pending:  # Redis gone for long: memory stays bounded, readers see a gap
                log.warning("dropping a stream entry of %s: %d entries wait for Redis", request_id, self._pending_count)
                return
            self._pending.setdefault(request_id, []).append(entry)
            self._pending_count += 1
            if not getattr(self._held, "depth", 0):
                self._flush()

    @contextlib.contextmanager
    def held(self):
        """Entries this thread adds inside the block are written together as it ends (another thread's write, or
        ``flush``, may take them earlier; their order is kept either way)."""
        self._held.depth = getattr(self._held, "depth", 0) + 1
        try:
            yield
        finally:
            self._held.depth -= 1
            if not self._held.depth:
                self.flush()

    def flush(self):
        """Writes what is pending (the engine calls it every loop); True when nothing is left."""
        if not self._pending:
            return True
        with self._lock:
            return self._flush()

    def _flush(self):
        if not self._pending:
            return True
        if time.monotonic() < self._next_try:  # failed a moment ago: wait for the retry time
            return False
        try:
            pipe = self.redis.pipeline(transaction=False)
            for request_id, entries in self._pending.items():
                key = stream_key(request_id)
                for event_type, data, seq in entries:
                    pipe.xadd(key, {"type": event_type, "data": data, "seq": seq})
                pipe.expire(key, self.ttl)
            pipe.execute()
        except REDIS_DOWN as exc:
            self._next_try = time.monotonic() + self.retry_s
            log.warning("Redis unavailable, %d stream entries kept to write later: %s", self._pending_count, exc)
            return False
        self._pending.clear()
        self._pending_count = 0
        return True

    @property
    def pending(self):
        return self._pending_count

    def event(self, stream_id, event_type, data):
        """Any other entry (a training job's ``progress``); readers skip types they do not know."""
        self._add(stream_id, event_type, data)

    def delta(self, request_id, text, attempt=1, *, index=0, logprobs=None):
        """A piece of the answer's text: of choice ``index`` (said when not 0), with the logprobs of the tokens it
        completes (gpu_runtime.logprobs; for a request that asked for them)."""
        data = {"text": text}
        if index:
            data["index"] = index
        if logprobs is not None:
            data["logprobs"] = logprobs
        if attempt > 1:  # a failover attempt's entries say which attempt wrote them, so readers skip a superseded one's
            data["attempt"] = attempt
        self._add(request_id, "delta", data, attempt)

    def final(self, request_id, payload):
        self._add(request_id, "final", payload, payload.get("attempt", 1))

    def superseded(self, request_id, attempt):
        """An attempt failover replaced writes nothing more: forget its count."""
        with self._lock:
            self._seq.pop((request_id, attempt), None)

    def run_state(self, request_id):
        """(final event or None, current attempt or None, whether it was cancelled) in one round trip: a task runs its
        request only when it has not finished, was not cancelled while it waited, and carries the current attempt
        (contract.py, "Failover"). A final event still waiting for Redis counts too."""
        pending = [json.loads(data) for event_type, data, _ in self._pending.get(request_id, ())
                   if event_type == "final"]
        pipe = self.redis.pipeline()
        pipe.xrevrange(stream_key(request_id), count=1)
        pipe.get(attempt_key(request_id))
        pipe.exists(cancel_key(request_id))
        try:
            entries, attempt, cancelled = pipe.execute()
        except REDIS_DOWN:
            if pending:  # it ended here and waits for Redis: a redelivery must not run it again
                return pending[-1], None, False
            raise
        final, current = None, int(attempt) if attempt is not None else None
        if pending:
            final = pending[-1]
        else:
            final = final_of(entries)
        if final is not None and current is not None and final.get("attempt", 1) != current:
            final = None  # a superseded attempt's end: the current attempt has still to run
        return final, current, bool(cancelled)

    def cancelled(self, request_ids):
        """The ids whose cancel flag is set; none while Redis is unreachable (their rows go on)."""
        if not request_ids:
            return set()
        try:
            flags = self.redis.mget([cancel_key(r) for r in request_ids])
        except REDIS_DOWN:
            return set()
        return {r for r, flag in zip(request_ids, flags, strict=True) if flag is not None}

    def stopped(self, requests):
        """Of ``(request_id, attempt)`` pairs, those cancelled and those a failover superseded (another node now
        runs the request's next attempt): two sets of request ids, from one round trip."""
        if not requests:
            return set(), set()
        ids = [r for r, _ in requests]
        try:
            flags = self.redis.mget([cancel_key(r) for r in ids] + [attempt_key(r) for r in ids])
        except REDIS_DOWN:  # unreachable: no row is stopped, they go on
            return set(), set()
        cancelled = {r for r, flag in zip(ids, flags[:len(ids)], strict=True) if flag is not None}
        superseded = {r for (r, attempt), current in zip(requests, flags[len(ids):], strict=True)
                      if current is not None and int(current) != attempt}
        return cancelled, superseded


def final_of(last_entries):
    """The final event of a stream whose last entry (XREVRANGE ... COUNT 1) is one, else None."""
    if last_entries and last_entries[0][1].get(b"type") == b"final":
        return json.loads(last_entries[0][1][b"data"])
    return None


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
