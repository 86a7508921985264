"""The simulated worker's KV prefix cache: a token-level radix tree with LRU eviction under a token budget.

Modelled on SGLang's RadixCache: edges are runs of token ids, a partial match splits a node, the paths of
running sequences are locked (never evicted), and once the tree holds more than `capacity` tokens, eviction
removes least recently used unlocked leaves down to 90% of it (locked paths may keep it above).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence


class _Node:
    __slots__ = ("children", "parent", "key", "last", "lock")

    def __init__(self, parent: _Node | None, key: list[int], last: int) -> None:
        self.children: dict[int, _Node] = {}
        self.parent = parent
        self.key = key
        self.last = last
        self.lock = 0


def _common(a: list[int], b: Sequence[int], start: int) -> int:
    """Length of the common prefix of `a` and `b[start:]` (slice compares run in C)."""
    n = min(len(a), len(b) - start)
    if a[:n] == b[start : start + n]:
        return n
    lo, hi = 0, n  # a[:lo] matches, a[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[start : start + mid]:
            lo = mid
        else:
            hi = mid
    return lo


class RadixKV:
    """Token prefix cache. `match` -> matched length; `insert` -> node to lock while a sequence runs."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, int(capacity))
        self._tick = 0
        self.root = _Node(None, [], 0)
        self.root.lock = 1
        self.size = 0
        self.evicted_tokens = 0

    def _touch(self) -> int:
        self._tick += 1
        return self._tick

    def _split(self, node: _Node, at: int) -> _Node:
        """Split `node` so that its first `at` tokens become a new parent; returns that parent."""
        parent = node.parent
        assert parent is not None
        mid = _Node(parent, node.key[:at], node.last)
        mid.lock = node.lock
        parent.children[mid.key[0]] = mid
        node.key = node.key[at:]
        node.parent = mid
        mid.children[node.key[0]] = node
        return mid

    def _walk(self, ids: Sequence[int], create: bool) -> tuple[int, _Node]:
        now = self._touch()
        node, pos, n = self.root, 0, len(ids)
        while pos < n:
            child = node.children.get(ids[pos])
            if child is None:
                break
            k = _common(child.key, ids, pos)
            if k < len(child.key):
                child = self._split(child, k)
            child.last = now
            node, pos = child, pos + k
            if k < len(child.key):  # pragma: no cover - split guarantees full match of `child`
                break
        if create and pos < n:
            leaf = _Node(node, list(ids[pos:]), now)
            node.children[ids[pos]] = leaf
            self.size += n - pos
            node = leaf
        return pos, node

    def match(self, ids: Sequence[int]) -> int:
        """Number of leading tokens of `ids` held in the cache (touches them for LRU)."""
        return self._walk(ids, create=False)[0]

    def insert(self, ids: Sequence[int]) -> tuple[int, _Node]:
        """Insert `ids`; returns (tokens that were already cached, the node ending at `ids`)."""
        return self._walk(ids, create=True)

    @staticmethod
    def lock(node: _Node) -> None:
        while node is not None:
            node.lock += 1
            node = node.parent  # type: ignore[assignment]

    @staticmethod
    def unlock(node: _Node) -> None:
        while node is not None:
            node.lock -= 1
            node = node.parent  # type: ignore[assignment]

    def evict(self) -> int:
        """When over capacity, evict LRU unlocked leaves down to 90% of it (finding the leaves walks the
        tree, so this low-water mark spreads that walk over many inserts). Returns tokens evicted."""
        if self.size <= self.capacity:
            return 0
        low = self.capacity - self.capacity // 10
        heap: list[tuple[int, int, _Node]] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            elif node.lock == 0:
                heap.append((node.last, id(node), node))
        heapq.heapify(heap)
        freed = 0
        while self.size > low and heap:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            assert parent is not None
            del parent.children[node.key[0]]
            self.size -= len(node.key)
            freed += len(node.key)
            if parent is not self.root and not parent.children and parent.lock == 0:
                heapq.heappush(heap, (parent.last, id(parent), parent))
        self.evicted_tokens += freed
        return freed

    def clear(self) -> None:
        self.root = _Node(None, [], 0)
        self.root.lock = 1
        self.size = 0

    def node_count(self) -> int:
        count, stack = 0, [self.root]
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(node.children.values())
        return count - 1
