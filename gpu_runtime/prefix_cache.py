"""Prompt-prefix KV cache (the tiered-pricing paper's token caching): a repeated system prompt is not
recomputed.

The KV of a prompt is kept in blocks of ``block`` tokens. Block b is keyed by a hash chained over the
tenant, the adapter version and every token up to the end of block b, so a block is valid only for the exact
prefix (and the base and adapter version) that computed it; the KV of a prefix is only valid for the weights that
made it. A lookup walks the chain from the first block and stops at the first miss, so any prompt that
shares a system prompt with an earlier one reuses the shared blocks, whatever follows them. Each block
holds only its own tokens' KV (memory grows linearly with what is cached), under a byte budget.

The cache is a boundary between tenants: each tenant's blocks live apart and a lookup only ever reads the
asking tenant's own, so no hit, no timing and no ``cached_tokens`` figure says anything about another tenant's
prompts. A request without a tenant is never cached. Over the budget, the tenant holding the most bytes loses its
least recently used block (a hit refreshes its whole chain): whoever stores, a tenant keeps its blocks while it
holds no more than any other, so one tenant's prompts cannot push every other tenant's blocks out; with n tenants
caching, each keeps at least its share of ``budget / n``.
"""

import hashlib
import struct
import threading
from collections import OrderedDict

import torch

from .kv_cache import KVCache


def _chain(tenant, adapter_key, ids, block):
    """Digests of each full block of ``ids``, each covering everything before it."""
    digest = hashlib.blake2b(repr((tenant, adapter_key)).encode(), digest_size=16).digest()
    digests = []
    for start in range(0, len(ids) - block + 1, block):
        digest = hashlib.blake2b(digest + struct.pack(f"<{block}i", *ids[start:start + block]),
                                 digest_size=16).digest()
        digests.append(digest)
    return digests


class PrefixCache:
    def __init__(self, budget_bytes=512 << 20, block=16):
        self.budget = budget_bytes
        self.block = block
        self._tenants = {}  # tenant -> OrderedDict(digest -> ([(keys, values) per layer], bytes)), LRU first
        self._tenant_bytes = {}  # tenant -> bytes its blocks hold
        self._bytes = 0
        self._lock = threading.Lock()
        self.lookups = self.hits = self.tokens_saved = 0

    def _cacheable(self, ids):
        """Whole blocks of the prompt, leaving at least one token to run (its logits start the answer)."""
        return ids[: (len(ids) - 1) // self.block * self.block]

    def lookup(self, tenant, adapter_key, ids, new_cache=KVCache):
        """(cached length, a fresh cache from ``new_cache()`` holding that prefix's KV) or (0, None); only
        ``tenant``'s own blocks are read."""
        if not tenant:
            return 0, None
        with self._lock:
            self.lookups += 1
            blocks = self._tenants.get(tenant, {})
            found = []
            for digest in _chain(tenant, adapter_key, self._cacheable(ids), self.block):
                entry = blocks.get(digest)
                if entry is None:
                    break
                blocks.move_to_end(digest)
                found.append(entry[0])
            if not found:
                return 0, None
            length = len(found) * self.block
            self.hits += 1
            self.tokens_saved += length
        cache = new_cache()
        for index in range(len(found[0])):
            cache.update(torch.cat([blocks[index][0] for blocks in found], dim=2),
                         torch.cat([blocks[index][1] for blocks in found], dim=2), index)
        return length, cache

    def store(self, tenant, adapter_key, ids, cache, row=0, start=0):
        """Keeps ``tenant``'s KV blocks of ``ids`` not cached yet, from batch row ``row`` of a prefilled cache whose
        tokens for this row begin at ``start`` (after its left padding). Nothing is kept without a tenant."""
        if not tenant:
            return
        digests = _chain(tenant, adapter_key, self._cacheable(ids), self.block)
        with self._lock:
            held = self._tenants.get(tenant, {})
            missing = [(b, d) for b, d in enumerate(digests) if d not in held]
        for b, digest in missing:
            lo, hi = start + b * self.block, start + (b + 1) * self.block
            layers = [(layer.keys[row:row + 1, :, lo:hi].clone(), layer.values[row:row + 1, :, lo:hi].clone())
                      for layer in cache.layers]
            size = sum(k.numel() * k.element_size() * 2 for k, _ in layers)
            with self._lock:
                blocks = self._tenants.setdefault(tenant, OrderedDict())
                if digest in blocks or size > self.budget:
                    continue
                blocks[digest] = (layers, size)
                self._tenant_bytes[tenant] = self._tenant_bytes.get(tenant, 0) + size
                self._bytes += size
                while self._bytes > self.budget:
                    self._evict_one()

    def _evict_one(self):
        """Drops the least recently used block of the tenant holding the most bytes (called holding the lock)."""
        largest = max(self._tenant_bytes, key=self._tenant_bytes.get)
        blocks = self._tenants[largest]
        _, (_, freed) = blocks.popitem(last=False)
        self._bytes -= freed
        self._tenant_bytes[largest] -= freed
        if not blocks:
            del self._tenants[largest], self._tenant_bytes[largest]

    def tenant_bytes(self, tenant):
        with self._lock:
            return self._tenant_bytes.get(tenant, 0)

    def stats(self):
        with self._lock:
            return {"blocks": sum(len(b) for b in self._tenants.values()), "bytes": self._bytes,
                    "tenants": len(self._tenants), "lookups": self.lookups, "hits": self.hits,
                    "hit_rate": round(self.hits / self.lookups, 4) if self.lookups else 0.0,
                    "tokens_saved": self.tokens_saved}

    def clear(self):
        with self._lock:
            self._tenants.clear()
            self._tenant_bytes.clear()
            self._bytes = 0
