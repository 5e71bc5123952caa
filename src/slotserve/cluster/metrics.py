"""/metrics of the cluster: the replicas' series added up, and the front's routing counters.

Counters and most gauges add up across replicas (tokens, seconds, requests, throughput, bytes); a maximum
stays a maximum and a per-decode average is averaged.
"""
from __future__ import annotations

import math

from .routing import RoutingCounters

MAXED = {"llamacpp:n_tokens_max"}
AVERAGED = {"llamacpp:n_busy_slots_per_decode"}


def aggregate(texts: list[str]) -> str:
    """The replicas' exposition texts as one: each series once, in the first replica's order."""
    comments: dict[str, list[str]] = {}
    values: dict[str, list[float]] = {}
    for text in texts:
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                name = line.split()[2]
                if line not in comments.setdefault(name, []):
                    comments[name].append(line)
                continue
            series, _, value = line.rpartition(" ")
            values.setdefault(series, []).append(float(value))
    out = []
    for series, vals in values.items():
        name = series.partition("{")[0]
        out += comments.pop(name, [])
        total = max(vals) if name in MAXED else sum(vals) / len(vals) if name in AVERAGED else sum(vals)
        out.append(f"{series} {_number(total)}")
    return "\n".join(out) + "\n"


def routing_lines(counters: RoutingCounters, in_flight: dict[int, int], n_ready: int, n_replicas: int) -> str:
    counted = [("routed_total", "Requests the front routed to a replica", counters.routed),
               ("prefix_hits_total", "Requests sent to the replica holding the longest prefix of their prompt",
                counters.prefix_hits),
               ("fallbacks_total", "Requests whose prefix was held by a replica clearly busier than the least "
                                   "loaded one, sent to the least loaded", counters.fallbacks),
               ("cold_total", "Requests whose prompt no replica held enough of, sent to the least loaded",
                counters.cold),
               ("pinned_total", "Requests naming their replica (id_slot, slot actions, fan-outs)", counters.pinned),
               ("round_robin_total", "Requests routed in turn (--ray-routing round-robin)", counters.round_robin)]
    lines = []
    for name, help_text, value in counted:
        lines += [f"# HELP slotserve:cluster_{name} {help_text}", f"# TYPE slotserve:cluster_{name} counter",
                  f"slotserve:cluster_{name} {value}"]
    lines += ["# HELP slotserve:cluster_replicas_ready Replicas ready to serve",
              "# TYPE slotserve:cluster_replicas_ready gauge", f"slotserve:cluster_replicas_ready {n_ready}",
              "# HELP slotserve:cluster_replicas Replicas asked for (--ray-replicas)",
              "# TYPE slotserve:cluster_replicas gauge", f"slotserve:cluster_replicas {n_replicas}",
              "# HELP slotserve:cluster_requests_in_flight Requests the front has in flight, per replica",
              "# TYPE slotserve:cluster_requests_in_flight gauge"]
    lines += [f'slotserve:cluster_requests_in_flight{{replica="{r}"}} {n}' for r, n in sorted(in_flight.items())]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)
