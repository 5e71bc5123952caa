"""Google Cloud Vertex AI's prediction protocol, as llama-server 11434 speaks it (server-http.cpp).

Vertex AI runs a custom container with AIP_MODE=PREDICTION and tells it where to listen and what to
serve through AIP_* variables: AIP_HTTP_PORT (the port, over --port), AIP_PREDICT_ROUTE (default
/predict) and AIP_HEALTH_ROUTE (an alias of /health when set). A predict request is
`{"instances": [...]}`, at most 128; each instance names one of the server's POST endpoints in
"@requestFormat" (the path's camelCase alias, "/v1/chat/completions" -> "chatCompletions", or the path
itself) and carries that endpoint's body. Instances run concurrently, each through this app as a
request of its own (the caller's headers, API key included; `stream` forced off), and the answer is
`{"predictions": [...]}` in instance order: each endpoint's JSON answer, or `{"error": {...}}` for an
instance that failed, so one bad instance does not fail the others.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from typing import Mapping

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse

from . import routes_misc
from .asgi_call import HttpCall, ResponseHead, run_call
from .errors import ApiError, invalid
from .fields import decode_json, read_body

log = logging.getLogger("slotserve.api")
MAX_INSTANCES = 128  # llama-server's bound on one predict request


@dataclass(frozen=True)
class VertexConfig:
    port: int
    predict_route: str
    health_route: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "VertexConfig | None":
        """The AIP_* settings, or None unless AIP_MODE is PREDICTION."""
        if environ.get("AIP_MODE") != "PREDICTION":
            return None
        try:
            port = int(environ.get("AIP_HTTP_PORT") or 8080)
        except ValueError:
            raise SystemExit(f"slotserve: AIP_HTTP_PORT={environ['AIP_HTTP_PORT']!r} is not a port number") from None
        return cls(port, environ.get("AIP_PREDICT_ROUTE") or "/predict", environ.get("AIP_HEALTH_ROUTE") or None)


def request_format(path: str) -> str:
    """A route's "@requestFormat" alias: without /v1, camelCase at each / - _ ("/apply-template" ->
    "applyTemplate"), up to a path parameter."""
    if path.startswith("/v1"):
        path = path[3:]
    out, upper = [], False
    for ch in path.lstrip("/"):
        if ch in ":{":  # a path parameter (llama-server's :name, FastAPI's {name})
            break
        if ch in "/-_":
            upper = True
        else:
            out.append(ch.upper() if upper else ch)
            upper = False
    return "".join(out)


def install(app: FastAPI, config: VertexConfig, routers: list[APIRouter]) -> None:
    """Add the predict route (and the health alias) to the app; `routers`: those it includes, whose POST
    routes the instances may name (routes with a path parameter cannot be named)."""
    posts = [r.path for router in routers for r in router.routes
             if isinstance(r, APIRoute) and "POST" in r.methods and "{" not in r.path]
    if config.predict_route in posts:
        raise SystemExit(f"slotserve: AIP_PREDICT_ROUTE={config.predict_route} is one of the server's own routes")
    targets = {path: path for path in posts}  # what an @requestFormat may say -> the route it names
    for path in posts:
        targets.setdefault(request_format(path), path)  # the first route registered keeps an alias
    log.info("Vertex AI prediction: POST %s%s", config.predict_route,
             f", GET {config.health_route} (as /health)" if config.health_route else "")

    async def predict(request: Request) -> JSONResponse:
        body = decode_json(await read_body(request))
        instances = body.get("instances")
        if not isinstance(instances, list):
            raise invalid("request body must include an array field named instances")
        if len(instances) > MAX_INSTANCES:
            raise invalid(f"instances array exceeds maximum size of {MAX_INSTANCES}")
        headers = tuple((k, v) for k, v in request.headers.raw if k.lower() != b"content-length")
        runs = [_predict_one(app, targets, instance, headers) for instance in instances]
        return JSONResponse({"predictions": list(await asyncio.gather(*runs))})

    app.add_api_route(config.predict_route, predict, methods=["POST"], include_in_schema=False)
    if config.health_route:  # /health's own handler, as llama-server registers it
        app.add_api_route(config.health_route, routes_misc.health, methods=["GET"], include_in_schema=False)


async def _predict_one(app, targets: dict[str, str], instance, headers) -> object:
    """One instance's prediction: the endpoint's JSON answer, or an error object."""
    if not isinstance(instance, dict):
        return invalid("each instance must be a JSON object").body()
    fmt = instance.get("@requestFormat")
    if not isinstance(fmt, str):
        return invalid("each instance must include a string @requestFormat").body()
    path = targets.get(fmt)
    if path is None:
        return invalid(f"no handler registered for @requestFormat: {fmt}").body()
    payload = {k: v for k, v in instance.items() if k != "@requestFormat"}
    if "stream" in payload:
        log.warning("ignoring an instance's stream field: the predict route does not stream")
        payload["stream"] = False
    call = HttpCall("POST", path, headers=headers, body=json.dumps(payload).encode())
    try:
        chunks = [part async for part in run_call(app, call) if not isinstance(part, ResponseHead)]
    except Exception as exc:  # the app answers its own errors; this is one it could not
        log.error("predict instance %s failed", fmt, exc_info=exc)
        return ApiError("server", f"{fmt} failed: {exc}").body()
    raw = b"".join(chunks)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")
