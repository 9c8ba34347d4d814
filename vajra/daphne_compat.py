"""daphne 4.2 drops the ``reason`` of an ASGI ``websocket.close`` (it calls ``sendClose(code)`` only).

VAJRA's refusals close with a code *and* a reason saying what to fix, so when running under daphne we
pass the reason on to autobahn's ``sendClose``, which supports it. Everything else is daphne's own path.
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
