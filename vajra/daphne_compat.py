"""Two mends to daphne 4.2, applied when running under it; everything else is daphne's own path.

- It drops the ``reason`` of an ASGI ``websocket.close`` (it calls ``sendClose(code)`` only). VAJRA's refusals
  close with a code *and* a reason saying what to fix, so we pass the reason on to autobahn's ``sendClose``.
- It buffers a request body whole, whatever its size: twisted spools it to a file, parses a multipart or form
  body into ``request.args`` in memory (several copies of it; daphne never reads ``args``), then daphne reads the
  file into the application's queue in 8 KiB messages at once, so a large upload would hold several times its size
  in the web process's memory.
  ``bound_request_bodies`` answers a body over its route's limit (vajra.body_limits) with the 413 as soon as
  the headers (Content-Length) or the counted chunks show it, and closes the connection; turns twisted's form
  parsing off; and hands an accepted body to the application from twisted's file as the application reads it.
"""

import asyncio
import io
from functools import partial
from urllib.parse import unquote, urlsplit

BODY_CHUNK_BYTES = 256 << 10
_BODY = object()  # queued where daphne would queue the body: read from the request's file on demand


def pass_close_reasons():
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # another ASGI server: nothing to mend
        return
    if getattr(WebSocketProtocol, "_vajra_close_reason", False):
        return
    original = WebSocketProtocol.handle_reply

    def handle_reply(self, message):
        if (message.get("type") == "websocket.close" and message.get("reason")
                and self.state != self.STATE_CONNECTING):
            self.sendClose(code=message.get("code") or 1000, reason=message["reason"])
            return
        original(self, message)

    WebSocketProtocol.handle_reply = handle_reply
    WebSocketProtocol._vajra_close_reason = True


class _BodyQueue(asyncio.Queue):
    """An HTTP application's input queue whose body messages are read from the request's spooled file as the
    application asks for them, not queued all at once."""

    def __init__(self, request):
        super().__init__()
        self._request = request
        self._announced = self._reading = False
        self._offset = self._end = 0

    def put_nowait(self, message):
        if message.get("type") != "http.request":
            return super().put_nowait(message)
        if not self._announced:
            self._announced = True
            content = self._request.content
            self._end = content.seek(0, io.SEEK_END)  # daphne's own read loop then finds the end at once
            super().put_nowait(_BODY)

    async def get(self):
        if self._reading:
            return self._next_chunk()
        message = await super().get()
        if message is _BODY:
            self._reading = True
            return self._next_chunk()
        return message

    def _next_chunk(self):
        try:
            content = self._request.content
            content.seek(self._offset)
            chunk = content.read(min(BODY_CHUNK_BYTES, self._end - self._offset))
        except (AttributeError, OSError, ValueError):  # the file is closed: the client went away
            self._reading = False
            return {"type": "http.disconnect"}
        self._offset += len(chunk)
        more = bool(chunk) and self._offset < self._end
        self._reading = more
        return {"type": "http.request", "body": chunk, "more_body": more}


def bound_request_bodies():
    try:
        from daphne.http_protocol import WebRequest
        from daphne.server import Server
    except ImportError:  # another ASGI server: vajra.body_limits.BodyLimitMiddleware still bounds bodies
        return
    if getattr(WebRequest, "_vajra_bounded_bodies", False):
        return
    from .body_limits import limit_for, refusal, request_id_of

    got_length, handle_chunk, process = WebRequest.gotLength, WebRequest.handleContentChunk, WebRequest.process

    def refuse(request):
        request._vajra_refused = True
        request.content = io.BytesIO()  # nothing more is kept
        headers = [(k, v) for k, values in request.requestHeaders.getAllRawHeaders() for v in values]
        status, response_headers, body = refusal(request._vajra_limit, request_id_of(headers))
        head = b"".join(k + b": " + v + b"\r\n" for k, v in response_headers)
        request.channel.transport.write(b"HTTP/1.1 %d Content Too Large\r\n%s\r\n%s" % (status, head, body))
        request.channel.loseConnection()

    def gotLength(self, length):
        raw_path = (self.channel._path or b"/").decode("latin-1")
        self._vajra_limit = limit_for(unquote(urlsplit(raw_path).path))
        self._vajra_received = 0
        self._vajra_refused = False
        self._parsePOSTFormSubmission = False  # Django parses the body, from a stream
        if length is not None and length > self._vajra_limit:
            return refuse(self)
        got_length(self, length)

    def handleContentChunk(self, data):
        if self._vajra_refused:
            return
        self._vajra_received += len(data)
        if self._vajra_received > self._vajra_limit:  # a chunked body, counted as it arrives
            return refuse(self)
        handle_chunk(self, data)

    def guarded_process(self):
        if getattr(self, "_vajra_refused", False):
            return None
        return process(self)

    def create_application(self, protocol, scope):
        # daphne's Server.create_application, with the body-on-demand queue for HTTP.
        assert "application_instance" not in self.connections[protocol]
        input_queue = _BodyQueue(protocol) if scope["type"] == "http" else asyncio.Queue()
        scope.setdefault("asgi", {"version": "3.0"})
        application_instance = self.application(scope=scope, receive=input_queue.get,
                                                send=partial(self.handle_reply, protocol))
        if protocol not in self.connections:
            return None
        self.connections[protocol]["application_instance"] = asyncio.ensure_future(
            application_instance, loop=asyncio.get_event_loop())
        return input_queue

    WebRequest.gotLength = gotLength
    WebRequest.handleContentChunk = handleContentChunk
    WebRequest.process = guarded_process
    Server.create_application = create_application
    WebRequest._vajra_bounded_bodies = True
