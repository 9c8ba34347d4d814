"""The prefix cache's block chain: shared prefixes hit whatever follows, other adapters never do, blocks are
copied out (a request cannot corrupt the cache), and the byte budget holds."""

import torch
from transformers import DynamicCache

from gpu_runtime.prefix_cache import PrefixCache


def prefilled(ids, layers=2, heads=1, dim=2):
    """A cache whose KV values encode the token ids, so a reused block shows where it came from."""
    cache = DynamicCache()
    values = torch.tensor(ids, dtype=torch.float32).view(1, 1, -1, 1).expand(1, heads, -1, dim)
    for index in range(layers):
        cache.update(values.clone(), -values.clone(), index)
    return cache


def test_shared_system_prompt_hits_whatever_the_question():
    cache = PrefixCache(block=4)
    system = list(range(100, 110))  # 10 tokens: blocks [0:4] and [4:8]
    first = system + [1, 2, 3]
    cache.store(("a", 1), first, prefilled(first))
    length, kv = cache.lookup(("a", 1), system + [7, 8, 9, 10, 11])
    assert length == 8
    assert kv.layers[0].keys[0, 0, :, 0].tolist() == [float(t) for t in system[:8]]
    assert kv.layers[1].values[0, 0, :, 0].tolist() == [-float(t) for t in system[:8]]
    assert cache.lookup(("a", 2), first) == (0, None)  # another adapter version's KV is never reused
    assert cache.lookup(("a", 1), [999] + first) == (0, None)  # a different first block breaks the chain
    assert cache.stats()["hits"] == 1 and cache.stats()["tokens_saved"] == 8


def test_a_prompt_keeps_its_last_token_to_run():
    cache = PrefixCache(block=4)
    ids = list(range(8))
    cache.store(None, ids, prefilled(ids))
    assert cache.lookup(None, ids)[0] == 4  # not 8: the last token must run to give the first logits


def test_lookup_copies_blocks_out_and_budget_evicts_least_recently_used():
    ids = list(range(9))
    block_bytes = 2 * 2 * 4 * 2 * 4  # layers * (k, v) * tokens * dim * fp32 bytes
    cache = PrefixCache(block=4, budget_bytes=2 * block_bytes)
    cache.store(None, ids, prefilled(ids))
    _, kv = cache.lookup(None, ids)
    kv.layers[0].keys.zero_()
    assert cache.lookup(None, ids)[1].layers[0].keys[0, 0, :, 0].tolist() == [float(t) for t in range(8)]
    other = [50 + t for t in range(5)]
    cache.store(None, other, prefilled(other))  # a third block: the least recently used one goes
    assert cache.stats()["bytes"] <= 2 * block_bytes and cache.stats()["blocks"] == 2
    assert cache.lookup(None, other)[0] == 4


def test_store_from_a_left_padded_batch_row():
    cache = PrefixCache(block=2)
    short, long = [7, 8, 9], [1, 2, 3, 4, 5]
    batch = DynamicCache()
    keys = torch.tensor([[0, 0, 7, 8, 9], [1, 2, 3, 4, 5]], dtype=torch.float32).view(2, 1, 5, 1)
    batch.update(keys, keys.clone(), 0)
    cache.store(None, short, batch, row=0, start=2)
    cache.store(None, long, batch, row=1, start=0)
    assert cache.lookup(None, short + [1])[1].layers[0].keys.flatten().tolist() == [7.0, 8.0]
    assert cache.lookup(None, long)[1].layers[0].keys.flatten().tolist() == [1.0, 2.0, 3.0, 4.0]
