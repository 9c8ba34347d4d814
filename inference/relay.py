"""Relays a request's Redis Stream (written by the runtime) to SSE or a websocket with blocking async
reads. A late reader misses nothing (it reads from the start, or from the last event id it saw)."""

import asyncio
import json

import redis.asyncio as aioredis
from django.conf import settings

from gpu_runtime.contract import cancel_key, stream_key

BLOCK_MS = 15000  # a blocking read returns at least this often, so the caller can send keep-alives


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


async def events(request_id, last_id="0", *, max_wait_s=600):
    """Yields (entry id, type, data) until the final event; ("", "keepalive", None) while waiting."""
    client = _client()
    key = stream_key(request_id)
    waited, attempt = 0, 1
    while True:
        result = await client.xread({key: last_id}, block=BLOCK_MS, count=256)
        if not result:
            waited += BLOCK_MS / 1000
            if waited >= max_wait_s:
                yield "", "final", {"finish_reason": "error", "error": {
                    "code": "timeout", "message": f"no answer from the runtime within {max_wait_s} s"}}
                return
            yield "", "keepalive", None
            continue
        waited = 0
        for entry_id, fields in result[0][1]:
            last_id = entry_id
            kind, data = fields[b"type"].decode(), json.loads(fields[b"data"])
            if isinstance(data, dict) and kind != "retry" and data.get("attempt", 1) < attempt:
                continue  # written by an attempt a failover superseded (its node was thought lost)
            if kind == "retry":
                attempt = data["attempt"]
            yield entry_id.decode(), kind, data
            if kind == "final":
                return


async def cancel(request_id, ttl_s=3600):
    """Asks the engine to drop the request's row (it checks every step)."""
    await _client().set(cancel_key(request_id), 1, ex=ttl_s)


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
