"""The prefix cache's block chain: shared prefixes hit whatever follows, other adapters never do, blocks are
copied out (a request cannot corrupt the cache), and the byte budget holds; tenants never see each other's
blocks, and one tenant cannot push the others' blocks out."""

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
    cache.store("acme", ("a", 1), first, prefilled(first))
    length, kv = cache.lookup("acme", ("a", 1), system + [7, 8, 9, 10, 11])
    assert length == 8
    assert kv.layers[0].keys[0, 0, :, 0].tolist() == [float(t) for t in system[:8]]
    assert kv.layers[1].values[0, 0, :, 0].tolist() == [-float(t) for t in system[:8]]
    assert cache.lookup("acme", ("a", 2), first) == (0, None)  # another adapter version's KV is never reused
    assert cache.lookup("acme", ("a", 1), [999] + first) == (0, None)  # a different first block breaks the chain
    assert cache.stats()["hits"] == 1 and cache.stats()["tokens_saved"] == 8


def test_a_prompt_keeps_its_last_token_to_run():
    cache = PrefixCache(block=4)
    ids = list(range(8))
    cache.store("acme", None, ids, prefilled(ids))
    assert cache.lookup("acme", None, ids)[0] == 4  # not 8: the last token must run to give the first logits


def test_lookup_copies_blocks_out_and_budget_evicts_least_recently_used():
    ids = list(range(9))
    block_bytes = 2 * 2 * 4 * 2 * 4  # layers * (k, v) * tokens * dim * fp32 bytes
    cache = PrefixCache(block=4, budget_bytes=2 * block_bytes)
    cache.store("acme", None, ids, prefilled(ids))
    _, kv = cache.lookup("acme", None, ids)
    kv.layers[0].keys.zero_()
    assert cache.lookup("acme", None, ids)[1].layers[0].keys[0, 0, :, 0].tolist() == [float(t) for t in range(8)]
    other = [50 + t for t in range(5)]
    cache.store("acme", None, other, prefilled(other))  # a third block: the least recently used one goes
    assert cache.stats()["bytes"] <= 2 * block_bytes and cache.stats()["blocks"] == 2
    assert cache.lookup("acme", None, other)[0] == 4


def test_store_from_a_left_padded_batch_row():
    cache = PrefixCache(block=2)
    short, long = [7, 8, 9], [1, 2, 3, 4, 5]
    batch = DynamicCache()
    keys = torch.tensor([[0, 0, 7, 8, 9], [1, 2, 3, 4, 5]], dtype=torch.float32).view(2, 1, 5, 1)
    batch.update(keys, keys.clone(), 0)
    cache.store("acme", None, short, batch, row=0, start=2)
    cache.store("acme", None, long, batch, row=1, start=0)
    assert cache.lookup("acme", None, short + [1])[1].layers[0].keys.flatten().tolist() == [7.0, 8.0]
    assert cache.lookup("acme", None, long)[1].layers[0].keys.flatten().tolist() == [1.0, 2.0, 3.0, 4.0]


def test_another_tenant_never_hits_and_a_request_without_a_tenant_is_never_cached():
    cache = PrefixCache(block=4)
    secret = list(range(200, 213))
    cache.store("acme", ("a", 1), secret, prefilled(secret))
    assert cache.lookup("contoso", ("a", 1), secret) == (0, None)  # the very same prompt and adapter version
    assert cache.lookup("acme", ("a", 1), secret)[0] == 12
    cache.store("", ("a", 1), secret, prefilled(secret))
    cache.store(None, None, secret, prefilled(secret))
    assert cache.lookup("", ("a", 1), secret) == (0, None)
    assert cache.stats()["tenants"] == 1 and cache.tenant_bytes("") == 0


def test_one_tenant_filling_the_cache_evicts_its_own_blocks_not_the_others():
    block_bytes = 2 * 2 * 4 * 2 * 4  # layers * (k, v) * tokens * dim * fp32 bytes
    cache = PrefixCache(block=4, budget_bytes=8 * block_bytes)
    small = list(range(9))  # two blocks
    cache.store("contoso", None, small, prefilled(small))
    for n in range(20):  # acme stores far more than the whole budget, prompt after prompt
        flood = [1000 + 10 * n + t for t in range(9)]
        cache.store("acme", None, flood, prefilled(flood))
    assert cache.stats()["bytes"] <= 8 * block_bytes
    assert cache.lookup("contoso", None, small)[0] == 8  # contoso's blocks stayed
    assert cache.tenant_bytes("acme") == 6 * block_bytes
    # a third tenant storing now takes from the largest holder (acme), never from contoso's two blocks
    other = list(range(500, 509))
    cache.store("fabrikam", None, other, prefilled(other))
    assert cache.lookup("fabrikam", None, other)[0] == 8 and cache.lookup("contoso", None, small)[0] == 8
    assert cache.tenant_bytes("acme") == 4 * block_bytes
