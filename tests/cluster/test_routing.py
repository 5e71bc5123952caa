"""The routing table alone (no Ray): prefix affinity, the load fallback, pins, round-robin, restarts."""
import subprocess
import sys

from slotserve.cluster.hints import route_hint, slot_path, text_of
from slotserve.cluster.routing import ROUND_ROBIN, RouteHint, RoutingTable


def test_a_prompt_goes_back_to_the_replica_that_holds_its_prefix():
    t = RoutingTable(imbalance=2)
    t.set_live({0: "a", 1: "b"})
    first = t.choose(RouteHint("Once upon a time"), [0, 1])
    t.routed(RouteHint("Once upon a time"), first)
    t.completed(first)
    other = t.choose(RouteHint("The dog ran"), [0, 1])
    assert other != first  # equal load: the replica holding less takes the new prompt
    t.routed(RouteHint("The dog ran"), other)
    t.completed(other)
    assert t.choose(RouteHint("Once upon a time, there was"), [0, 1]) == first
    assert t.choose(RouteHint("The dog ran away"), [0, 1]) == other
    t.routed(RouteHint("Once upon a time, there was"), first)
    assert t.counters.prefix_hits == 1 and t.counters.cold == 2


def test_a_clearly_busier_replica_loses_its_prefix_to_the_least_loaded():
    t = RoutingTable(imbalance=2)
    t.set_live({0: "a", 1: "b"})
    t.routed(RouteHint("Once upon a time"), 0)
    t.routed(RouteHint(rank=0), 0)
    assert t.choose(RouteHint("Once upon a time, a cat"), [0, 1]) == 0  # 2 in flight vs 0: not more than 0 + 2
    t.routed(RouteHint(rank=0), 0)
    assert t.choose(RouteHint("Once upon a time, a cat"), [0, 1]) == 1
    t.routed(RouteHint("Once upon a time, a cat"), 1)
    assert t.counters.fallbacks == 1


def test_pins_wait_for_their_replica_and_round_robin_takes_turns():
    t = RoutingTable()
    assert t.choose(RouteHint(rank=1), [0]) is None  # replica 1 is restarting: the router waits
    assert t.choose(RouteHint(rank=1), [0, 1]) == 1
    rr = RoutingTable(policy=ROUND_ROBIN)
    assert [rr.choose(RouteHint("same"), [0, 1]) for _ in range(4)] == [0, 1, 0, 1]


def test_a_restarted_replica_starts_with_an_empty_tree():
    t = RoutingTable()
    t.set_live({0: "a", 1: "b"})
    t.routed(RouteHint("Once upon a time"), 1)
    t.set_live({0: "a", 1: "c"})  # rank 1 is a new process now
    assert t.choose(RouteHint("Once upon a time"), [0, 1]) == 0  # nothing held anywhere: least loaded, lowest


def test_the_front_reads_prompts_and_maps_cluster_slot_ids():
    chat = [{"role": "user", "content": "hi"}]
    longer = chat + [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}]
    assert text_of(longer).startswith(text_of(chat))
    hint, body = route_hint(b'{"prompt": "abc", "id_slot": 5}', n_parallel=4, n_slots=8)
    assert hint == RouteHint("abc", rank=1) and b'"id_slot": 1' in body
    hint, body = route_hint(b'{"prompt": "abc", "id_slot": -1}', n_parallel=4, n_slots=8)
    assert hint == RouteHint("abc") and body == b'{"prompt": "abc", "id_slot": -1}'
    assert slot_path("6", 4, 8) == (1, "/slots/2")


def test_the_single_process_server_does_not_import_ray():
    code = ("import sys, slotserve.cli, slotserve.api.app, slotserve.service; "
            "sys.exit('ray' in sys.modules or 'slotserve.cluster.front' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_replica_tree_holds_what_the_replica_can():
    t = RoutingTable()
    t.set_live({0: "a", 1: "b"}, {0: 10, 1: 10})  # 10 tokens: 40 characters each
    t.routed(RouteHint("A" * 30), 0)
    t.routed(RouteHint("B" * 30), 0)  # 60 characters: the least recently used goes
    t.completed(0)
    t.completed(0)
    assert t.trees[0].nbytes <= 40
    assert t.choose(RouteHint("B" * 30 + "!"), [0, 1]) == 0
    assert t.choose(RouteHint("A" * 30 + "!"), [0, 1]) == 1  # evicted: nobody holds it, least loaded
