"""Slot actions: save, restore and erase a slot's cache, delete a saved file.

The engine thread runs them between steps, so they never interleave with a slot's batch; an action
on a busy slot waits until the slot is idle. Each logs one line: what it did, or why it failed.
"""
from __future__ import annotations

import logging
import time

from ..kvcache.cache import KVCache
from ..kvcache.persist import SlotStore
from ..kvcache.savedir import InvalidFilename, SidecarMismatch, SlotFileNotFound
from ..kvcache.slotfile import SlotFileError
from .slot import Slot
from .tasks import (DeleteResult, EngineError, EraseResult, ErrorKind, RestoreResult, SaveResult, SlotActionKind,
                    SlotActionResult, SlotActionTask)

log = logging.getLogger("slotserve.engine")


class SlotActions:
    def __init__(self, slots: list[Slot], store: SlotStore | None, scratch: KVCache | None):
        """scratch: the cache a restore fills before it is swapped with the slot's, so that a bad file never
        touches a slot (and the file's checksum can run while its rows are being copied). None without a store."""
        self.slots, self.store, self._scratch = slots, store, scratch

    def ready(self, task: SlotActionTask) -> bool:
        """False while the task's slot is generating: the action waits for it."""
        return task.action is SlotActionKind.DELETE or not self.slots[task.id_slot].is_processing

    def run(self, task: SlotActionTask) -> SlotActionResult:
        """Run the action (its slot is idle; its id was checked on submit); raises EngineError."""
        where = "slot file" if task.action is SlotActionKind.DELETE else f"slot {task.id_slot}"
        t0 = time.perf_counter()
        try:
            result = self._run(task)
        except EngineError as exc:
            log.warning("%s: %s '%s' refused: %s", where, task.action, task.filename, exc.message)
            raise
        except Exception as exc:  # anything unforeseen still answers the client and keeps serving
            log.exception("%s: %s '%s' failed", where, task.action, task.filename)
            raise EngineError(ErrorKind.SERVER, f"{task.action} failed: {exc}") from None
        ms = (time.perf_counter() - t0) * 1e3
        if isinstance(result, SaveResult):
            log.info("%s: saved %d tokens to '%s' (%d bytes) in %.1f ms", where, result.n_saved, task.filename,
                     result.n_written, ms)
        elif isinstance(result, RestoreResult):
            log.info("%s: restored %d tokens from '%s' (%d bytes) in %.1f ms", where, result.n_restored,
                     task.filename, result.n_read, ms)
        elif isinstance(result, EraseResult):
            log.info("%s: erased %d tokens in %.1f ms", where, result.n_erased, ms)
        else:
            log.info("%s: deleted '%s' in %.1f ms", where, task.filename, ms)
        return result

    def _run(self, task: SlotActionTask) -> SlotActionResult:
        kind = task.action
        if kind is SlotActionKind.ERASE:
            slot = self.slots[task.id_slot]
            n_erased = slot.cache.n_past
            slot.cache.clear()
            return EraseResult(slot.id, n_erased)
        if self.store is None:
            raise EngineError(ErrorKind.NOT_SUPPORTED, "This server does not support slot save/restore: start it "
                                                       "with --slot-save-path DIR")
        t0 = time.perf_counter()
        try:
            if kind is SlotActionKind.DELETE:  # here, so it never races a save or restore of the same file
                self.store.delete(task.filename)
                return DeleteResult(task.filename)
            slot = self.slots[task.id_slot]
            if kind is SlotActionKind.SAVE:
                done = self.store.save(slot.cache, task.filename, slot.id)
                return SaveResult(slot.id, task.filename, done["n_saved"], done["n_written"],
                                  (time.perf_counter() - t0) * 1e3)
            done = self.store.restore(self._scratch, task.filename)
            slot.cache, self._scratch = self._scratch, slot.cache
            return RestoreResult(slot.id, task.filename, done["n_restored"], done["n_read"],
                                 (time.perf_counter() - t0) * 1e3)
        except SlotFileNotFound:
            # restore of a missing file: a 400, as llama-server
            err = ErrorKind.NOT_FOUND if kind is SlotActionKind.DELETE else ErrorKind.INVALID_REQUEST
            raise EngineError(err, f"slot file '{task.filename}' was not found in the slot save directory") from None
        except InvalidFilename as exc:
            raise EngineError(ErrorKind.INVALID_REQUEST, f"Invalid filename: {exc}") from None
        except (SlotFileError, SidecarMismatch) as exc:
            raise EngineError(ErrorKind.INVALID_REQUEST, f"cannot restore '{task.filename}': {exc}") from None
