"""Both tiers together, as the engine drives them: plan, load, disk reads, flush, counters. No model."""
import pytest

from slotserve.kvcache.disk_tier import DiskTier, entry_name
from slotserve.kvcache.prompt_cache import PromptCache, common_prefix
from slotserve.kvcache.ram_tier import RamTier
from test_disk_tier import MODEL
from test_ram_tier import blank, filled, same_rows

A = list(range(100, 130))  # a stored conversation
B = list(range(200, 220))  # another


@pytest.fixture
def make(tmp_path):
    made = []

    def build(ram_mib=8, disk=True, min_disk_gain=1):  # 1: these states are shorter than the default gain
        d = DiskTier(tmp_path, MODEL, "f16") if disk else None
        made.append(d)
        return PromptCache(RamTier(ram_mib), d, min_disk_gain)
    yield build
    for d in made:
        if d is not None:
            d.close()


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2, 3]) == 2


def test_the_longest_prefix_wins_and_the_slot_keeps_ties(make):
    pc = make()
    pc.save(filled(A))
    slot = filled(A[:10] + [1, 1])
    plan = pc.plan(slot, A + [5])
    assert (plan.source, plan.n, plan.n_slot) == ("ram", 30, 10)
    assert pc.load_ram(slot, plan) == 30 and slot.tokens == A and same_rows(slot, filled(A), 30)
    assert pc.plan(slot, A + [5]).source == "slot"  # nothing stored beats the slot's own 30
    c = pc.counters
    assert (c.lookups, c.misses, c.ram.hits, c.ram.tokens_reused) == (2, 1, 1, 20)


def test_a_disk_hit_is_read_off_the_step_and_goes_back_into_ram(make):
    pc = make()
    pc.save(filled(A))
    pc.flush([])  # RAM -> disk
    assert pc.ram.nbytes == 0 and pc.disk.n_entries == 1
    slot = blank()
    plan = pc.plan(slot, A[:25] + [9])
    assert (plan.source, plan.n) == ("disk", 25)
    read = pc.start_disk_read(plan)
    read.future.exception()  # the engine would step other slots until read.done()
    assert read.done() and pc.finish_disk_read(slot, read, plan) == 25
    assert slot.tokens == A[:25] and same_rows(slot, filled(A), 25)
    assert pc.ram.lookup(A).n_match == 25  # back in RAM
    assert pc.counters.disk.hits == 1 and pc.counters.disk.tokens_reused == 25


def test_ram_is_preferred_to_disk_on_a_tie(make):
    pc = make()
    pc.save(filled(A))
    pc.flush([])
    pc.save(filled(A))
    assert pc.plan(blank(), A).source == "ram"


def test_a_disk_read_must_gain_enough_tokens_to_be_worth_it(make):
    pc = make(min_disk_gain=8)
    pc.save(filled(A))
    pc.flush([])
    assert pc.plan(blank(), A[:7] + [1]).source == "slot"  # 7 tokens: evaluating them is cheaper than the read
    assert pc.plan(blank(), A[:8] + [1]).source == "disk"
    assert pc.plan(filled(A[:2]), A[:9] + [1]).source == "slot"  # 7 more than the slot holds
    assert pc.plan(filled(A[:2]), A[:10] + [1]).source == "disk"


def test_a_damaged_disk_entry_leaves_the_slot_as_it_was(make, tmp_path):
    pc = make()
    pc.save(filled(A))
    pc.flush([])
    path = tmp_path / entry_name(A)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    slot = filled(A[:3] + [7])
    plan = pc.plan(slot, A)
    read = pc.start_disk_read(plan)
    read.future.exception()
    assert pc.finish_disk_read(slot, read, plan) == 3 and slot.tokens == A[:3] + [7]
    assert pc.disk.n_entries == 0 and pc.plan(slot, A).source == "slot"


def test_flush_writes_the_slots_and_ram_and_a_restart_finds_them(make):
    pc = make()
    pc.save(filled(A))
    pc.flush([filled(B), blank()])  # shutdown: the slots' states too
    again = make()
    for tokens in (A, B):
        plan = again.plan(blank(), tokens)
        assert plan.source == "disk" and plan.n == len(tokens)


def test_without_ram_a_saved_state_goes_straight_to_disk(make):
    pc = make(ram_mib=0)
    slot = filled(B)
    assert not pc.save(slot).stored
    pc.disk.drain()
    slot.tokens[:] = []  # the slot moves on; the disk has its own copy
    plan = pc.plan(blank(), B)
    state = pc.disk.load(plan.disk_hit)
    assert state.tokens == B and pc.counters.disk.stores == 1


def test_without_disk_flush_just_clears_ram(make):
    pc = make(disk=False)
    pc.save(filled(A))
    pc.flush([filled(B)])
    assert pc.ram.nbytes == 0 and pc.plan(blank(), A).source == "slot"


def test_stats_report_sizes_limits_and_counters(make):
    pc = make()
    pc.save(filled(A))
    pc.flush([])
    s = pc.stats()
    assert s["ram"]["limit_bytes"] == 8 << 20 and s["ram"]["stores"] == 1 and s["ram"]["bytes"] == 0
    assert s["disk"]["entries"] == 1 and s["disk"]["bytes"] > 0 and s["disk"]["stores"] == 1
    assert s["disk"]["limit_bytes"] == 16384 << 20 and s["disk"]["pending_bytes"] == 0
