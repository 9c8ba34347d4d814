"""Prompt-prefix KV cache (the tiered-pricing paper's token caching): a repeated system prompt is not
recomputed.

Entries are keyed by (adapter version, token prefix) — the KV of a prefix is valid only for the base and
adapter version that computed it (one cache per node, so per base model). Prefixes are cut at multiples of
``block`` tokens so a lookup tries a handful of lengths, longest first. Entries live in host or device
memory under a byte budget, least recently used out first.
"""

import hashlib
import struct
import threading
from collections import OrderedDict

from transformers import DynamicCache


def _digest(adapter_key, ids):
    h = hashlib.blake2b(repr(adapter_key).encode(), digest_size=16)
    h.update(struct.pack(f"<{len(ids)}i", *ids))
    return h.digest()


class PrefixCache:
    def __init__(self, budget_bytes=512 << 20, block=16):
        self.budget = budget_bytes
        self.block = block
        self._entries = OrderedDict()  # digest -> (length, [(keys, values) per layer], bytes)
        self._bytes = 0
        self._lock = threading.Lock()
        self.lookups = self.hits = self.tokens_saved = 0

    def _lengths(self, n):
        """Prefix lengths worth caching for a prompt of n tokens: block multiples leaving >= 1 token to run."""
        top = (n - 1) // self.block * self.block
        return range(top, 0, -self.block)

    def lookup(self, adapter_key, ids):
        """(cached length, a fresh DynamicCache holding that prefix's KV) or (0, None)."""
        self.lookups += 1
        with self._lock:
            for length in self._lengths(len(ids)):
                digest = _digest(adapter_key, ids[:length])
                entry = self._entries.get(digest)
                if entry is not None:
                    self._entries.move_to_end(digest)
                    self.hits += 1
                    self.tokens_saved += length
                    cache = DynamicCache()
                    for index, (keys, values) in enumerate(entry[1]):
                        cache.update(keys.clone(), values.clone(), index)
                    return length, cache
        return 0, None

    def store(self, adapter_key, ids, cache, row=0, start=0):
        """Keeps the KV of the longest block-aligned prefix of ``ids`` from a prefilled cache: batch row
        ``row``, whose tokens begin at ``start`` (after its left padding)."""
        lengths = self._lengths(len(ids))
        if not lengths:
            return
        length = lengths[0]
        digest = _digest(adapter_key, ids[:length])
        with self._lock:
            if digest in self._entries:
                self._entries.move_to_end(digest)
                return
        end = start + length
        layers = [(layer.keys[row:row + 1, :, start:end].clone(), layer.values[row:row + 1, :, start:end].clone())
                  for layer in cache.layers]
        size = sum(k.numel() * k.element_size() * 2 for k, _ in layers)
        if size > self.budget:
            return
        with self._lock:
            self._entries[digest] = (length, layers, size)
            self._bytes += size
            while self._bytes > self.budget:
                _, (_, _, freed) = self._entries.popitem(last=False)
                self._bytes -= freed

    def stats(self):
        return {"entries": len(self._entries), "bytes": self._bytes, "lookups": self.lookups, "hits": self.hits,
                "hit_rate": round(self.hits / self.lookups, 4) if self.lookups else 0.0,
                "tokens_saved": self.tokens_saved}

    def clear(self):
        with self._lock:
            self._entries.clear()
            self._bytes = 0

