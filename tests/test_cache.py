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
