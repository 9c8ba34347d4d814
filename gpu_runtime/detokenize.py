"""Incremental detokenization that never splits a multi-byte character and holds back a possible stop.

With ``min_tokens`` (vLLM's), stop strings are not looked for until that many tokens exist; from then on a stop
string counts where it ends past the text those first tokens spelled (one that began inside it included), so text
generated before min_tokens never stops the row after the fact."""


class IncrementalText:
    def __init__(self, tokenizer, stop=(), *, min_tokens=0):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.min_tokens = min_tokens
        self.tokens = []
        self.emitted = ""  # text already sent
        self.stopped = False
        self.free_from = 0  # characters of text spelled while stop strings were suppressed (min_tokens)

    def _visible(self):
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if len(self.tokens) < self.min_tokens:
            self.free_from = len(text)
            return text, False
        for stop in self.stop:
            at = text.find(stop, max(0, self.free_from - len(stop) + 1))
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
