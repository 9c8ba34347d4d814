"""Two mends to daphne 4.2, applied when running under it; everything else is daphne's own path.

daphne drops the ``reason`` of an ASGI ``websocket.close`` (it calls ``sendClose(code)`` only). VAJRA's refusals
close with a code *and* a reason saying what to fix, so ``pass_close_reasons`` passes the reason on to autobahn's
``sendClose``, which supports it. ``leave_bodies_to_django`` stops Twisted refusing form bodies on its own.
"""


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


def leave_bodies_to_django():
    """Twisted parses every POST body that says multipart/form-data or x-www-form-urlencoded itself (daphne never
    reads the result) and answers one it cannot parse with a bare 400 before the application sees it: no body, no
    x-request-id, not the API's error shape. Django parses bodies, and refuses bad ones in the API's shape."""
    try:
        from daphne.http_protocol import WebRequest
    except ImportError:  # another ASGI server: nothing to mend
        return
    if getattr(WebRequest, "_vajra_bodies_to_django", False):
        return
    original = WebRequest.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self._parsePOSTFormSubmission = False

    WebRequest.__init__ = __init__
    WebRequest._vajra_bodies_to_django = True
