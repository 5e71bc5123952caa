"""Slots: GET /slots, POST /slots/{id}?action=save|restore|erase, and the save directory's files.

Every slot action starts on the engine thread (it waits there while its slot is busy), so a save or
restore never races a generation; an action whose client disconnects while it waits is dropped, and one
that waits longer than --slot-action-timeout is refused. The file listing and delete are beyond llama-server.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from ..engine.snapshot import SlotView
from ..engine.tasks import EraseResult, RestoreResult, SaveResult, SlotActionKind, SlotActionResult
from ..kvcache.savedir import InvalidFilename, validate_filename
from .bridge import slot_action
from .errors import ApiError, from_slot_failure, invalid
from .dialects.shared import request_params_json
from .fields import read_json
from .state import ApiState, get_state

router = APIRouter()

ACTIONS = (SlotActionKind.SAVE, SlotActionKind.RESTORE, SlotActionKind.ERASE)  # what POST /slots/{id} takes


def _slot_json(slot: SlotView) -> dict:
    """One slot as llama-server's server_slot::to_json(only_metrics=true) shows it, plus n_past.

    An idle slot shows its previous request's id and params, as llama-server's does, but not its counts:
    llama-server resets them when a slot is released."""
    out = {"id": slot.id, "n_ctx": slot.n_ctx, "speculative": True, "is_processing": slot.is_processing,
           "n_past": slot.n_past}  # tokens in the slot's KV cache: what a save would write
    if slot.request is not None:
        busy = slot.is_processing
        n_decoded = slot.n_decoded if busy else 0
        params = request_params_json(slot.request, only_metrics=True)
        n_predict = params["n_predict"] if busy else -1
        out.update({
            "id_task": slot.id_task,
            "n_prompt_tokens": slot.n_past,
            "n_prompt_tokens_processed": slot.prompt_n if busy else 0,
            "n_prompt_tokens_cache": slot.cache_n if busy else 0,
            "params": params,
            "next_token": [{"has_next_token": busy,
                            "has_new_line": busy and slot.has_new_line,
                            "n_remain": n_predict - n_decoded if n_predict >= 0 else -1,
                            "n_decoded": n_decoded}],
        })
    return out


def _action_json(result: SlotActionResult) -> dict:
    """A slot action's answer, in llama-server's field order (delete, beyond llama-server, says what went)."""
    if isinstance(result, SaveResult):
        return {"id_slot": result.id_slot, "filename": result.filename, "n_saved": result.n_saved,
                "n_written": result.n_written, "timings": {"save_ms": result.save_ms}}
    if isinstance(result, RestoreResult):
        return {"id_slot": result.id_slot, "filename": result.filename, "n_restored": result.n_restored,
                "n_read": result.n_read, "timings": {"restore_ms": result.restore_ms}}
    if isinstance(result, EraseResult):
        return {"id_slot": result.id_slot, "n_erased": result.n_erased}
    return {"filename": result.filename, "deleted": True}


@router.get("/slots")
async def get_slots(request: Request):
    st = get_state(request)
    if not st.service.config.slots_endpoint:
        raise ApiError("not_supported", "This server does not support slots endpoint. Start it with `--slots`")
    slots = st.engine.snapshot.slots
    if request.query_params.get("fail_on_no_slot") and all(s.is_processing for s in slots):
        raise ApiError("unavailable", "no slot available")
    return [_slot_json(s) for s in slots]


def _store(st: ApiState):
    if st.service.store is None:
        raise ApiError("not_supported", "This server does not support slots action. Start it with `--slot-save-path`")
    return st.service.store


def _parse_slot_id(raw: str, n_slots: int) -> int:
    try:
        id_slot = int(raw)
    except ValueError:
        raise invalid(f"Invalid slot ID '{raw}': expected an integer between 0 and {n_slots - 1}") from None
    if not 0 <= id_slot < n_slots:
        raise invalid(f"Invalid slot ID {id_slot}: this server has {n_slots} slots (0..{n_slots - 1})")
    return id_slot


def _filename(body: dict) -> str:
    if "filename" not in body or body["filename"] is None:
        raise invalid("missing 'filename' in the request body: expected {\"filename\": \"name.bin\"}")
    name = body["filename"]
    if not isinstance(name, str):
        raise invalid("field 'filename' must be a string")
    try:
        validate_filename(name)
    except InvalidFilename as exc:
        raise invalid(f"Invalid filename: {exc}") from None
    return name


@router.post("/slots/{id_slot}")
async def post_slot_action(request: Request, id_slot: str):
    st = get_state(request)
    _store(st)  # llama-server refuses every action, erase too, without --slot-save-path
    slot = _parse_slot_id(id_slot, st.service.n_parallel)
    action = request.query_params.get("action")
    if action not in ACTIONS:  # str-enums: the query's word is compared with their values
        shown = "no action" if action is None else f"action '{action}'"
        raise invalid(f"Invalid action: {shown}; use ?action=save, ?action=restore or ?action=erase")
    filename = ""
    if action != SlotActionKind.ERASE:  # erase takes no body (llama-server's own clients send none)
        filename = _filename(await read_json(request, required=False))
    try:
        return _action_json(await slot_action(st.engine, SlotActionKind(action), slot, filename, request,
                                              max(st.service.config.slot_action_timeout, 0) or None))
    except Exception as exc:  # the future re-raises what the engine or the store raised
        raise from_slot_failure(exc, filename) from None


@router.get("/slots/files")
async def list_slot_files(request: Request):
    store = _store(get_state(request))
    return await asyncio.to_thread(store.list_files)


@router.delete("/slots/files/{filename:path}")
async def delete_slot_file(request: Request, filename: str):
    st = get_state(request)
    _store(st)
    try:
        return _action_json(await slot_action(st.engine, SlotActionKind.DELETE, -1, filename, request))
    except Exception as exc:  # the future re-raises what the engine raised
        raise from_slot_failure(exc, filename) from None
