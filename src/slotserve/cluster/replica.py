"""The Ray Serve deployment: one replica is one process with the model, its engine and its slots.

Each replica runs slotserve's own app (api/) in process and answers the front's calls through it, so the
cluster speaks exactly the single-process server's API. Its rank (Serve keeps ranks 0..N-1, and a replica
restarted after a crash takes the rank that was freed) gives its slots their cluster ids.
"""
from __future__ import annotations

import logging
import os

from ray import serve

from ..api.app import create_app
from ..service import ServerConfig, Service
from ..api.asgi_call import HttpCall, ResponseHead, run_call
from .hints import offset_slot_ids
from .routing import RouteHint

log = logging.getLogger("slotserve.cluster")


class SlotserveReplica:
    def __init__(self, config: ServerConfig):
        self.service = Service(config)
        self.service.load()  # Serve counts the replica as starting until this returns
        self.app = create_app(self.service)

    def __del__(self) -> None:
        # Serve's graceful shutdown ends here: the engine stops (and a disk tier writes its slots' states out)
        self.service.close()

    @property
    def rank(self) -> int:
        return serve.get_replica_context().rank.rank

    def record_replica_metadata(self) -> dict:
        """Read once by Serve when the replica is ready: the router maps replicas to ranks with it, and sizes
        its picture of what each replica holds by the replica's capacity."""
        return {"rank": self.rank, "capacity_tokens": self.capacity_tokens()}

    def capacity_tokens(self) -> int:
        """Prompt tokens this replica can keep: its slots' context, plus what its RAM tier holds."""
        svc = self.service
        n = svc.n_ctx_total
        ram = svc.prompt_cache.ram if svc.prompt_cache is not None else None
        if ram is not None and ram.enabled:
            if ram.limit_bytes is None:
                n += ram.limit_tokens or svc.n_ctx_total
            else:  # K and V rows of every layer, in the cache's type
                hp = svc.model.hparams
                n += ram.limit_bytes // (2 * hp.n_layer * hp.n_embd_kv * (2 if svc.config.kv_type == "f16" else 4))
        return n

    def check_health(self) -> None:
        engine = self.service.engine
        if self.service.status != "ready" or engine is None or not engine.is_alive():
            raise RuntimeError(f"slotserve replica {self.rank}: engine not running ({self.service.status})")

    def info(self, hint: RouteHint | None = None) -> dict:
        return {"rank": self.rank, "pid": os.getpid(), "n_parallel": self.service.n_parallel,
                "node_ip": _node_ip()}

    async def call(self, call: HttpCall, hint: RouteHint | None = None):
        """The answer to one HTTP request: a ResponseHead, then body chunks with cluster slot ids."""
        offset = self.rank * self.service.n_parallel
        async for part in run_call(self.app, call):
            yield part if isinstance(part, ResponseHead) else offset_slot_ids(part, offset)


def _node_ip() -> str:
    import ray
    return ray.util.get_node_ip_address()
