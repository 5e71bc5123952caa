"""Slot actions of the engine: save, restore, erase, delete a saved file, and the /slots snapshot.

They run on the engine thread between steps (Engine._dispatch calls them), so they never interleave
with a slot's batch; an action on a busy slot waits until the slot is idle.
"""
from __future__ import annotations

import logging
import time

from ..kvcache.savedir import InvalidFilename, SidecarMismatch, SlotFileNotFound
from ..kvcache.slotfile import SlotFileError
from .slot import Slot
from .tasks import EngineError, SlotActionTask

log = logging.getLogger("slotserve.engine")


class SlotActions:
    """Mixed into Engine, whose `slots`, `store` and `_scratch` cache these use."""

    def _try_slot_action(self, task: SlotActionTask) -> bool:
        """Run the action now if its slot is idle; False means: wait for the slot."""
        if task.action == "snapshot":
            task.future.set_result(self._snapshot())
            return True
        slot = None
        if task.action != "delete":
            if not 0 <= task.id_slot < len(self.slots):
                task.future.set_exception(self._bad_slot(task.id_slot))
                return True
            slot = self.slots[task.id_slot]
            if slot.is_processing:
                return False
        try:
            task.future.set_result(self._slot_action(task, slot))
        except EngineError as exc:
            task.future.set_exception(exc)
        except Exception as exc:  # anything unforeseen still answers the client and keeps serving
            log.exception("slot action failed")
            task.future.set_exception(EngineError("server", f"{task.action} failed: {exc}"))
        return True

    def _slot_action(self, task: SlotActionTask, slot: Slot) -> dict:
        if task.action == "erase":
            n_erased = slot.cache.n_past
            slot.cache.clear()
            return {"id_slot": slot.id, "n_erased": n_erased}
        if self.store is None:
            raise EngineError("not_supported", "This server does not support slot save/restore: start it with "
                                               "--slot-save-path DIR")
        t0 = time.perf_counter()
        try:
            if task.action == "delete":  # here, so it never races a save or restore of the same file
                self.store.delete(task.filename)
                return {"filename": task.filename, "deleted": True}
            if task.action == "save":
                result, key = self.store.save(slot.cache, task.filename, slot.id), "save_ms"
            else:
                result, key = self.store.restore(self._scratch, task.filename), "restore_ms"
                slot.cache, self._scratch = self._scratch, slot.cache
        except SlotFileNotFound:
            kind = "not_found" if task.action == "delete" else "invalid_request"  # restore: a 400, as llama-server
            raise EngineError(kind, f"slot file '{task.filename}' was not found in the slot save directory") from None
        except InvalidFilename as exc:
            raise EngineError("invalid_request", f"Invalid filename: {exc}") from None
        except (SlotFileError, SidecarMismatch) as exc:
            raise EngineError("invalid_request", f"cannot restore '{task.filename}': {exc}") from None
        return {"id_slot": slot.id, "filename": task.filename, **result,
                "timings": {key: (time.perf_counter() - t0) * 1e3}}

    def _bad_slot(self, id_slot: int) -> EngineError:
        return EngineError("invalid_request", f"slot {id_slot} does not exist: this server has {len(self.slots)} "
                                              f"slots (ids 0 to {len(self.slots) - 1})")

    def _snapshot(self) -> list[dict]:
        """Every slot's state for GET /slots: its current request, else its previous one."""
        out = []
        for slot in self.slots:
            gen = slot.gen or slot.last
            out.append({
                "id": slot.id,
                "n_ctx": slot.cache.n_ctx,
                "is_processing": slot.gen is not None,
                "n_past": slot.cache.n_past,
                "cache_tokens": list(slot.cache.tokens),
                "id_task": gen.task.id if gen else -1,
                "request": gen.task.request if gen else None,
                "n_decoded": len(gen.generated) if gen else 0,
                "prompt_n": gen.timings.prompt_n if gen else 0,
                "cache_n": gen.timings.cache_n if gen else 0,
                "generated": gen.text.text if gen else "",
                "has_next_token": slot.gen is not None,
            })
        return out
