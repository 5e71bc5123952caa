"""Slot actions: save, restore and erase a slot's cache, delete a saved file.

The engine thread starts them between steps, once their slot is idle, and the file work runs on the
writer thread (kvcache/writer.py), taking turns with the steps (kvcache/background.py): a save's
checksum and write; a restore's read, checksum and copy into the scratch cache, which the engine then
swaps into the slot. A save's rows the engine copies into the file's bytes itself (an f16 cache's float16
rows), for a share of each step's time while other slots generate (all at once when none does), since
the slot may change as soon as it lets go of it. A slot being copied or restored is held: nothing else
starts on it until the copy or the swap is done.

An action belongs to its request: one whose client went away before it started is dropped, and one
that waited longer than its timeout for a busy slot is refused. Each logs one line: what it did, or why not.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from ..kvcache.cache import KVCache
from ..kvcache.persist import SaveSnapshot, SlotStore
from ..kvcache.savedir import InsufficientStorage, InvalidFilename, SidecarMismatch, SlotFileNotFound
from ..kvcache.slotfile import SlotFileError
from ..kvcache.writer import SlotWriter
from .slot import Slot
from .tasks import (DeleteResult, EngineError, EraseResult, ErrorKind, RestoreResult, SaveResult, SlotActionKind,
                    SlotActionResult, SlotActionTask)

log = logging.getLogger("slotserve.engine")
NOT_SUPPORTED = "This server does not support slot save/restore: start it with --slot-save-path DIR"


@dataclass
class _Running:
    """An action whose file work is on the writer thread (a save still copying its rows: no future yet)."""
    task: SlotActionTask
    t0: float
    future: Future | None = None
    snapshot: SaveSnapshot | None = None


class SlotActions:
    def __init__(self, slots: list[Slot], store: SlotStore | None, scratch: KVCache | None,
                 wake: Callable[[], None] = lambda: None):
        """scratch: the cache a restore fills before it is swapped with the slot's, so that a bad file never
        touches a slot. None without a store. wake: tells the engine thread a file job ended."""
        self.slots, self.store, self._scratch = slots, store, scratch
        self.writer = None if store is None else SlotWriter(store, wake, reserve_bytes=store.file_size_for(scratch))
        self._running: list[_Running] = []

    @property
    def _restoring(self) -> bool:
        return any(r.task.action is SlotActionKind.RESTORE for r in self._running)

    @property
    def copying(self) -> bool:
        """Rows are still to be copied (the engine must come back without waiting for new work)."""
        return any(r.snapshot is not None for r in self._running)

    def copy_rows(self, until: float = float("inf")) -> None:
        """Copy saves' rows (engine thread, between steps): all of them, or until perf_counter() passes
        `until`. A save whose copy is complete goes to the writer."""
        for run in self._running:
            if time.perf_counter() >= until:
                break
            if run.snapshot is not None:
                self._copy_save(run, until)

    def _copy_save(self, run: _Running, until: float) -> None:
        try:
            run.snapshot.copies.copy(until)
        except Exception as exc:  # the save fails, the engine goes on (poll() answers it)
            self.writer.discard(run.snapshot)
            run.snapshot.copies.clear()
            run.future = _failed(exc)
        if not run.snapshot.copies:
            self.slots[run.task.id_slot].held = False
            if run.future is None:
                run.future = self.writer.write(run.snapshot)
            run.snapshot = None

    def ready(self, task: SlotActionTask) -> bool:
        """False while the action must wait: its slot is busy (generating or being restored), no snapshot
        buffer is free for a save, or the scratch cache is filling for another restore."""
        if task.action is SlotActionKind.DELETE:
            return True
        if self.slots[task.id_slot].is_processing:
            return False
        if self.writer is None or task.action is SlotActionKind.ERASE:
            return True  # without a store, start() refuses a save or restore at once
        if task.action is SlotActionKind.SAVE:
            return self.writer.can_save()
        return not self._restoring

    def refusal(self, task: SlotActionTask, now: float) -> EngineError | None:
        """Why a waiting action must not run any more: its client left, or it waited past its timeout."""
        where = _where(task)
        if task.cancelled.is_set() or task.future.cancelled():
            log.info("%s: %s dropped: its client disconnected before it ran", where, _what(task))
            return EngineError(ErrorKind.UNAVAILABLE, f"{task.action} dropped: the client disconnected")
        if task.timeout_s is not None and now - task.t_submit > task.timeout_s and not self.ready(task):
            log.warning("%s: %s refused: it waited %.0f s for the slot to become idle", where, _what(task),
                        now - task.t_submit)
            return EngineError(ErrorKind.UNAVAILABLE,
                               f"slot {task.id_slot} stayed busy for {task.timeout_s:g} s: the {task.action} "
                               f"was not run (--slot-action-timeout); try again later")
        return None

    def start(self, task: SlotActionTask) -> SlotActionResult | None:
        """Start the action (ready() is true; the slot id was checked on submit): its result when it is done
        at once, None when it runs on the writer thread (poll() answers it). Raises EngineError."""
        t0 = time.perf_counter()
        try:
            if task.action is SlotActionKind.ERASE:
                slot = self.slots[task.id_slot]
                n_erased = slot.cache.n_past
                slot.cache.clear()
                log.info("%s: erased %d tokens", _where(task), n_erased)
                return EraseResult(slot.id, n_erased)
            if self.writer is None:
                raise EngineError(ErrorKind.NOT_SUPPORTED, NOT_SUPPORTED)
            if task.action is SlotActionKind.DELETE:  # on the writer thread: it never races a save of the file
                future = self.writer.delete(task.filename)
            elif task.action is SlotActionKind.SAVE:
                slot = self.slots[task.id_slot]
                self._running.append(_Running(task, t0, snapshot=self.writer.snapshot(slot.cache, task.filename,
                                                                                      slot.id)))
                slot.held = True  # until copy_rows has its rows
                return None
            else:
                self.slots[task.id_slot].held = True
                future = self.writer.restore(self._scratch, task.filename)
        except Exception as exc:
            raise self._failure(task, exc) from None
        self._running.append(_Running(task, t0, future))
        return None

    def poll(self) -> list[tuple[SlotActionTask, SlotActionResult | EngineError]]:
        """The actions whose file work ended (engine thread, between steps): a restored scratch cache is
        swapped into its slot here. The caller publishes, then answers each task."""
        done = [r for r in self._running if r.future is not None and r.future.done()]
        self._running = [r for r in self._running if r not in done]
        return [(r.task, self._finish(r)) for r in done]

    def _finish(self, run: _Running) -> SlotActionResult | EngineError:
        task = run.task
        try:
            if task.action is SlotActionKind.RESTORE:
                self.slots[task.id_slot].held = False
            got = run.future.result()
        except Exception as exc:
            return self._failure(task, exc)
        ms = (time.perf_counter() - run.t0) * 1e3
        if task.action is SlotActionKind.DELETE:
            log.info("slot file: deleted '%s'", task.filename)
            return DeleteResult(task.filename)
        if task.action is SlotActionKind.SAVE:
            log.info("%s: saved %d tokens to '%s' (%d bytes) in %.1f ms", _where(task), got["n_saved"],
                     task.filename, got["n_written"], ms)
            return SaveResult(task.id_slot, task.filename, got["n_saved"], got["n_written"], ms)
        slot = self.slots[task.id_slot]
        slot.cache, self._scratch = self._scratch, slot.cache
        log.info("%s: restored %d tokens from '%s' (%d bytes) in %.1f ms", _where(task), got["n_restored"],
                 task.filename, got["n_read"], ms)
        return RestoreResult(slot.id, task.filename, got["n_restored"], got["n_read"], ms)

    def _failure(self, task: SlotActionTask, exc: Exception) -> EngineError:
        """The error a failed action answers, logged."""
        err = _engine_error(task, exc)
        if isinstance(exc, EngineError) or err.kind is not ErrorKind.SERVER:
            log.warning("%s: %s refused: %s", _where(task), _what(task), err.message)
        else:  # anything unforeseen still answers the client and keeps serving
            log.error("%s: %s failed", _where(task), _what(task), exc_info=exc)
        return err

    def close(self) -> list[tuple[SlotActionTask, SlotActionResult | EngineError]]:
        """At shutdown: let the writer finish what it was given, and return those actions' answers."""
        if self.writer is not None:
            self.copy_rows()
            self.writer.close()
        return self.poll()


def _failed(exc: Exception) -> Future:
    future: Future = Future()
    future.set_exception(exc)
    return future


def _where(task: SlotActionTask) -> str:
    return "slot file" if task.action is SlotActionKind.DELETE else f"slot {task.id_slot}"


def _what(task: SlotActionTask) -> str:
    return str(task.action) if task.action is SlotActionKind.ERASE else f"{task.action} '{task.filename}'"


def _engine_error(task: SlotActionTask, exc: Exception) -> EngineError:
    kind = task.action
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, SlotFileNotFound):
        # restore of a missing file: a 400, as llama-server
        err = ErrorKind.NOT_FOUND if kind is SlotActionKind.DELETE else ErrorKind.INVALID_REQUEST
        return EngineError(err, f"slot file '{task.filename}' was not found in the slot save directory")
    if isinstance(exc, InvalidFilename):
        return EngineError(ErrorKind.INVALID_REQUEST, f"Invalid filename: {exc}")
    if isinstance(exc, InsufficientStorage):  # the previous file and its sidecar are untouched
        return EngineError(ErrorKind.INSUFFICIENT_STORAGE, str(exc.strerror or exc))
    if isinstance(exc, (SlotFileError, SidecarMismatch)):
        return EngineError(ErrorKind.INVALID_REQUEST, f"cannot restore '{task.filename}': {exc}")
    return EngineError(ErrorKind.SERVER, f"{kind} failed: {exc}")
