"""The cluster's HTTP front: one address for N replicas.

Most requests are forwarded whole to one replica, chosen by the router (router.py) from the hint read here
(hints.py), and its answer is streamed back part by part. The front answers itself what spans the cluster:
/health (ok while one replica is ready), /slots (every replica's, with cluster ids), /metrics (summed, plus
routing counters), /props (total_slots of the cluster) and /cluster (the replicas). A replica failing while
it answers ends the request with a 503, or an error event when the stream has begun: never a hang.
"""
from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import parse_qs

from starlette.responses import JSONResponse, PlainTextResponse

from ..api.errors import ApiError
from ..service import ServerConfig
from ..api.asgi_call import HttpCall, ResponseHead
from .hints import route_hint, slot_path
from .metrics import aggregate, routing_lines
from .routing import RouteHint, RoutingTable

log = logging.getLogger("slotserve.cluster")

HEALTH_PATHS = ("/health", "/v1/health")


class ClusterFront:
    """A plain ASGI app (as api/gate.py, and for the same reason: a stream must see its client go), run behind
    api/gate.py's Gate: CORS, "Loading model" and API keys are checked once, here at the edge."""

    def __init__(self, config: ServerConfig, n_replicas: int, n_parallel: int, table: RoutingTable):
        self.config = config  # api/gate.py's Gate reads the keys, the CORS policy and `status` here
        self.n_replicas, self.n_parallel, self.table = n_replicas, n_parallel, table
        self.n_slots = n_replicas * n_parallel
        self.status, self.error = "loading", ""
        self.handle = self.stream = None

    def attach(self, handle) -> None:
        """The deployment is up: start forwarding to it."""
        self.handle, self.stream = handle, handle.options(stream=True)  # made once: each keeps its router
        self.status = "ready"

    def fail(self, message: str) -> None:
        self.status, self.error = "error", message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        call = HttpCall(scope["method"], scope["path"], scope.get("query_string", b""),
                        tuple((bytes(k), bytes(v)) for k, v in scope["headers"]), body)
        try:
            await self._answer(call, receive, send)
        except ApiError as exc:
            await exc.response()(scope, receive, send)

    async def _answer(self, call: HttpCall, receive, send) -> None:
        path, method = call.path, call.method  # the Gate in front of this app answered "loading" and keys
        if path in HEALTH_PATHS:
            return await self._reply(self._health(), send)
        if method == "GET" and path == "/cluster":
            return await self._reply(JSONResponse(await self._cluster()), send)
        if method == "GET" and path == "/slots":
            return await self._reply(await self._slots(call), send)
        if method == "GET" and path == "/metrics":
            return await self._reply(await self._metrics(call), send)
        if method == "GET" and path == "/props":
            return await self._reply(await self._props(call), send)
        if method == "POST" and path.startswith("/slots/"):
            rank, local = slot_path(path[len("/slots/"):], self.n_parallel, self.n_slots)
            return await self._forward(HttpCall(method, local, call.query, call.headers, call.body),
                                       RouteHint(rank=rank), receive, send)
        hint, body, headers = RouteHint(), call.body, call.headers
        if method == "POST":
            hint, body = route_hint(call.body, self.n_parallel, self.n_slots)
            if body is not call.body:  # its id_slot was made the replica's
                headers = tuple((k, str(len(body)).encode() if k.lower() == b"content-length" else v)
                                for k, v in headers)
        await self._forward(HttpCall(method, path, call.query, headers, body), hint, receive, send)

    # ---- forwarding ----------------------------------------------------------------------------------
    def _check_reachable(self, hint: RouteHint) -> None:
        ready = self.table.ready_ranks()
        if hint.rank is not None and hint.rank not in ready:
            raise ApiError("unavailable", f"replica {hint.rank} (slots {hint.rank * self.n_parallel}.."
                           f"{(hint.rank + 1) * self.n_parallel - 1}) is not ready: it is being restarted; retry")
        if not ready:
            raise ApiError("unavailable", "no replica is ready: they are being restarted; retry")

    async def _forward(self, call: HttpCall, hint: RouteHint, receive, send) -> None:
        """Stream one replica's answer to the client; a client that leaves cancels the replica's work."""
        self._check_reachable(hint)
        parts = self.stream.call.remote(call, hint=hint)
        pump = asyncio.create_task(self._pump(parts, hint, send))
        gone = asyncio.create_task(_disconnect(receive))
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the front is stopping
            await _stop(pump, parts, gone)
            raise
        if not pump.done():  # the client left: stop the replica's work
            return await _stop(pump, parts, gone)
        gone.cancel()
        pump.result()  # an ApiError before the answer began: the caller sends it

    async def _pump(self, parts, hint: RouteHint, send) -> None:
        head = None
        try:
            async for part in parts:
                if isinstance(part, ResponseHead):
                    head = part  # CORS headers are the front's Gate's to add
                    headers = [(k, v) for k, v in part.headers if not k.lower().startswith(b"access-control-")]
                    await send({"type": "http.response.start", "status": part.status, "headers": headers})
                else:
                    await send({"type": "http.response.body", "body": part, "more_body": True})
        except Exception as exc:  # Ray's: the replica died, was killed, or its actor is unreachable
            error = ApiError("unavailable", _failure(exc, hint))
            log.warning("%s", error.message)
            if head is None:
                raise error from None
            if (head.header(b"content-type") or b"").startswith(b"text/event-stream"):
                await send({"type": "http.response.body", "more_body": True,
                            "body": b"data: " + json.dumps(error.body()).encode() + b"\n\n"})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _collect(self, call: HttpCall, rank: int) -> tuple[int, bytes]:
        """One replica's whole answer (for the fan-outs)."""
        status, chunks = 0, []
        try:
            async for part in self.stream.call.remote(call, hint=RouteHint(rank=rank)):
                if isinstance(part, ResponseHead):
                    status = part.status
                else:
                    chunks.append(part)
        except Exception as exc:
            raise ApiError("unavailable", _failure(exc, RouteHint(rank=rank))) from None
        return status, b"".join(chunks)

    async def _fan_out(self, call: HttpCall) -> list[tuple[int, int, bytes]]:
        """(rank, status, body) from every ready replica."""
        ranks = self.table.ready_ranks()
        if not ranks:
            raise ApiError("unavailable", "no replica is ready: they are being restarted; retry")
        answers = await asyncio.gather(*(self._collect(call, r) for r in ranks))
        return [(r, status, body) for r, (status, body) in zip(ranks, answers)]

    # ---- what the front answers itself -------------------------------------------------------------
    def _health(self):
        ready = self.table.ready_ranks()
        if not ready:
            raise ApiError("unavailable", f"no replica is ready (0 of {self.n_replicas}): they are being restarted")
        return JSONResponse({"status": "ok", "replicas_ready": len(ready), "replicas": self.n_replicas})

    async def _slots(self, call: HttpCall):
        query = parse_qs(call.query.decode("latin-1"))
        fail_on_no_slot = bool(query.pop("fail_on_no_slot", None))  # the cluster's slots, not one replica's
        out = []
        for rank, status, body in await self._fan_out(HttpCall("GET", "/slots", b"", call.headers)):
            if status != 200:
                return _raw(status, body)  # the replicas' refusal (no --slots, a bad key) is the cluster's
            for slot in json.loads(body):
                slot["id"] += rank * self.n_parallel
                out.append(slot)
        if fail_on_no_slot and out and all(s["is_processing"] for s in out):
            raise ApiError("unavailable", "no slot available")
        return JSONResponse(sorted(out, key=lambda s: s["id"]))

    async def _metrics(self, call: HttpCall):
        texts = []
        for _, status, body in await self._fan_out(call):
            if status != 200:
                return _raw(status, body)
            texts.append(body.decode())
        counters, in_flight = self.table.snapshot()
        text = aggregate(texts) + routing_lines(counters, in_flight, len(self.table.ready_ranks()), self.n_replicas)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def _props(self, call: HttpCall):
        self._check_reachable(RouteHint())
        rank = self.table.ready_ranks()[0]
        status, body = await self._collect(call, rank)
        if status != 200:
            return _raw(status, body)
        props = json.loads(body)
        props["total_slots"] = self.n_slots
        return JSONResponse(props)

    async def _cluster(self) -> dict:
        ranks = self.table.ready_ranks()
        infos = await asyncio.gather(*(self.handle.info.remote(hint=RouteHint(rank=r)) for r in ranks),
                                     return_exceptions=True)
        counters, in_flight = self.table.snapshot()
        replicas = [{**info, "in_flight": in_flight.get(r, 0)} if isinstance(info, dict)
                    else {"rank": r, "error": _failure(info, RouteHint(rank=r))} for r, info in zip(ranks, infos)]
        return {"replicas": replicas, "n_replicas": self.n_replicas, "n_parallel": self.n_parallel,
                "routing": {"policy": self.table.policy, **vars(counters)}}

    async def _reply(self, response, send) -> None:
        async def no_receive():
            return {"type": "http.disconnect"}
        await response({"type": "http"}, no_receive, send)


def _raw(status: int, body: bytes):
    from starlette.responses import Response
    return Response(body, status_code=status, media_type="application/json")


async def _stop(pump: asyncio.Task, parts, gone: asyncio.Task) -> None:
    gone.cancel()
    pump.cancel()
    parts.cancel()
    await asyncio.gather(pump, return_exceptions=True)


async def _disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _failure(exc: BaseException, hint: RouteHint) -> str:
    which = f"replica {hint.rank}" if hint.rank is not None else "the replica serving this request"
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (f"{which} failed before answering in full ({type(exc).__name__}{': ' + detail if detail else ''}); "
            "Ray Serve restarts failed replicas: retry the request")
