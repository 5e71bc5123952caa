"""A slot directory several processes share (issue 17): disk-tier entries another server wrote are hits
without a restart, entries another evicted are quiet misses, a live writer's temp file survives another
SaveDir's start, a save never writes into a file a reader holds, and saves and restores of one name from
several processes never tear it."""
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slotserve.kvcache import disk_rescan
from slotserve.kvcache.filenames import HOST, temp_name, temp_writer
from slotserve.kvcache.persist import ModelIdentity
from slotserve.kvcache.disk_tier import DiskTier, MiB
from slotserve.kvcache.savedir import SaveDir
from test_disk_tier import MODEL, state_of
from tiny import litter, restored, same, tiny_cache, tiny_store

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


@pytest.fixture
def tiers(tmp_path, monkeypatch):
    monkeypatch.setattr(disk_rescan, "RESCAN_EVERY", 0.0)  # a rescan whenever the directory moved
    made = []

    def make(root=tmp_path, model=MODEL, **kw):
        disk = DiskTier(root, model, "f16", **kw)
        made.append(disk)
        return disk
    yield make
    for disk in made:
        disk.close()


def rescanned(disk: DiskTier) -> None:
    """What poll does between steps, waited for: queue a rescan, let the I/O thread run it, take it in."""
    disk.poll()
    disk.drain()


def test_an_entry_another_server_wrote_is_a_hit_without_a_restart(tiers):
    a, b = tiers(), tiers()  # two servers' tiers on one directory, both running
    tokens = list(range(10, 40))
    a.submit_write(state_of(tokens)).result()
    a.drain()  # its size made exact
    rescanned(b)
    hit = b.lookup(tokens + [1, 2])
    assert hit is not None and hit.n_match == 30 and b.nbytes == a.nbytes
    assert b.load(hit).tokens == tokens


def test_an_entry_another_server_evicted_is_a_quiet_miss(tiers, caplog):
    a, b = tiers(), tiers()
    tokens = list(range(5, 25))
    a.submit_write(state_of(tokens)).result()
    rescanned(b)
    hit = b.lookup(tokens)
    a.dir.delete(hit.entry.name)  # a evicts it after b found it
    with caplog.at_level(logging.WARNING, "slotserve.kvcache"):
        assert b.load(hit) is None
    assert caplog.text == "" and b.n_entries == 0 and b.lookup(tokens) is None


def test_entries_gone_leave_the_index_at_the_next_rescan(tiers):
    a, b = tiers(), tiers()
    a.submit_write(state_of([7, 8, 9, 10])).result()
    rescanned(b)
    assert b.n_entries == 1
    a.drain()
    a.dir.delete(b.lookup([7, 8, 9, 10]).entry.name)
    rescanned(b)
    assert b.n_entries == 0 and b.nbytes == 0


def test_a_rescan_leaves_another_models_entry_alone(tiers, tmp_path):
    b = tiers()
    other = tiers(model=ModelIdentity("other", "fp-other", MODEL.n_layer, MODEL.n_embd_kv, MODEL.n_vocab))
    other.submit_write(state_of([3, 4, 5, 6])).result()
    rescanned(b)
    rescanned(b)  # refused once, not read again while unchanged
    assert b.n_entries == 0 and other.n_entries == 1 and len(list(tmp_path.glob("pc-*.bin"))) == 1


def test_each_server_keeps_the_shared_directory_within_the_limit(tiers, tmp_path):
    probe = tiers(tmp_path / "probe")
    size = probe.submit_write(state_of(list(range(1, 21)))).result()
    limit = 2.5 * size / MiB
    a, b = tiers(limit_mib=limit), tiers(limit_mib=limit)
    for first in (100, 200):
        a.submit_write(state_of(list(range(first, first + 20)))).result()
    rescanned(b)
    b.submit_write(state_of(list(range(300, 320)))).result()
    b.drain()
    on_disk = [p for p in tmp_path.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in on_disk) <= limit * MiB
    assert b.lookup(list(range(100, 120))) is None  # a's older entry was the least recently used
    assert b.lookup(list(range(200, 220))).n_match == 20


def child_sleeping() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_start_up_removes_only_the_temps_of_dead_writers(tmp_path):
    live, dead = child_sleeping(), subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        def temp(pid, host=HOST):
            name = temp_name("s.bin").replace(f"-{HOST}-{os.getpid()}-", f"-{host}-{pid}-")
            assert temp_writer(name) == (host, pid)
            (tmp_path / name).write_bytes(b"partial")
            return name
        keep = {temp(live.pid), temp(os.getpid()), temp(1, host="elsewhere")}  # live here; not ours to ask
        gone = {temp(dead.pid), f".s.bin.tmp-{dead.pid}-0a1b2c3d"}  # a name from before hosts were recorded
        (tmp_path / f".s.bin.tmp-{dead.pid}-0a1b2c3d").write_bytes(b"old format")
        stale = temp(2, host="elsewhere")
        os.utime(tmp_path / stale, (time.time() - 3 * 86400,) * 2)  # older than any save takes
        gone.add(stale)
        SaveDir(tmp_path)
        assert set(litter(tmp_path)) == keep
    finally:
        live.kill()
        live.wait()


def test_a_save_never_writes_into_a_file_a_reader_holds(tmp_path):
    store = tiny_store(tmp_path, sync=False)
    reader = SaveDir(tmp_path)  # another process's view of the directory
    v = [tiny_cache(8, seed=s) for s in range(4)]
    store.save(v[0], "s.bin")
    first = os.stat(tmp_path / "s.bin").st_ino
    store.save(v[1], "s.bin")  # the first file is kept as the spare
    fd, size = reader.open_slot("s.bin")  # a restore in progress holds the second
    try:
        held = os.fstat(fd).st_ino
        store.save(v[2], "s.bin")  # writes into the spare: nobody reads it
        assert os.stat(tmp_path / "s.bin").st_ino == first  # recycling still works without readers
        store.save(v[3], "s.bin")  # the spare now is the file the reader holds: a fresh file instead
        assert os.stat(tmp_path / "s.bin").st_ino not in (first, held)
        with os.fdopen(os.dup(fd), "rb") as f:
            assert len(f.read()) == size
    finally:
        os.close(fd)
    assert same(restored(tiny_store(tmp_path), "s.bin"), v[3])


WRITER = """
import sys
from tiny import tiny_cache, tiny_store
store = tiny_store(sys.argv[1], sync=False)
caches = [tiny_cache(12, seed=int(s)) for s in sys.argv[2:]]
for i in range(300):
    store.save(caches[i % len(caches)], "s.bin")
"""


def test_saves_and_restores_of_one_name_from_several_processes_never_tear(tmp_path):
    seeds = [[1, 2], [3, 4]]
    versions = [tiny_cache(12, seed=s) for pair in seeds for s in pair]
    store = tiny_store(tmp_path, sync=False)
    store.save(versions[0], "s.bin")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), *map(str, pair)], env=env)
               for pair in seeds]
    n_restores = 0
    while any(w.poll() is None for w in writers):
        got = restored(store, "s.bin")  # any failure (a checksum above all) fails the test
        assert any(same(got, v) for v in versions)
        n_restores += 1
    assert [w.returncode for w in writers] == [0, 0] and n_restores > 0
    assert any(same(restored(store, "s.bin"), v) for v in versions)  # the last pair is whole
    assert [n for n in litter(tmp_path) if not n.startswith(".spare.")] == ["s.bin", "s.bin.meta.json"]
