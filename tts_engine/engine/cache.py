"""KV slot allocator and the prefix index: a token-granular radix tree (SGLang's RadixAttention).

Each tree node holds a run of tokens and the pool slots holding their K/V. Slots in the tree are
never written again, so sharing needs no copy-on-write: a sequence that extends a cached prefix
holds the prefix's last node and lists only the slots of its own tokens. Running sequences lock
the path to their deepest node; eviction frees unlocked leaves, least recently used first. The
evictable leaves sit in a heap kept up to date as the tree changes, so an eviction costs
O(log n) per leaf freed, not a walk of the whole tree (a 40k-node tree took 85 ms per walk).
Each node can also hold its slots on the device (`value`, made by the runner the first time a
sequence is admitted on it), so that a slot-table row of a cached context is filled on the
device, not uploaded (SGLang keeps its node values on the device too). engine/cascade.py
reads the tree to find the context that decoding sequences share.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass


class SlotAllocator:
    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self._free = list(range(num_slots - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError(f"KV pool exhausted: asked for {n} slots, {len(self._free)} free")
        out = self._free[len(self._free) - n:]
        del self._free[len(self._free) - n:]
        return out

    def take(self) -> int:
        """One slot (`alloc(1)` for a decode token, without making a list)."""
        if not self._free:
            raise RuntimeError("KV pool exhausted: asked for 1 slot, 0 free")
        return self._free.pop()

    def free(self, slots: list[int]) -> None:
        self._free.extend(slots)


class Node:
    __slots__ = ("parent", "children", "key", "slots", "value", "lock_ref", "last_access", "depth")

    def __init__(self, parent: "Node | None", key: list[int], slots: list[int]):
        self.parent = parent
        self.depth = (parent.depth if parent is not None else 0) + len(key)   # tokens from the root to my end
        self.children: dict[int, Node] = {}
        self.key = key
        self.slots = slots
        self.value = None               # the slots as a device tensor, once the runner needed them
        self.lock_ref = 0
        self.last_access = 0


@dataclass
class Prefix:
    """Where a token list's cached path ended: `node`, whose path from the root holds
    tokens[:node.depth]. It stays true while the node is in the tree (a split keeps the node as
    the lower part, with the same depth), so a later list that starts with those tokens can be
    matched from `node` on instead of from the root (`match_prefix`'s `after`)."""
    node: Node
    tokens: list[int]


class RadixCache:
    def __init__(self, allocator: SlotAllocator):
        self.allocator = allocator
        self.root = Node(None, [], [])
        self.root.lock_ref = 1          # never evicted
        self._clock = itertools.count(1)
        self.num_cached = 0             # tokens held by the tree
        self.num_nodes = 0              # nodes besides the root
        # (last_access, tie, node) of leaves that were evictable when pushed. An entry is stale
        # once its node is touched again, locked, given a child or evicted: stale entries are
        # skipped when popped and purged when they outnumber the nodes.
        self._heap: list[tuple[int, int, Node]] = []
        self._tie = itertools.count()
        self.work = 0                   # heap entries examined (tests bound eviction work with it)

    # ------------------------------------------------------------ lookup
    def match_prefix(self, tokens: list[int], limit: int | None = None, after: Prefix | None = None) -> Node:
        """The node where the longest cached prefix of tokens[:limit] ends (split so that the
        boundary is exact: its depth is the prefix's length). after: a Prefix that tokens may
        extend; when its node is still in the tree and tokens start with its tokens (one
        comparison in C), the walk starts there, so a long prompt that extends a cached one
        costs its new part, not a visit of every node on its path. (The nodes above are not
        stamped as used then: `evict` makes a parent as recent as the children it loses.)"""
        node, i = self.root, 0
        now = next(self._clock)
        node.last_access = now
        end = len(tokens) if limit is None else min(limit, len(tokens))
        if after is not None and after.node.parent is not None and after.node.depth <= end:
            d, known = after.node.depth, after.tokens
            if tokens[:d] == (known if len(known) == d else known[:d]):
                node, i = after.node, d
                node.last_access = now
        while i < end:
            child = node.children.get(tokens[i])
            if child is None:
                break
            n = _common_len(child.key, tokens, i, end)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            node, i = child, i + n
        self._offer(node)               # (only the last node of a path can be a leaf)
        return node

    def _split(self, node: Node, n: int) -> Node:
        """Cut `node` after its first n tokens; return the new upper part."""
        upper = Node(node.parent, node.key[:n], node.slots[:n])
        upper.lock_ref, upper.last_access = node.lock_ref, node.last_access
        upper.children = {node.key[n]: node}
        node.parent.children[node.key[0]] = upper
        self.num_nodes += 1
        node.parent, node.key, node.slots = upper, node.key[n:], node.slots[n:]
        if node.value is not None:      # views: a split copies nothing on the device
            upper.value, node.value = node.value[:n], node.value[n:]
        return upper

    @staticmethod
    def path_slots(node: Node) -> list[int]:
        """The slots of the tokens from the root to node's end (O(depth): for checks, not the step)."""
        return [s for n in RadixCache.path(node) for s in n.slots]

    @staticmethod
    def path(node: Node) -> list[Node]:
        """The nodes from the root's child down to node."""
        out = []
        while node.parent is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    def insert(self, tokens: list[int], slots: list[int], below: Node | None = None) -> tuple[int, Node]:
        """Add tokens -> slots, as a continuation of node `below`'s path (default: from the root;
        a sequence extends the node it holds, so that publishing costs its new tokens, not its
        context). Returns (how many leading tokens were already cached, last node). Already-cached
        positions keep the tree's slots; the caller frees its own copies."""
        node, i = below or self.root, 0
        now = next(self._clock)
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                leaf = Node(node, tokens[i:], slots[i:])
                leaf.last_access = now
                node.children[tokens[i]] = leaf
                self.num_cached += len(leaf.key)
                self.num_nodes += 1
                self._offer(leaf)
                return i, leaf
            n = _common_len(child.key, tokens, i)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            node, i = child, i + n
        self._offer(node)
        return i, node

    def cached_len(self, tokens: list[int], below: Node | None = None) -> int:
        """Length of the cached prefix of `tokens` (continuing node `below`'s path, default the
        root), without touching the tree."""
        node, i = below or self.root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            n = _common_len(child.key, tokens, i)
            i += n
            if n < len(child.key):
                break
            node = child
        return i

    # ------------------------------------------------------------ locks
    def lock(self, node: Node) -> None:
        while node is not None:
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: Node) -> None:
        """Drop a lock. A node that becomes evictable counts as used until now."""
        leaf = node
        while node is not None:
            node.lock_ref -= 1
            node = node.parent
        if leaf.lock_ref == 0:
            leaf.last_access = next(self._clock)
            self._offer(leaf)

    # ------------------------------------------------------------ eviction
    def evict(self, num_tokens: int) -> int:
        """Free at least num_tokens slots from unlocked leaves (LRU first) if possible; return how many."""
        freed = 0
        while freed < num_tokens and self._heap:
            stamp, _, leaf = heapq.heappop(self._heap)
            self.work += 1
            if not self._evictable(leaf, stamp):
                continue
            self.allocator.free(leaf.slots)
            freed += len(leaf.slots)
            self.num_cached -= len(leaf.key)
            self.num_nodes -= 1
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            leaf.parent = None          # marks it gone for its other heap entries
            # a prefix was used whenever its extension was (a match may start below it)
            parent.last_access = max(parent.last_access, leaf.last_access)
            self._offer(parent)
        return freed

    def _evictable(self, node: Node, stamp: int) -> bool:
        return (node.last_access == stamp and node.parent is not None and not node.children
                and node.lock_ref == 0)

    def _offer(self, node: Node) -> None:
        """Queue node for eviction if it is an unlocked leaf (a stale entry for it may remain)."""
        if node is self.root or node.children or node.lock_ref:
            return
        heapq.heappush(self._heap, (node.last_access, next(self._tie), node))
        if len(self._heap) > 2 * self.num_nodes + 64:
            self.work += len(self._heap)
            self._heap = [e for e in self._heap if self._evictable(e[2], e[0])]
            heapq.heapify(self._heap)

    @property
    def evictable(self) -> int:
        return sum(len(n.key) for n in self._nodes() if n.lock_ref == 0)

    def clear(self) -> None:
        """Drop every cached entry and give all their slots back (no sequence may hold locks)."""
        for n in list(self._nodes()):
            if n is not self.root:
                self.allocator.free(n.slots)
                # gone: a Prefix that names it is not followed (and keeps nothing else alive)
                n.parent, n.children, n.value = None, {}, None
        self.root.children.clear()
        self.num_cached = self.num_nodes = 0
        self._heap = []

    def _nodes(self):
        stack = [self.root]
        while stack:
            n = stack.pop()
            yield n
            stack.extend(n.children.values())


def _common_len(key: list[int], tokens: list[int], start: int, end: int | None = None) -> int:
    """How many leading tokens of key equal tokens[start:end]."""
    n = min(len(key), (len(tokens) if end is None else end) - start)
    if key[:n] == tokens[start:start + n]:
        return n
    i = 0
    while i < n and key[i] == tokens[start + i]:
        i += 1
    return i
