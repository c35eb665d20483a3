"""Radix tree and slot allocator, checked by hand."""
from __future__ import annotations

from tts_engine.engine.cache import RadixCache, SlotAllocator


def make(n=32):
    alloc = SlotAllocator(n)
    return alloc, RadixCache(alloc)


def test_match_split_and_insert():
    alloc, cache = make()
    a = alloc.alloc(5)
    existed, node_a = cache.insert([1, 2, 3, 4, 5], a)
    assert existed == 0 and cache.num_cached == 5
    node = cache.match_prefix([1, 2, 3, 9])
    assert cache.path_slots(node) == a[:3] and node.key == [1, 2, 3] and node.depth == 3   # split there
    b = alloc.alloc(2)
    existed, node_b = cache.insert([1, 2, 3, 7, 8], a[:3] + b)
    assert existed == 3 and node_b.key == [7, 8]
    assert cache.path_slots(cache.match_prefix([1, 2, 3, 7, 8, 9])) == a[:3] + b
    assert cache.match_prefix([2]) is cache.root
    assert cache.cached_len([1, 2, 3, 4, 6]) == 4
    # inserting something already present reports it all as existing and adds nothing
    assert cache.insert([1, 2, 3, 4], alloc.alloc(4))[0] == 4 and cache.num_cached == 7


def test_eviction_is_lru_over_unlocked_leaves():
    alloc, cache = make(10)
    s1, s2, s3 = alloc.alloc(3), alloc.alloc(3), alloc.alloc(3)
    cache.insert([1, 1, 1], s1)
    cache.insert([2, 2, 2], s2)
    cache.insert([3, 3, 3], s3)
    cache.match_prefix([1, 1, 1])                 # 1 is now the most recently used
    node3 = cache.match_prefix([3, 3, 3])
    cache.lock(node3)                             # 3 is in use
    assert alloc.num_free == 1
    assert cache.evict(2) == 3                    # frees the LRU unlocked leaf: 2
    assert cache.match_prefix([2, 2, 2]) is cache.root
    assert cache.path_slots(cache.match_prefix([1, 1, 1])) == s1
    assert cache.evict(100) == 3                  # then 1; 3 stays locked
    assert cache.path_slots(cache.match_prefix([3, 3, 3])) == s3
    cache.unlock(node3)
    assert cache.evictable == 3
    assert cache.evict(100) == 3 and alloc.num_free == 10 and cache.num_cached == 0


def test_evicting_a_leaf_exposes_its_parent():
    alloc, cache = make(8)
    cache.insert([1, 2, 3, 4], alloc.alloc(4))
    cache.insert([1, 2, 5, 6], cache.path_slots(cache.match_prefix([1, 2])) + alloc.alloc(2))
    assert cache.evict(8) == 6 and alloc.num_free == 8


def test_split_keeps_locks():
    alloc, cache = make()
    _, node = cache.insert([1, 2, 3, 4], alloc.alloc(4))
    cache.lock(node)
    cache.match_prefix([1, 2, 9])                 # splits the locked node
    assert cache.evict(100) == 0
    cache.unlock(node)
    assert cache.evict(100) == 4


def test_a_match_from_a_known_prefix_is_the_match_from_the_root():
    """match_prefix(tokens, after=Prefix) on random trees of prompts that extend one another: the
    longest cached prefix (by brute force over the tree's paths) and the very node a walk from the
    root finds, whether the Prefix is right, points at tokens the list does not start with, or at
    a node evicted since; and evicting a leaf makes its parent at least as recent (a match that
    starts below a node does not stamp it)."""
    import random

    from tts_engine.engine.cache import Prefix
    rng = random.Random(random.randrange(1 << 30))      # (conftest seeds random: TTS_TEST_SEED)

    def longest(cache, tokens):
        paths = [[t for n in cache.path(node) for t in n.key] for node in cache._nodes()]
        return max(len(p) for p in paths if p == tokens[:len(p)])

    for _ in range(30):
        alloc, cache = make(4096)
        prefixes = []
        for _ in range(40):
            if prefixes and rng.random() < 0.8:
                after = rng.choice(prefixes)
                tokens = after.tokens[:rng.randint(0, len(after.tokens))] + [
                    rng.randint(0, 3) for _ in range(rng.randint(1, 6))]
                if rng.random() < 0.2:                  # a list that does not start with the Prefix's tokens
                    tokens[rng.randrange(len(tokens))] = 9
            else:
                after, tokens = None, [rng.randint(0, 3) for _ in range(rng.randint(1, 8))]
            limit = rng.choice([None, rng.randint(0, len(tokens))])
            got = cache.match_prefix(tokens, limit, after=after)
            assert got is cache.match_prefix(tokens, limit)
            assert got.depth == longest(cache, tokens[:limit])
            node = cache.match_prefix(tokens)
            _, node = cache.insert(tokens[node.depth:], alloc.alloc(len(tokens) - node.depth), node)
            prefixes.append(Prefix(node, tokens))
            if rng.random() < 0.2:
                cache.evict(rng.randint(1, 20))
    alloc, cache = make(16)
    _, leaf = cache.insert([1, 2, 3, 4], alloc.alloc(4))
    cache.insert([1, 2, 7], cache.path_slots(cache.match_prefix([1, 2])) + alloc.alloc(1))
    parent = leaf.parent
    cache.match_prefix([1, 2, 3, 4, 5], after=Prefix(leaf, [1, 2, 3, 4]))   # stamps the leaf only
    assert leaf.last_access > parent.last_access
    cache.evict(1)                                  # [7], the least recent, goes first
    cache.evict(2)
    assert leaf.parent is None and parent.parent is not None and parent.last_access >= leaf.last_access


def test_a_prefix_into_a_cleared_tree_is_not_followed():
    """After clear() (reset_prefix_cache, or an interrupted run's abort) the slots are free for
    anyone: a Prefix kept from before must not start a match on its old node."""
    from tts_engine.engine.cache import Prefix
    alloc, cache = make(16)
    _, node = cache.insert([1, 2, 3], alloc.alloc(3))
    before = Prefix(node, [1, 2, 3])
    cache.clear()
    assert cache.match_prefix([1, 2, 3, 4], after=before) is cache.root
    _, again = cache.insert([1, 2, 3], alloc.alloc(3))
    assert cache.match_prefix([1, 2, 3, 4], after=before) is again
