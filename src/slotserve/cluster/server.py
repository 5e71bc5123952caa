"""`slotserve --ray-replicas N`: the front on --host/--port at once (503 "Loading model" until the replicas
are up), Ray and the deployment started behind it, everything this process started stopped at exit."""
from __future__ import annotations

import logging
import threading
from dataclasses import replace

from ..api.gate import Gate
from ..service import ServerConfig, Service
from .front import ClusterFront
from .launch import deploy, options_from, routing_settings, start_ray, stop_ray
from .routing import POLICIES, table

log = logging.getLogger("slotserve.cluster")


def serve_cluster(config: ServerConfig, values: dict, listeners, run) -> None:
    """`run(server, listeners, close)` is the CLI's serve-until-stopped loop."""
    opts = options_from(values)
    if opts.replicas < 1:
        raise SystemExit("slotserve: --ray-replicas must be at least 1")
    if opts.routing not in POLICIES:
        raise SystemExit(f"slotserve: --ray-routing {opts.routing!r}: expected one of {', '.join(POLICIES)}")
    try:
        import ray.serve  # noqa: F401  (the optional extra)
    except ImportError:
        listeners.close()
        raise SystemExit("slotserve: --ray-replicas needs Ray Serve: pip install 'slotserve[ray]'") from None
    import uvicorn

    settings = routing_settings(config, opts)
    routing = table(settings.pop("app"), **settings)  # made here, before the routers Serve builds look it up
    front = ClusterFront(config, opts.replicas, Service(config).n_parallel, routing)
    app = Gate(front, service=front)
    server = uvicorn.Server(uvicorn.Config(app, http="h11", lifespan="off",  # h11: as cli.py, header names kept
                                           log_level="info" if opts.verbose else "warning"))

    stopped = threading.Event()

    def start() -> None:
        try:
            start_ray(opts)
            # the front checks the API keys: the replicas, reached only through it, check none
            front.attach(deploy(replace(config, api_keys=()), opts))
        except BaseException as exc:  # nothing to serve: stop, and say why below
            front.fail(f"{type(exc).__name__}: {exc}")
            server.should_exit = True
            return
        log.info("%d replicas ready (%s routing), %d slots in all", opts.replicas, opts.routing, front.n_slots)
        # a local Ray's processes die with the thread that started them (Linux's parent-death signal is
        # per thread): this one lives until Ray is shut down
        stopped.wait()

    def close() -> None:
        stop_ray(opts)
        stopped.set()

    for sock in listeners.sockets:
        log.info("listening on %s (Ray Serve front)", sock.getsockname())
    threading.Thread(target=start, name="slotserve-ray-start", daemon=True).start()
    run(server, listeners, close)
    if front.status == "error":
        raise SystemExit(f"slotserve: {front.error}")
