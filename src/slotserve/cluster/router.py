"""Ray Serve's request-router extension point (ray.serve.request_router.RequestRouter), deciding with the
routing table (routing.py).

Serve builds this router itself, in each process that holds a handle to the deployment (here: the front),
and calls `choose_replicas` for each call until one of the replicas it returns accepts. The front passes a
RouteHint as the call's `hint` keyword; replicas announce their rank in `record_replica_metadata`.
"""
from __future__ import annotations

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from .routing import RouteHint, table


class SlotserveRouter(RequestRouter):
    def initialize_state(self, app: str = "slotserve", **settings) -> None:
        self.table = table(app, **settings)
        self.ranks: dict[ReplicaID, int] = {}

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self.ranks = {r.replica_id: r.replica_metadata["rank"] for r in replicas if "rank" in r.replica_metadata}
        self.table.set_live({rank: rid.unique_id for rid, rank in self.ranks.items()},
                            {r.replica_metadata["rank"]: r.replica_metadata["capacity_tokens"] for r in replicas
                             if "capacity_tokens" in r.replica_metadata})

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        rank = self.ranks.pop(replica_id, None)
        if rank is not None:  # at once, before Serve's next update: /health and new calls see it now
            self.table.set_live({r: rid.unique_id for rid, r in self.ranks.items()})

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # without this Serve retries at once, in a loop that never yields: the event loop that must
            # deliver the restarted replica would never run (seen with a pinned call to a dead replica)
            pending_request.routing_context.should_backoff = True
        by_rank = {self.ranks[r.replica_id]: r for r in candidate_replicas if r.replica_id in self.ranks}
        rank = self.table.choose(_hint(pending_request), list(by_rank))
        return [[by_rank[rank]]] if rank is not None else []

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        rank = self.ranks.get(replica_id)
        if rank is not None:
            self.table.routed(_hint(pending_request), rank)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        rank = self.ranks.get(replica_id)
        if rank is not None:
            self.table.completed(rank)


def _hint(pending_request: PendingRequest | None) -> RouteHint:
    hint = pending_request.kwargs.get("hint") if pending_request is not None else None
    return hint if isinstance(hint, RouteHint) else RouteHint()
