"""Relays a request's Redis Stream (written by the runtime) to SSE or a websocket with blocking async
reads. A late reader misses nothing (it reads from the start, or from the last event id it saw)."""

import asyncio
import json
import logging
import re
import time

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gpu_runtime.contract import Final, cancel_key, stream_key
from vajra.errors import InvalidRequest

BLOCK_MS = 15000  # a blocking read returns at least this often, so the caller can send keep-alives
ENDED_BLOCK_MS = 2000  # the last read of a stream whose request has ended
RECONNECT_S = 30  # a relay waits this long for a restarting Redis before it ends its client's stream
RECONNECT_PAUSE_S = 0.5
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
log = logging.getLogger(__name__)


# A stream entry id as Redis writes it, "<ms>-<seq>", or "<ms>" alone; "0" is the stream's start.
ENTRY_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")  # ASCII digits: \d also takes other scripts' digits
ENTRY_PART_MAX = 2 ** 64 - 1


def checked_last_id(value, *, param):
    """``value`` when it is an entry id to resume after; a 400 naming ``param`` otherwise (Redis would refuse it
    in the middle of the stream)."""
    match = ENTRY_ID.fullmatch(value) if isinstance(value, str) else None
    if match is None or any(int(part) > ENTRY_PART_MAX for part in match.groups() if part is not None):
        raise InvalidRequest(f"{param} must be the id of an event received from this stream (\"<ms>-<seq>\", "
                             f"e.g. \"1700000000000-0\"), or 0 for the start; got {json.dumps(value)[:40]}.",
                             param=param, code="invalid_last_event_id")
    return value


_clients = {}  # event loop -> its shared client (redis.asyncio connections belong to the loop that opened them)


def _client():
    """This event loop's client: one connection pool for every relay and cancel. A client of its own per request
    cost ~1.2 ms on the event loop (connect + handshake) for every request."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        for gone in [other for other in list(_clients) if other.is_closed()]:
            _clients.pop(gone, None)  # a finished loop's (asyncio.run, async_to_sync): of no use any more
        # redis-py 8 times reads out after 5 s by default: a blocking XREAD needs longer than its own block.
        client = _clients[loop] = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2,
                                                          socket_timeout=BLOCK_MS / 1000 + 5)
    return client


def error_final(code, message):
    """A final event the relay makes up itself when the runtime's own cannot reach the client (its JSON, as a
    stream entry's data; never recorded: the request's end is the intake's, serving.finals)."""
    return Final.failed(code, message).to_json()


def _ended(request_id):
    from django.db import DatabaseError, connection

    from .models import InferenceRequest

    try:
        return InferenceRequest.objects.filter(pk=request_id, status__in=InferenceRequest.TERMINAL).exists()
    except DatabaseError:
        return False
    finally:
        # on a pool thread, closed after: a connection kept per silent stream would hold a PostgreSQL backend each
        if connection.vendor != "sqlite" and not connection.in_atomic_block:
            connection.close()


async def inference_ended(request_id):
    """Whether the inference request's row has ended (False while the database cannot say)."""
    return await sync_to_async(_ended, thread_sensitive=False)(request_id)


async def events(request_id, last_id="0", *, max_wait_s=600, check_seq=True, reconnect_s=RECONNECT_S,
                 ended=inference_ended):
    """Yields (entry id, type, data) until the final event; ("", "keepalive", None) while waiting.

    Redis going away is waited out (reads retried for up to ``reconnect_s``). Entries carry ``seq``: a gap means
    Redis lost some (it restarted without its data), and the reader gets a typed error instead of a silently
    shortened answer. ``check_seq=False`` for training streams, whose redelivered job counts from 0 again.

    A stream silent for a whole block whose request has ended (``ended``, an async check of the recorded state;
    None for none) lost its final: Redis restarted after the node wrote it, so nothing will ever come. After one
    short read more (a final the control plane announces right after its commit), the reader gets a typed error
    instead of keep-alives until ``max_wait_s``."""
    client = _client()
    key = stream_key(request_id)
    waited, attempt = 0, 1
    expected = 0 if last_id == "0" else None  # resuming after an id: take the seq that follows it as it comes
    down_since = None
    ended_seen = False
    while True:
        try:
            result = await client.xread({key: last_id}, block=ENDED_BLOCK_MS if ended_seen else BLOCK_MS,
                                        count=256)
        except REDIS_DOWN as exc:
            now = time.monotonic()
            down_since = down_since or now
            if now - down_since >= reconnect_s:
                log.warning("relay of %s: Redis unavailable for %s s: %s", request_id, reconnect_s, exc)
                yield "", "final", error_final("redis_unavailable", f"The token stream's Redis did not answer for "
                                               f"{reconnect_s} s. See GET /v1/requests/{request_id} for the "
                                               "request's outcome, or retry it.")
                return
            await asyncio.sleep(RECONNECT_PAUSE_S)
            continue
        down_since = None
        if not result and ended_seen:
            log.warning("relay of %s: the request ended but its stream holds no final", request_id)
            yield "", "final", error_final("stream_interrupted", "The request ended, but its token stream was lost "
                                           f"(Redis restarted). See GET /v1/requests/{request_id} for the request's "
                                           "outcome, or retry it.")
            return
        if not result:
            if ended is not None and await ended(request_id):
                ended_seen = True
                continue
            waited += BLOCK_MS / 1000
            if waited >= max_wait_s:
                yield "", "final", error_final("timeout", f"no answer from the runtime within {max_wait_s} s")
                return
            yield "", "keepalive", None
            continue
        waited = 0
        for entry_id, fields in result[0][1]:
            last_id = entry_id
            kind, data = fields[b"type"].decode(), json.loads(fields[b"data"])
            if isinstance(data, dict) and kind != "retry" and data.get("attempt", 1) < attempt:
                continue  # written by an attempt a failover superseded (its node was thought lost)
            if kind == "retry":  # the next attempt's entries count their seq from 0
                attempt, expected = data["attempt"], 0
                yield entry_id.decode(), kind, data
                continue
            seq = fields.get(b"seq")
            if check_seq and seq is not None:
                if expected is not None and int(seq) != expected:
                    log.warning("relay of %s: entry %s where %s was due: entries were lost", request_id,
                                int(seq), expected)
                    yield "", "final", error_final("stream_interrupted", "Part of the answer was lost (Redis "
                                                   f"restarted). See GET /v1/requests/{request_id} for the "
                                                   "request's outcome, or retry it.")
                    return
                expected = int(seq) + 1
            yield entry_id.decode(), kind, data
            if kind == "final":
                return


class Choice:
    """One choice of an answer as its deltas spell it: its text and, for a request that asked, its tokens' logprob
    entries (gpu_runtime.logprobs), else None."""

    def __init__(self):
        self.parts, self.logprobs = [], None

    @property
    def text(self):
        return "".join(self.parts)

    def add(self, delta):
        self.parts.append(delta["text"])
        if "logprobs" in delta:
            self.logprobs = self.logprobs if self.logprobs is not None else []
            self.logprobs.extend(delta["logprobs"])  # in place: a long answer's entries are not copied per delta


def choice_index(delta):
    """The choice a delta belongs to (``index``, left out for the first)."""
    return delta.get("index", 0)


async def answer_choices(request_id):
    """A request's whole answer from its stream: (its choices in order, final event or None if the stream ended
    without one). A ``retry`` (its node was lost) starts the answer over."""
    choices, final = {}, None
    async for _, kind, event in events(request_id):
        if kind == "delta":
            choices.setdefault(choice_index(event), Choice()).add(event)
        elif kind == "retry":
            choices.clear()
        elif kind == "final":
            final = event
    count = max([len((final or {}).get("choices") or ()), *(i + 1 for i in choices), 1])
    return [choices.get(i) or Choice() for i in range(count)], final


async def cancel(request_id, ttl_s=3600):
    """Asks the engine to drop the request's row (it checks every step). False when Redis is down."""
    try:
        await _client().set(cancel_key(request_id), 1, ex=ttl_s)
    except REDIS_DOWN:
        log.warning("cancel of %s not sent: Redis unavailable", request_id)
        return False
    return True


def event_stream_response(request_id, chunks):
    """An SSE response over ``chunks`` (async bytes that end after the final event). A client that leaves
    before the end cancels the generation, so only generated tokens count."""
    from django.http import StreamingHttpResponse

    async def guarded():
        complete = False
        try:
            async for chunk in chunks:
                yield chunk
            complete = True
        finally:
            if not complete:
                await cancel(request_id)

    response = StreamingHttpResponse(guarded(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # tell proxies (nginx) not to buffer the stream
    return response


def sse(event_id, kind, data):
    lines = [f"id: {event_id}"] if event_id else []
    lines += [f"event: {kind}", f"data: {json.dumps(data)}"]
    return ("\n".join(lines) + "\n\n").encode()
