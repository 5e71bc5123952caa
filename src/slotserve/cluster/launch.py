"""Ray and Serve start-up and shutdown, and the deployment's options.

The HTTP front is not a Serve deployment behind Serve's HTTP proxy: it runs in the `slotserve` process itself
(the Ray driver), which holds the deployment handle, so a request crosses Ray once (front -> replica)
instead of twice (proxy -> ingress replica -> model replica), and /slots, /metrics and /health can fan out
to every replica from the one place that sees them all. Serve's proxy is therefore not started.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

from ..service import ServerConfig, Service
from .reaper import descendants, end_leftovers
from .routing import PREFIX

log = logging.getLogger("slotserve.cluster")

APP = "slotserve"  # the Serve application (and its routing table's name)
DEPLOYMENT = "slotserve-replica"
MAX_ONGOING = 64  # per replica: its engine queues what its slots cannot take yet
HEALTH_PERIOD_S = 2.0  # how often Serve asks a replica's check_health: a hung engine is replaced soon
SHUTDOWN_S = 10.0  # a replica's requests in flight get this long to finish at shutdown


@dataclass(frozen=True)
class ClusterOptions:
    replicas: int
    address: str | None = None
    routing: str = PREFIX
    replica_cpus: float = 1.0
    verbose: bool = False


def options_from(values: dict) -> ClusterOptions:
    return ClusterOptions(replicas=values["ray_replicas"], address=values.get("ray_address"),
                          routing=values.get("ray_routing", PREFIX), replica_cpus=values.get("ray_replica_cpus", 1.0),
                          verbose=bool(values.get("verbose")))


def start_ray(opts: ClusterOptions) -> None:
    import ray
    from ray import serve

    if opts.address:
        ray.init(address=opts.address, log_to_driver=opts.verbose)
    else:  # a local instance sized for the replicas alone; no dashboard (a process and a port fewer)
        ray.init(num_cpus=max(1, math.ceil(opts.replicas * opts.replica_cpus)), include_dashboard=False,
                 log_to_driver=opts.verbose)
    serve.start(proxy_location="Disabled")  # the front serves HTTP (see the module docstring)


def deploy(config: ServerConfig, opts: ClusterOptions):
    """Start the replicas; returns the deployment's handle once every replica has loaded the model."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from .replica import SlotserveReplica
    from .router import SlotserveRouter

    actor_options: dict = {"num_cpus": opts.replica_cpus}
    if config.threads > 0:  # -t: the replicas' BLAS pools, sized before their numpy starts
        actor_options["runtime_env"] = {"env_vars": {v: str(config.threads) for v in
                                                     ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    deployment = serve.deployment(
        SlotserveReplica, name=DEPLOYMENT, num_replicas=opts.replicas, max_ongoing_requests=MAX_ONGOING,
        ray_actor_options=actor_options, health_check_period_s=HEALTH_PERIOD_S,
        graceful_shutdown_timeout_s=SHUTDOWN_S, graceful_shutdown_wait_loop_s=0.5,
        request_router_config=RequestRouterConfig(request_router_class=SlotserveRouter,
                                                  request_router_kwargs=routing_settings(config, opts)))
    return serve.run(deployment.bind(config), name=APP, route_prefix=None)


def routing_settings(config: ServerConfig, opts: ClusterOptions) -> dict:
    # "clearly busier": a whole replica's worth of slots more in flight than the least-loaded replica
    return {"app": APP, "policy": opts.routing, "imbalance": Service(config).n_parallel}


def stop_ray(opts: ClusterOptions) -> None:
    """Remove what this process started: the whole local instance, or only the application on a shared cluster."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    started = {} if opts.address else descendants(os.getpid())
    try:
        if opts.address:
            serve.delete(APP)
        else:
            serve.shutdown()
    except Exception as exc:  # shutting down anyway: say why the replicas may outlive us
        log.warning("Ray Serve shutdown: %s", exc)
    ray.shutdown()
    if started:
        left = end_leftovers(started)
        if left:
            log.info("ended %d Ray processes left running after its shutdown (pids %s)", len(left), left)
