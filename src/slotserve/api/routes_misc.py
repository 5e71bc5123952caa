"""Small endpoints: /health, /props, /models, /metrics, /tokenize, /detokenize, /apply-template."""
from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from .cache_metrics import prompt_cache_lines
from .chat import chat_prompt, tool_plan
from .dialects.shared import params_json
from .errors import ApiError
from .fields import parse_body, read_json
from .prompts import token_ids, tokenize_mixed
from .schema import ChatBody, DetokenizeBody, TokenizeBody, documented, validate
from .state import BUILD_INFO, get_state

router = APIRouter()


@router.get("/health")
@router.get("/v1/health")
async def health():
    # loading / failed states never get here: the gate answers them (503 / 500) for every path
    return {"status": "ok"}


@router.get("/props")
async def props(request: Request):
    st = get_state(request)
    svc, cfg, model = st.service, st.service.config, st.model
    return {
        "default_generation_settings": {
            "params": params_json(cfg.sampling, n_predict=cfg.n_predict, stop=[], stream=False, only_metrics=True),
            "n_ctx": svc.n_ctx_slot,
        },
        "total_slots": svc.n_parallel,
        "model_alias": st.model_name,
        "model_ftype": model.ftype,
        "model_path": str(cfg.model_path),
        "modalities": {"vision": False, "video": False, "audio": False},
        "media_marker": "<__media__>",  # text-only: no media is ever parsed, but clients read the key
        "endpoint_slots": cfg.slots_endpoint,
        "endpoint_props": False,
        "endpoint_metrics": cfg.metrics,
        "ui": cfg.webui,
        "ui_settings": {},
        "chat_template": st.chat_template.source,
        "chat_template_caps": {},
        "bos_token": st.chat_template.bos_token,
        "eos_token": st.chat_template.eos_token,
        "build_info": BUILD_INFO,
        "is_sleeping": svc.sleep is not None and svc.sleep.is_freed,  # a client then finds the memory given back
        "cors_proxy_enabled": False,
        # slotserve's own: each prompt-cache tier's size, limit and counters (null: no prompt cache)
        "slotserve_prompt_cache": st.engine.snapshot.prompt_cache,
    }


@router.get("/models")
@router.get("/v1/models")
async def models(request: Request):
    st = get_state(request)
    model, svc = st.model, st.service
    hp = model.hparams
    info = {
        "id": st.model_name,
        "aliases": sorted(set(svc.config.alias)),  # llama-server keeps them in a std::set
        "tags": sorted(set(svc.config.tags)),
        "object": "model",
        "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
        "created": int(time.time()),
        "owned_by": "llamacpp",
        "meta": {"vocab_type": 1,  # llama.cpp's LLAMA_VOCAB_TYPE_SPM, the only one slotserve reads
                 "n_vocab": hp.n_vocab, "n_ctx": svc.n_ctx_slot, "n_ctx_train": hp.n_ctx_train,
                 "n_embd": hp.n_embd, "n_params": model.n_params, "size": model.file_size},
    }
    # "models" is the Ollama-style listing llama-server also answers with
    listing = {"name": st.model_name, "model": st.model_name, "modified_at": "", "size": "", "digest": "",
               "type": "model", "description": "", "tags": [""], "capabilities": ["completion"],
               "parameters": "", "details": {"parent_model": "", "format": "gguf", "family": "",
                                             "families": [""], "parameter_size": "", "quantization_level": ""}}
    return {"models": [listing], "object": "list", "data": [info]}


@router.get("/metrics")
async def metrics(request: Request):
    st = get_state(request)
    if not st.service.config.metrics:
        raise ApiError("not_supported", "This server does not support metrics endpoint. Start it with `--metrics`")
    snap = st.engine.snapshot
    text = st.metrics.render(snap.stats, snap.n_busy, snap.n_waiting) + prompt_cache_lines(snap.prompt_cache)
    response = PlainTextResponse(text, media_type="text/plain; version=0.0.4")
    # raw, to keep llama-server's capitalisation (Starlette lowercases the names it is given)
    response.raw_headers.append((b"Process-Start-Time-Unix", str(st.metrics.t_start).encode()))
    return response


@router.post("/tokenize", openapi_extra=documented(TokenizeBody))
async def tokenize(request: Request):
    st = get_state(request)
    tok = st.model.tokenizer

    def tokens_of(raw: dict):  # a big body is tokenized on a worker thread (api/offload.py)
        body = validate(TokenizeBody, raw)
        if body.content is None:
            return body, []  # llama-server answers an empty list, not an error
        return body, tokenize_mixed(tok, body.content, "content", bool(body.add_special),
                                    parse_special=body.parse_special is not False)
    body, tokens = await parse_body(request, tokens_of)
    if not body.with_pieces:
        return {"tokens": tokens}
    out = []
    for t in tokens:
        raw = tok.token_to_piece(t, special=True)
        try:
            piece = raw.decode("utf-8")
        except UnicodeDecodeError:
            piece = list(raw)  # a piece that is not whole UTF-8 (a byte token) is given as its bytes
        out.append({"id": t, "piece": piece})
    return {"tokens": out}


@router.post("/detokenize", openapi_extra=documented(DetokenizeBody))
async def detokenize(request: Request):
    st = get_state(request)
    tok = st.model.tokenizer
    body = validate(DetokenizeBody, await read_json(request))
    if body.tokens is None:
        return {"content": ""}
    ids = token_ids(tok, body.tokens, "tokens")
    # llama-server concatenates the pieces as they are (special tokens shown, leading space kept)
    return {"content": b"".join(tok.token_to_piece(t, special=True) for t in ids).decode("utf-8", "replace")}


@router.post("/apply-template", openapi_extra=documented(ChatBody))
async def apply_template(request: Request):
    st = get_state(request)
    body = validate(ChatBody, await read_json(request), st.defaults)
    tools = tool_plan(body, st.chat_template)
    return JSONResponse({"prompt": chat_prompt(body, st.chat_template, tools)})
