"""The prefix index alone: token lists and byte counts, no model."""
from dataclasses import dataclass

import pytest

from slotserve.kvcache.prefix_index import (EvictParams, InsertParams, MatchPrefixParams, PrefixIndex,
                                            key_of, path_to)


@dataclass
class Run:
    """A value standing for rows start..end-1 of the key: one byte a token."""
    start: int
    end: int

    @property
    def nbytes(self):
        return self.end - self.start

    def split(self, at):
        return Run(self.start, self.start + at), Run(self.start + at, self.end)


def insert(index, key):
    return index.insert(InsertParams(key, lambda s, e: Run(s, e)))


def match(index, key, touch=True):
    return index.match_prefix(MatchPrefixParams(key, touch))


def test_match_finds_the_longest_held_prefix():
    index = PrefixIndex()
    insert(index, [1, 2, 3, 4, 5])
    insert(index, [1, 2, 9])
    assert match(index, [1, 2, 3, 4, 5, 6]).n_match == 5
    assert match(index, [1, 2, 3, 7]).n_match == 3
    assert match(index, [1, 2, 9, 9]).n_match == 3
    assert match(index, [2, 2]).n_match == 0
    assert match(index, []).n_match == 0
    r = match(index, [1, 2, 3, 7])
    assert r.n_in_node == 1 and list(r.last_node.key) == [3, 4, 5]


def test_a_shared_prefix_is_held_once_and_only_new_runs_get_values():
    index = PrefixIndex()
    made = []

    def value_for(s, e):
        made.append((s, e))
        return Run(s, e)

    index.insert(InsertParams([1, 2, 3, 4, 5], value_for))
    index.insert(InsertParams([1, 2, 3, 8, 9, 10], value_for))
    assert made == [(0, 5), (3, 6)]  # the second entry built a value for its 3 new tokens only
    assert index.n_tokens == 8 and index.nbytes == 8 and index.n_nodes == 3
    # the split kept every token's value: head 0..3 shared, the old tail 3..5, the new run 3..6
    runs = sorted((list(key_of(n)), n.value.start, n.value.end) for n in path_to(match(index, [1, 2, 3, 4]).last_node))
    assert runs == [([1, 2, 3], 0, 3), ([1, 2, 3, 4, 5], 3, 5)]
    # a prefix of a held entry, or the entry again, adds nothing
    assert insert(index, [1, 2]).n_existing == 2 and index.n_tokens == 8 and index.nbytes == 8
    assert insert(index, [1, 2, 3, 4, 5]).n_existing == 5 and index.n_tokens == 8


def test_insert_reports_the_node_ending_at_the_key():
    index = PrefixIndex()
    insert(index, [1, 2, 3, 4])
    r = insert(index, [1, 2])
    assert list(key_of(r.node)) == [1, 2] and r.node.value == Run(0, 2)


def test_evict_drops_least_recently_used_leaves_first():
    index = PrefixIndex()
    for key in ([1, 2, 3], [1, 2, 4], [5, 6]):
        insert(index, key)
    match(index, [1, 2, 3])  # a use: [1, 2, 4] and [5, 6] are now older
    evicted = []
    r = index.evict(EvictParams(2, on_evict=lambda n: evicted.append(list(key_of(n)))))
    assert evicted == [[1, 2, 4], [5, 6]] and r.n_bytes == 3 and r.n_nodes == 2
    assert match(index, [1, 2, 3]).n_match == 3 and index.nbytes == 3


def test_a_parent_left_without_children_is_evicted_after_them():
    index = PrefixIndex()
    insert(index, [1, 2, 3])
    insert(index, [1, 2, 4])
    evicted = []
    index.evict(EvictParams(10, on_evict=lambda n: evicted.append(list(key_of(n)))))
    assert evicted == [[1, 2, 3], [1, 2, 4], [1, 2]]
    assert index.nbytes == 0 and index.n_tokens == 0 and index.n_nodes == 0 and not index.root.children


def test_locked_paths_are_not_evicted():
    index = PrefixIndex()
    node = insert(index, [1, 2, 3]).node
    insert(index, [1, 2, 4])
    index.lock(node)
    index.evict(EvictParams(100))
    assert match(index, [1, 2, 3]).n_match == 3 and match(index, [1, 2, 4]).n_match == 2
    index.unlock(node)
    index.evict(EvictParams(100))
    assert index.nbytes == 0
    with pytest.raises(RuntimeError):
        index.unlock(node)


def test_a_split_inside_a_locked_node_keeps_the_lock():
    index = PrefixIndex()
    node = insert(index, [1, 2, 3, 4]).node
    index.lock(node)
    insert(index, [1, 2, 9])  # splits the locked node
    index.evict(EvictParams(100))
    assert match(index, [1, 2, 3, 4]).n_match == 4 and match(index, [1, 2, 9]).n_match == 2
    index.unlock(node)
    assert all(n.lock_ref == 0 for n in path_to(node))


def test_evict_by_tokens():
    index = PrefixIndex()
    insert(index, [1, 2, 3])
    insert(index, [4, 5])
    index.evict(EvictParams(n_tokens=1))
    assert index.n_tokens == 2 and match(index, [4, 5]).n_match == 2


def test_remove_keeps_the_entries_below():
    index = PrefixIndex()
    short = insert(index, [1, 2]).node
    insert(index, [1, 2, 3])
    index.remove(short)
    assert match(index, [1, 2, 3]).n_match == 3 and short.value is None and index.attached(short)
    leaf = match(index, [1, 2, 3]).last_node
    index.remove(leaf)  # nothing below it any more: the valueless run [1, 2] goes too
    assert not index.attached(leaf) and not index.attached(short) and index.n_nodes == 0


def test_lookup_touch_is_optional():
    index = PrefixIndex()
    insert(index, [1])
    insert(index, [2])
    match(index, [1], touch=False)
    evicted = []
    index.evict(EvictParams(1, on_evict=lambda n: evicted.append(list(key_of(n)))))
    assert evicted == [[1]]
