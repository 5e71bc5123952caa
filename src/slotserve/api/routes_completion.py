"""Text generation: /completion (llama-server's own shape), /v1/completions, /v1/chat/completions,
OpenAI's /v1/responses and Anthropic's /v1/messages; and the token counts of chat-style requests.

All of them parse into the same engine requests; they differ only in how results are written out.
Streaming answers are Server-Sent Events, one `data: {json}` per token, as llama-server sends them
(Anthropic's and the Responses API's events also name their type in an `event:` line).
"""
from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..engine.tasks import EngineError, exceed_context
from .anthropic import anthropic_to_chat
from .bridge import Run
from .chat import chat_to_llama_params
from .errors import ApiError, from_engine, invalid
from .parsing import Generation, parse_generation, read_json, tokenize_prompts
from .responses import responses_to_chat
from .render import ANTHROPIC, CHAT, NATIVE, OAI, RESPONSES, Answer
from .state import BUILD_INFO, ApiState, get_state

router = APIRouter()
log = logging.getLogger("slotserve.api")



@router.post("/completion")
@router.post("/completions")
async def completion(request: Request):
    return await _generate(request, await read_json(request), NATIVE)


@router.post("/v1/completions")
async def oai_completion(request: Request):
    body = await read_json(request)
    # what the OpenAI API has and we cannot do is refused rather than ignored (oaicompat_completion_params_parse)
    if body.get("echo"):
        raise invalid("Only no echo is supported")
    for name in ("best_of", "suffix"):
        if body.get(name) is not None:
            raise invalid(f"Unsupported param: {name}")
    return await _generate(request, body, OAI)


@router.post("/chat/completions")
@router.post("/v1/chat/completions")
async def chat_completion(request: Request):
    st = get_state(request)
    body = chat_to_llama_params(await read_json(request), st.chat_template)
    return await _generate(request, body, CHAT)


@router.post("/v1/messages")
async def anthropic_messages(request: Request):
    st = get_state(request)
    body = chat_to_llama_params(anthropic_to_chat(await read_json(request)), st.chat_template)
    return await _generate(request, body, ANTHROPIC)


def _chat_prompt_tokens(st: ApiState, chat_body: dict) -> int:
    """How many tokens the chat request's prompt is, as its completion would evaluate it."""
    prompt = chat_to_llama_params(chat_body, st.chat_template)["prompt"]
    return len(tokenize_prompts(st.model.tokenizer, prompt)[0])


@router.post("/v1/messages/count_tokens")
async def anthropic_count_tokens(request: Request):
    st = get_state(request)
    return {"input_tokens": _chat_prompt_tokens(st, anthropic_to_chat(await read_json(request)))}


@router.post("/chat/completions/input_tokens")
@router.post("/v1/chat/completions/input_tokens")
async def chat_input_tokens(request: Request):
    st = get_state(request)
    return {"input_tokens": _chat_prompt_tokens(st, await read_json(request)), "object": "response.input_tokens"}


@router.post("/responses")
@router.post("/v1/responses")
async def oai_responses(request: Request):
    st = get_state(request)
    body = chat_to_llama_params(responses_to_chat(await read_json(request)), st.chat_template)
    return await _generate(request, body, RESPONSES)


@router.post("/responses/input_tokens")
@router.post("/v1/responses/input_tokens")
async def responses_input_tokens(request: Request):
    st = get_state(request)
    chat = responses_to_chat(await read_json(request))
    return {"input_tokens": _chat_prompt_tokens(st, chat), "object": "response.input_tokens"}


def _check_context(st: ApiState, gen: Generation) -> None:
    """Refuse a prompt that cannot fit before anything is queued or streamed. The engine refuses it too,
    but only once the slot is free, and a stream must not have begun when the error comes."""
    svc = st.service
    if svc.config.context_shift:
        return
    for req in gen.requests:
        n = len(req.prompt_tokens)
        if n >= svc.n_ctx_slot:
            raise from_engine(exceed_context(n, svc.n_ctx_slot))


async def _generate(request: Request, body: dict, mode: str):
    st = get_state(request)
    svc, tok = st.service, st.model.tokenizer
    engine = st.engine
    prompts = tokenize_prompts(tok, body.get("prompt"))
    gen = parse_generation(body, prompts, tok=tok, defaults=svc.config.sampling,
                           n_predict_default=svc.config.n_predict, n_parallel=svc.n_parallel)
    _check_context(st, gen)
    answer = Answer(model=st.model_name, tok=tok, build_info=BUILD_INFO, gen=gen,
                    server_n_predict=svc.config.n_predict, mode=mode,
                    verbose=svc.config.verbose if gen.verbose is None else gen.verbose)
    run = Run(engine, gen.requests)
    run.start()

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
    ping = svc.config.sse_ping_interval if gen.sse_ping_interval is None else gen.sse_ping_interval
    return StreamingResponse(_events(run, answer, first, ping if ping > 0 else None),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(run: Run, answer: Answer, first, ping_s: float | None):
    """The stream's events; after ping_s seconds without one (a long prompt, a busy server) an SSE comment
    keeps proxies and clients from timing the connection out, as llama-server's --sse-ping-interval."""
    item = first
    try:
        while True:
            index, obj = item
            if isinstance(obj, EngineError):
                yield answer.stream_error(from_engine(obj))
                return  # llama-server ends the stream on an error, without [DONE]
            yield answer.stream_text(index, obj)
            if run.done:
                break
            # no disconnect polling here: Starlette cancels this generator when the client goes away
            item = await run.next_within(ping_s)
            while item is None:
                yield ":\n\n"
                item = await run.next_within(ping_s)
        yield answer.stream_end()
    except Exception as exc:  # headers are sent: a failure can only be reported as a last event
        log.exception("stream failed")
        yield answer.stream_error(ApiError("server", f"internal error: {type(exc).__name__}: {exc}"))
    finally:
        run.cancel()  # on disconnect (cancellation lands here) the engine frees the slot at its next step
