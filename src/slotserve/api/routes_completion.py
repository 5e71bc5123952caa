"""Text generation in every dialect (dialects.DIALECTS): the route reads the body, the dialect turns it
into engine requests, the engine runs them, the dialect writes the answer, whole or as Server-Sent Events.
Chat-style dialects also answer how many tokens a request's prompt is.
"""
from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..engine.tasks import EngineError
from .bridge import Run
from .dialects import DIALECTS
from .dialects.shared import Answer
from .errors import ApiError, from_engine
from .fields import parse_body
from .prompts import prompt_limit
from .schema import documented
from .state import BUILD_INFO, ApiState, get_state

router = APIRouter()
log = logging.getLogger("slotserve.api")


async def _parse(request: Request, dialect, st: ApiState):
    """The dialect's Generation for the request: a big body is decoded, rendered and tokenized on a worker thread
    (api/offload.py), and a prompt that cannot fit a slot is refused before it is tokenized."""
    cfg = st.service.config
    limit = None if cfg.context_shift else st.service.n_ctx_slot  # context shift truncates a long prompt instead

    def parse(body: dict):
        with prompt_limit(limit):
            return dialect.parse(body, st)
    return await parse_body(request, parse)


def _generate_route(dialect):
    async def generate(request: Request):
        st = get_state(request)
        gen = await _parse(request, dialect, st)
        answer = dialect.Answer(model=st.model_name, tok=st.model.tokenizer, build_info=BUILD_INFO, gen=gen)
        return await _generate(request, answer)
    return generate


def _input_tokens_route(dialect):
    async def input_tokens(request: Request):
        st = get_state(request)
        gen = await parse_body(request, lambda body: dialect.parse(body, st))  # counting: no limit applies
        return dialect.input_tokens_json(len(gen.requests[0].prompt_tokens))
    return input_tokens


def _admit(st: ApiState, n_tasks: int) -> None:
    """--max-queued: refuse a request that would wait behind too many others, fast, rather than queue it."""
    max_queued = st.service.config.max_queued
    if max_queued < 0:
        return
    engine = st.engine
    snap = engine.snapshot
    n_idle = sum(not s.is_processing for s in snap.slots)
    n_queued = engine.n_queued  # one reading: the check and the message agree
    # tasks not yet seen by the engine take the idle slots first
    if n_queued + n_tasks - n_idle > max_queued:
        st.metrics.n_rejected += 1
        raise ApiError("unavailable", f"the server is busy: {n_queued} requests are already waiting for a "
                                      f"slot (--max-queued {max_queued}); retry shortly", headers={"Retry-After": "1"})


def _register(router: APIRouter) -> None:
    """A route per dialect path (and per input-tokens path), documented with the dialect's request Body."""
    for dialect in DIALECTS:
        name = dialect.__name__.rsplit(".", 1)[-1]
        docs = documented(dialect.Body)
        for path in dialect.PATHS:
            router.add_api_route(path, _generate_route(dialect), methods=["POST"], name=f"{name}:{path}",
                                 summary=(dialect.__doc__ or "").split("\n")[0], openapi_extra=docs)
        for path in getattr(dialect, "INPUT_TOKENS_PATHS", ()):
            router.add_api_route(path, _input_tokens_route(dialect), methods=["POST"], name=f"{name}:{path}",
                                 summary="How many tokens the request's prompt is", openapi_extra=docs)


_register(router)


async def _generate(request: Request, answer: Answer):
    gen, st = answer.gen, get_state(request)
    _admit(st, len(gen.requests))
    run = Run(st.engine, gen.requests)
    try:
        run.start()  # the engine refuses a bad id_slot, an empty or too long prompt here, before any stream
    except EngineError as exc:
        raise from_engine(exc) from None

    if not gen.stream:
        results = await run.finals(request)
        if results is None:
            return Response(status_code=204)  # the client is gone; nobody reads this
        return JSONResponse(answer.body(results))

    # As llama-server: wait for the first result before sending headers, so that an error the engine
    # raises at launch is still an HTTP error and not an event inside a 200 stream.
    try:
        first = await run.next(request)
    except BaseException:
        run.cancel()
        raise
    if first is None:
        run.cancel()
        return Response(status_code=204)
    if isinstance(first[1], EngineError):
        run.cancel()
        raise from_engine(first[1])
    return StreamingResponse(_events(run, answer, first, gen.sse_ping_s), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(run: Run, answer: Answer, first, ping_s: float | None):
    """The stream's events; after ping_s seconds without one (a long prompt, a busy server) an SSE comment
    keeps proxies and clients from timing the connection out, as llama-server's --sse-ping-interval."""
    item = first
    try:
        while True:
            index, obj = item
            if isinstance(obj, EngineError):
                yield answer.error(from_engine(obj))
                return  # llama-server ends the stream on an error, without [DONE]
            yield answer.events(index, obj)
            if run.done:
                break
            # no disconnect polling here: Starlette cancels this generator when the client goes away
            item = await run.next_within(ping_s)
            while item is None:
                yield ":\n\n"
                item = await run.next_within(ping_s)
        yield answer.end()
    except Exception as exc:  # headers are sent: a failure can only be reported as a last event
        log.exception("stream failed")
        yield answer.error(ApiError("server", f"internal error: {type(exc).__name__}: {exc}"))
    finally:
        run.cancel()  # on disconnect (cancellation lands here) the engine frees the slot at its next step
