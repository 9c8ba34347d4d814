"""Incremental detokenization that never splits a multi-byte character and holds back a possible stop."""


class IncrementalText:
    def __init__(self, tokenizer, stop=()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.tokens = []
        self.emitted = ""  # text already sent
        self.stopped = False

    def _visible(self):
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        for stop in self.stop:
            at = text.find(stop)
            if at != -1:
                self.stopped = True
                return text[:at], True
        return text, False

    def add(self, token_id):
        """Adds a token; returns the new text that is safe to send (maybe "")."""
        self.tokens.append(token_id)
        text, hit = self._visible()
        if not hit:
            if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                return ""
            # hold back a tail that could still become a stop sequence
            hold = max((k for stop in self.stop for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)
            text = text[: len(text) - hold]
        delta = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        self.emitted += delta
        return delta

    def finish(self):
        """The rest of the text at the end of the request (a held-back tail that never became a stop)."""
        text, _ = self._visible()
        text = text.rstrip("\ufffd")
        delta = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        self.emitted += delta
        return delta
