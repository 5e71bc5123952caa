"""Where a request goes: the replica most likely to hold its prompt's prefix, unless that one is clearly busier.

The index is over text, not token ids: the front has no tokenizer, and a conversation's next turn extends
its previous prompt text as it extends its tokens (Ray Serve LLM's PrefixCacheAffinityRouter and SGLang's
router keep text trees too). Each replica has its own radix tree (kvcache/prefix_index.py, keyed by code
points), fed with what was routed there and trimmed least recently used first to what the replica can
hold (its slots' context and RAM tier, in tokens, which the replica reports, at CHARS_PER_TOKEN), a stand-in
for the replica's own LRU eviction; a replica that died or was replaced loses its tree (its slots and RAM
tier went with its process).

Load is the number of requests the front has in flight on each replica: counted here, not probed, so a slow
replica never stalls a routing decision. Serve creates one router per deployment handle, in the front's
process, and calls it on its own event-loop thread; the table they share is kept here, by application
name, behind a lock, so the front can read the counters for /metrics and the live replicas for /health.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

from ..kvcache.prefix_index import EvictParams, InsertParams, MatchPrefixParams, PrefixIndex

PREFIX = "prefix"
ROUND_ROBIN = "round-robin"
POLICIES = (PREFIX, ROUND_ROBIN)
CHARS_PER_TOKEN = 4  # English text in LLaMA-style vocabularies, roughly


@dataclass(frozen=True)
class RouteHint:
    """What the front tells the router about one call: the prompt text to match, or a replica it must reach
    (an id_slot, a slot action, a fan-out)."""
    text: str = ""
    rank: int | None = None


@dataclass
class _Chars:
    """A prefix index value: a run of characters (what eviction counts)."""
    nbytes: int

    def split(self, at: int):
        return _Chars(at), _Chars(self.nbytes - at)


@dataclass
class RoutingCounters:
    routed: int = 0
    prefix_hits: int = 0  # went to the replica holding the longest prefix
    fallbacks: int = 0  # a prefix was held, but by a replica clearly busier: went to the least loaded
    cold: int = 0  # no replica held enough of the prompt: went to the least loaded
    pinned: int = 0  # an id_slot, a slot action or a fan-out named the replica
    round_robin: int = 0


@dataclass
class RoutingTable:
    policy: str = PREFIX
    imbalance: int = 4  # in-flight requests beyond the least-loaded replica's that make a replica "clearly busier"
    min_match: float = 0.1  # shortest useful prefix, as a share of the prompt (Ray Serve LLM's default)
    budget_chars: int = 4_000_000  # per replica, until it reports its capacity
    budgets: dict[int, int] = field(default_factory=dict)  # rank -> characters its tree may hold
    counters: RoutingCounters = field(default_factory=RoutingCounters)
    live: dict[int, str] = field(default_factory=dict)  # rank -> Serve's replica id
    in_flight: dict[int, int] = field(default_factory=dict)
    trees: dict[int, PrefixIndex] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _turn: itertools.count = field(default_factory=itertools.count)

    # ---- replicas ---------------------------------------------------------------------------------
    def set_live(self, replicas: dict[int, str], capacity_tokens: dict[int, int] | None = None) -> None:
        """The replicas Serve reports running, by rank (and how many prompt tokens each can keep). A rank now
        held by another replica (a restart) or by none starts again with an empty tree: what its process
        cached is gone."""
        with self.lock:
            for rank, n in (capacity_tokens or {}).items():
                self.budgets[rank] = n * CHARS_PER_TOKEN
            for rank, replica_id in self.live.items():
                if replicas.get(rank) != replica_id:
                    self.trees.pop(rank, None)
                    self.in_flight.pop(rank, None)
            self.live = dict(replicas)

    def ready_ranks(self) -> list[int]:
        with self.lock:
            return sorted(self.live)

    # ---- decisions --------------------------------------------------------------------------------
    def choose(self, hint: RouteHint, candidates: list[int]) -> int | None:
        """The rank to send this call to, among `candidates` (ranks Serve can route to now); None when the
        replica it must reach is not among them (the router waits for it to come back)."""
        if not candidates:
            return None
        with self.lock:
            if hint.rank is not None:
                return hint.rank if hint.rank in candidates else None
            if self.policy == ROUND_ROBIN:
                return sorted(candidates)[next(self._turn) % len(candidates)]
            load = {r: self.in_flight.get(r, 0) for r in candidates}
            # least loaded; between equals, the one whose tree holds least (a new conversation spreads out)
            least = min(candidates, key=lambda r: (load[r], self._held(r), r))
            best, n_best = self._longest_match(hint.text, candidates)
            if best is None or n_best < max(1, self.min_match * len(hint.text)):
                return least
            if load[best] - load[least] > self.imbalance:
                return least
            return best

    def _held(self, rank: int) -> int:
        tree = self.trees.get(rank)
        return tree.nbytes if tree is not None else 0

    def _longest_match(self, text: str, candidates: list[int]) -> tuple[int | None, int]:
        key = _key(text)
        best, n_best = None, 0
        for rank in sorted(candidates):
            tree = self.trees.get(rank)
            if tree is None or not key:
                continue
            n = tree.match_prefix(MatchPrefixParams(key, touch=False)).n_match
            if n > n_best:
                best, n_best = rank, n
        return best, n_best

    # ---- what happened ----------------------------------------------------------------------------
    def routed(self, hint: RouteHint, rank: int) -> None:
        """A call went to `rank`: count it, and remember its prompt there."""
        with self.lock:
            self.in_flight[rank] = self.in_flight.get(rank, 0) + 1
            self._count(hint, rank)
            if hint.rank is None and hint.text:
                tree = self.trees.setdefault(rank, PrefixIndex())
                tree.insert(InsertParams(_key(hint.text), value_for=lambda start, end: _Chars(end - start)))
                budget = self.budgets.get(rank, self.budget_chars)
                if tree.nbytes > budget:
                    tree.evict(EvictParams(n_bytes=tree.nbytes - budget))

    def completed(self, rank: int) -> None:
        with self.lock:
            if self.in_flight.get(rank, 0) > 0:
                self.in_flight[rank] -= 1

    def _count(self, hint: RouteHint, rank: int) -> None:
        c = self.counters
        c.routed += 1
        if hint.rank is not None:
            c.pinned += 1
        elif self.policy == ROUND_ROBIN:
            c.round_robin += 1
        else:
            best, n_best = self._longest_match(hint.text, list(self.live) or [rank])
            if best is None or n_best < max(1, self.min_match * len(hint.text)):
                c.cold += 1
            elif best == rank:
                c.prefix_hits += 1
            else:
                c.fallbacks += 1

    def snapshot(self) -> tuple[RoutingCounters, dict[int, int]]:
        with self.lock:
            return RoutingCounters(**vars(self.counters)), dict(self.in_flight)


def _key(text: str) -> list[int]:
    return [ord(c) for c in text]


_TABLES: dict[str, RoutingTable] = {}
_TABLES_LOCK = threading.Lock()


def table(name: str, **settings) -> RoutingTable:
    """The routing table of application `name` in this process, made on first use with `settings`."""
    with _TABLES_LOCK:
        if name not in _TABLES:
            _TABLES[name] = RoutingTable(**settings)
        return _TABLES[name]
