"""A radix tree over token ids: which stored prompt states share how much of a prompt.

The interface is SGLang's mem_cache one: ``match_prefix``, ``insert`` and ``evict`` with typed
parameters and results. A node holds a run of token ids (its key), the value stored for that run,
its children by first token, its parent, a lock count and a last-access time. A lookup walks one
path, so it costs O(prompt length) whatever the number of stored states; states sharing a prefix
share the nodes of that prefix, so the shared part (tokens and whatever the value holds) is kept once.

Values are opaque to the index except for two things: ``nbytes`` (what they cost, for eviction by
bytes) and ``split(at)``, which a node calls when a new key diverges inside it and it must become two
nodes; it returns the values of the first ``at`` tokens and of the rest (either may be None). The RAM
tier's values are K/V rows, split by rows; the disk tier's values mark whole files and stay with the
part that ends where the file ends.

Not thread-safe by design: each tier's index belongs to the engine thread.
"""
from __future__ import annotations

import heapq
import itertools
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence


def as_key(tokens: Sequence[int]) -> array:
    """Token ids as a compact int32 run: 4 bytes a token instead of a Python int object each, and
    slice comparisons run in C."""
    return tokens if isinstance(tokens, array) and tokens.typecode == "i" else array("i", tokens)


@dataclass(eq=False)
class TreeNode:
    key: array = field(default_factory=lambda: array("i"))
    value: Any = None
    parent: TreeNode | None = None
    children: dict[int, TreeNode] = field(default_factory=dict)
    lock_ref: int = 0
    last_access: float = 0

    @property
    def nbytes(self) -> int:
        return 0 if self.value is None else self.value.nbytes

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass(frozen=True)
class MatchPrefixParams:
    key: Sequence[int]
    touch: bool = True  # count the lookup as a use of the matched nodes (LRU)


@dataclass(frozen=True)
class MatchResult:
    n_match: int  # leading tokens of the key the index holds
    last_node: TreeNode  # deepest node sharing tokens with the key (the root if none)
    n_in_node: int  # how many of last_node's own tokens matched (< len(key) when the key diverges inside it)

    @property
    def nodes(self) -> list[TreeNode]:
        """Root's children down to last_node: whose values hold the first n_match tokens."""
        return path_to(self.last_node)


@dataclass(frozen=True)
class InsertParams:
    key: Sequence[int]
    # value_for(start, end): the value of key[start:end], a run the index does not hold yet;
    # called at most once, so a value is built (e.g. its rows copied) only for the new part
    value_for: Callable[[int, int], Any] | None = None


@dataclass(frozen=True)
class InsertResult:
    n_existing: int  # leading tokens of the key the index held already
    node: TreeNode  # the node whose key ends exactly where the inserted key ends


@dataclass(frozen=True)
class EvictParams:
    n_bytes: int = 0  # free at least this many bytes (fewer when everything left is locked)
    n_tokens: int = 0  # and at least this many tokens
    # called with each leaf before it is detached, while its whole path is still in place
    on_evict: Callable[[TreeNode], None] | None = None


@dataclass(frozen=True)
class EvictResult:
    n_bytes: int
    n_nodes: int


def path_to(node: TreeNode) -> list[TreeNode]:
    out = []
    while node.parent is not None:
        out.append(node)
        node = node.parent
    out.reverse()
    return out


def key_of(node: TreeNode) -> array:
    """The whole token run from the root to the end of `node`."""
    out = array("i")
    for n in path_to(node):
        out.extend(n.key)
    return out


def _common_length(a: array, b: array, start: int) -> int:
    """How many leading tokens of `a` equal b[start:] (a's length at most)."""
    n = min(len(a), len(b) - start)
    if a[:n] == b[start:start + n]:  # the usual case, in C
        return n
    i = 0
    while a[i] == b[start + i]:
        i += 1
    return i


class PrefixIndex:
    def __init__(self, clock: Callable[[], float] | None = None):
        # a logical clock by default: orders uses exactly, and tests need no sleeping
        self.clock = clock or itertools.count(1).__next__
        self.root = TreeNode()
        self.nbytes = 0  # sum of the values' nbytes
        self.n_tokens = 0  # tokens held, each shared run counted once
        self.n_nodes = 0

    # ------------------------------------------------------------------ lookup

    def match_prefix(self, params: MatchPrefixParams) -> MatchResult:
        key = as_key(params.key)
        node, i, n_in_node = self.root, 0, 0
        now = self.clock() if params.touch else None
        while i < len(key):
            child = node.children.get(key[i])
            if child is None:
                break
            m = _common_length(child.key, key, i)
            node, i, n_in_node = child, i + m, m
            if now is not None:
                child.last_access = now
            if m < len(child.key):
                break
        return MatchResult(i, node, n_in_node)

    # ------------------------------------------------------------------ insert

    def insert(self, params: InsertParams) -> InsertResult:
        key = as_key(params.key)
        node, i, now = self.root, 0, self.clock()
        while i < len(key):
            child = node.children.get(key[i])
            if child is None:
                value = params.value_for(i, len(key)) if params.value_for else None
                leaf = TreeNode(key=key[i:], value=value, parent=node, last_access=now)
                node.children[key[i]] = leaf
                self._added(leaf)
                return InsertResult(i, leaf)
            m = _common_length(child.key, key, i)
            if m < len(child.key):
                child = self.split(child, m)
            child.last_access = now
            node, i = child, i + m
        return InsertResult(len(key), node)

    def split(self, node: TreeNode, at: int) -> TreeNode:
        """Make node's first `at` tokens a node of their own (returned), with node as its only child."""
        head_value, tail_value = node.value.split(at) if node.value is not None else (None, None)
        before = node.nbytes
        head = TreeNode(key=node.key[:at], value=head_value, parent=node.parent,
                        lock_ref=node.lock_ref, last_access=node.last_access)
        head.parent.children[head.key[0]] = head
        node.key, node.value, node.parent = node.key[at:], tail_value, head
        head.children[node.key[0]] = node
        self.nbytes += head.nbytes + node.nbytes - before
        self.n_nodes += 1
        return head

    def _added(self, node: TreeNode) -> None:
        self.nbytes += node.nbytes
        self.n_tokens += len(node.key)
        self.n_nodes += 1

    def resized(self, node: TreeNode, old_nbytes: int) -> None:
        """node.value's nbytes changed from old_nbytes (e.g. an estimate made exact)."""
        self.nbytes += node.nbytes - old_nbytes

    def set_value(self, node: TreeNode, value: Any) -> None:
        self.nbytes += (0 if value is None else value.nbytes) - node.nbytes
        node.value = value

    # ------------------------------------------------------------------ locks

    def lock(self, node: TreeNode) -> None:
        """Keep node and its ancestors from eviction (a state being read or extended)."""
        while node.parent is not None:
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: TreeNode) -> None:
        while node.parent is not None:
            if node.lock_ref <= 0:
                raise RuntimeError("unlock without a matching lock")
            node.lock_ref -= 1
            node = node.parent

    # ------------------------------------------------------------------ removal

    def attached(self, node: TreeNode) -> bool:
        """Whether node is still in the tree (not evicted or removed since it was found)."""
        while node.parent is not None:
            if node.parent.children.get(node.key[0]) is not node:
                return False
            node = node.parent
        return node is self.root

    def remove(self, node: TreeNode) -> None:
        """Drop node's value; the node itself and valueless ancestors go when nothing is below them."""
        self.set_value(node, None)
        self._prune(node)

    def _detach(self, node: TreeNode) -> None:
        del node.parent.children[node.key[0]]
        self.nbytes -= node.nbytes
        self.n_tokens -= len(node.key)
        self.n_nodes -= 1

    def _prune(self, node: TreeNode) -> TreeNode:
        """Detach node and its ancestors while they are valueless, unlocked leaves (a run that leads
        to no value is worth nothing); returns the first node kept."""
        while node.parent is not None and node.is_leaf and node.value is None and node.lock_ref == 0:
            parent = node.parent
            self._detach(node)
            node = parent
        return node

    def leaves(self) -> Iterator[TreeNode]:
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            if node.is_leaf:
                yield node
            else:
                stack.extend(node.children.values())

    def evict(self, params: EvictParams) -> EvictResult:
        """Drop least recently used unlocked leaves until n_bytes and n_tokens are freed; a parent
        left without children becomes a leaf and may go next (its run is still a valid, shorter state)."""
        heap = [(n.last_access, id(n), n) for n in self.leaves() if n.lock_ref == 0]
        heapq.heapify(heap)
        freed = count = 0
        n_tokens = self.n_tokens
        while heap and (freed < params.n_bytes or n_tokens - self.n_tokens < params.n_tokens):
            _, _, node = heapq.heappop(heap)
            if params.on_evict is not None and node.value is not None:
                params.on_evict(node)
            freed += node.nbytes
            count += 1
            parent = node.parent
            self._detach(node)
            parent = self._prune(parent)
            if parent.parent is not None and parent.is_leaf and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access, id(parent), parent))
        return EvictResult(freed, count)

    def reset(self) -> None:
        self.root = TreeNode()
        self.nbytes = self.n_tokens = self.n_nodes = 0
