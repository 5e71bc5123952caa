"""The disk prompt cache with real files: restarts, damaged and foreign entries, the size limit."""
import json
import logging
import os
import threading

import numpy as np
import pytest

from slotserve.kvcache.disk_tier import DiskTier, MiB, entry_name
from slotserve.kvcache.persist import ModelIdentity
from slotserve.kvcache.prompt_state import load_into
from slotserve.kvcache.ram_tier import RamTier
from test_ram_tier import N_LAYER, N_VOCAB, blank, filled, same_rows
from tiny import litter

MODEL = ModelIdentity("tiny", "fp-tiny", N_LAYER, 8, N_VOCAB)


def state_of(tokens, logits=True):
    """The whole state of a filled cache, as the RAM tier would spill it."""
    ram = RamTier(8)
    ram.store_cache(filled(tokens, logits=logits))
    return ram.state(ram.lookup(tokens), "f16")


@pytest.fixture
def tiers(tmp_path):
    made = []

    def make(**kw):
        kw.setdefault("model", MODEL)
        disk = DiskTier(tmp_path, kv_type="f16", **kw)
        made.append(disk)
        return disk
    yield make
    for disk in made:
        disk.close()


def entries(path):
    return sorted(p.name for p in path.iterdir() if p.name.endswith(".bin"))


def restored(disk, prompt):
    hit = disk.lookup(prompt)
    return hit, (disk.load(hit) if hit else None)


def test_a_state_written_is_found_after_a_restart(tiers, tmp_path):
    disk = tiers()
    tokens = list(range(10, 40))
    assert disk.submit_write(state_of(tokens)).result() > 0
    disk.close()
    assert disk.nbytes == sum(p.stat().st_size for p in tmp_path.iterdir())  # the estimate made exact
    again = tiers()
    hit, state = restored(again, tokens + [1, 2])
    assert hit.n_match == 30 and state.tokens == tokens
    dst = blank()
    load_into(dst, state, 30)
    assert same_rows(dst, filled(tokens), 30) and dst.logits[0] == 30
    assert again.nbytes == sum(p.stat().st_size for p in tmp_path.iterdir())  # file and sidecar counted


def test_a_longer_entry_is_read_and_truncated_to_the_shared_prefix(tiers):
    disk = tiers()
    disk.submit_write(state_of([1, 2, 3, 4, 5, 6, 7]))
    hit, state = restored(disk, [1, 2, 3, 9])
    assert hit.n_match == 3
    dst = blank()
    load_into(dst, state, hit.n_match)
    assert dst.tokens == [1, 2, 3] and same_rows(dst, filled([1, 2, 3, 4, 5, 6, 7]), 3) and dst.logits is None


def test_prefixes_are_replaced_and_contained_states_not_written(tiers, tmp_path):
    disk = tiers()
    disk.submit_write(state_of([1, 2, 3]))
    disk.submit_write(state_of([1, 2, 3, 4, 5]))
    assert disk.submit_write(state_of([1, 2, 3, 4])) is None  # held whole by [1..5]
    disk.submit_write(state_of([1, 2, 9]))
    disk.close()
    assert entries(tmp_path) == sorted([entry_name([1, 2, 3, 4, 5]), entry_name([1, 2, 9])])
    again = tiers()
    assert again.lookup([1, 2, 3, 4, 5]).entry.name == entry_name([1, 2, 3, 4, 5])
    again.load(again.lookup([1, 2, 9]))  # a use: the branch to take from a shared prefix
    assert again.lookup([1, 2]).entry.name == entry_name([1, 2, 9])


def test_the_size_limit_holds_and_the_least_recently_used_go(tiers, tmp_path):
    disk = tiers()
    disk.submit_write(state_of([1] * 40)).result()
    size = disk.nbytes
    disk.close()
    for p in tmp_path.iterdir():
        p.unlink()
    disk = tiers(limit_mib=1)
    disk.limit_bytes = int(2.5 * size)  # room for two
    for i in (1, 2):
        disk.submit_write(state_of([i] * 40))
    disk.load(disk.lookup([1] * 40))  # a use: [2]*40 is now the oldest
    disk.submit_write(state_of([3] * 40))
    disk.close()
    assert entries(tmp_path) == sorted([entry_name([1] * 40), entry_name([3] * 40)])
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= disk.limit_bytes
    assert disk.nbytes <= disk.limit_bytes


def test_a_lower_limit_after_a_restart_evicts_the_least_recently_used(tiers, tmp_path):
    disk = tiers()
    for i in (1, 2):
        disk.submit_write(state_of([i] * 30))
    disk.close()
    one = disk.nbytes / 2
    os.utime(tmp_path / entry_name([1] * 30), (2e9, 2e9))  # [1]*30 was read last (a read touches the file)
    os.utime(tmp_path / entry_name([2] * 30), (1e9, 1e9))
    again = tiers(limit_mib=1.5 * one / MiB)
    again.drain()
    assert again.n_entries == 1 and entries(tmp_path) == [entry_name([1] * 30)]


def test_an_entry_over_the_whole_limit_is_not_written(tiers):
    disk = tiers(limit_mib=0)
    assert disk.submit_write(state_of([1, 2, 3])) is None and disk.nbytes == 0


def test_a_damaged_entry_is_skipped_deleted_and_never_served(tiers, tmp_path, caplog):
    disk = tiers()
    disk.submit_write(state_of([5, 6, 7, 8]))
    disk.close()
    path = tmp_path / entry_name([5, 6, 7, 8])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the K/V: only the checksum can tell
    path.write_bytes(bytes(data))
    again = tiers()
    hit = again.lookup([5, 6, 7, 8])
    with caplog.at_level(logging.WARNING, "slotserve.kvcache"):
        assert again.load(hit) is None
    assert "crc32 mismatch" in caplog.text and again.lookup([5, 6, 7, 8]) is None
    again.close()
    assert entries(tmp_path) == [] and litter(tmp_path) == []


@pytest.mark.parametrize("damage", ["fingerprint", "kv_type", "format", "tokens", "size", "no sidecar", "json"])
def test_a_foreign_or_broken_entry_is_dropped_at_start(tiers, tmp_path, caplog, damage):
    disk = tiers()
    disk.submit_write(state_of([5, 6, 7, 8]))
    disk.close()
    side = tmp_path / (entry_name([5, 6, 7, 8]) + ".meta.json")
    meta = json.loads(side.read_text())
    if damage == "no sidecar":
        side.unlink()
    elif damage == "json":
        side.write_text("{not json")
    else:
        change = {"fingerprint": ("model_fingerprint", "fp-other"), "kv_type": ("kv_type", "f32"),
                  "format": ("format", "something/9"), "tokens": ("tokens", [5, 6, 7, 9]),
                  "size": ("size", 12)}[damage]
        meta[change[0]] = change[1]
        side.write_text(json.dumps(meta))
    (tmp_path / "notes.txt").write_text("not ours")
    with caplog.at_level(logging.WARNING, "slotserve.kvcache"):
        again = tiers()
    assert "skipping and deleting" in caplog.text and again.lookup([5, 6, 7, 8]) is None
    assert litter(tmp_path) == ["notes.txt"]  # the entry went; what is not an entry stays


def test_writes_and_reads_run_off_the_engine_thread_in_order(tiers):
    disk = tiers()
    gate = threading.Event()
    disk._io.submit(gate.wait)  # hold the I/O thread: the engine must not wait for it
    future = disk.submit_write(state_of([4, 4, 4]))
    hit = disk.lookup([4, 4, 4, 4])  # the index knows the entry at once
    read = disk.read(hit)
    assert not future.done() and not read.done()
    gate.set()
    state = (read.future.exception(), disk.complete(read))[1]  # queued after the write: finds it written
    assert state.tokens == [4, 4, 4] and future.done()


def test_the_write_queue_is_bounded(tiers):
    disk = tiers(max_pending_mib=0)
    gate = threading.Event()
    disk._io.submit(gate.wait)
    assert disk.submit_write(state_of([1, 1])) is None and disk.n_dropped == 1
    gate.set()


def test_ram_spills_to_disk_and_the_state_comes_back(tiers):
    disk = tiers()
    ram = RamTier(8, spill=disk.submit_write)
    src = filled(list(range(50)))
    ram.store_cache(src)
    ram.store_cache(filled(list(range(20)) + [7, 7]))
    ram.flush()  # e.g. shutdown or sleep: everything to disk
    disk.close()
    again = tiers()
    for tokens in (list(range(50)), list(range(20)) + [7, 7]):
        hit, state = restored(again, tokens)
        dst = blank()
        load_into(dst, state, hit.n_match)
        assert dst.tokens == tokens and same_rows(dst, filled(tokens), len(tokens)) and dst.logits is not None
    # and back into RAM, as a disk hit does
    ram2 = RamTier(8)
    ram2.store_cache(dst)
    assert ram2.lookup(dst.tokens).n_match == len(dst.tokens)
    assert np.array_equal(ram2.state(ram2.lookup(dst.tokens), "f16").parts[0].k, dst.k[:, :len(dst.tokens)])
    assert MiB == 1 << 20


def test_a_failed_write_leaves_the_index(tiers, tmp_path, caplog):
    disk = tiers()
    (tmp_path / entry_name([3, 3, 3])).mkdir()  # the rename onto it fails
    future = disk.submit_write(state_of([3, 3, 3]))
    assert disk.lookup([3, 3, 3]) is not None and future.exception() is not None
    with caplog.at_level(logging.WARNING, "slotserve.kvcache"):
        disk.poll()
    assert "writing it failed" in caplog.text and disk.lookup([3, 3, 3]) is None and disk.nbytes == 0
