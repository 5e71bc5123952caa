"""The save directory's file work, off the engine thread: one writer thread, in submission order.

A save hands the writer a snapshot (the slot's file, encoded by the engine between steps: a copy of its
rows in the file's dtype) and the engine goes on; the writer checksums and writes the .bin
and its sidecar as one unit, and the save is answered once they are in place (durable with SaveDir's
sync). A restore reads, checks and widens a file into a scratch cache here; the engine only swaps that
cache into the slot.

One thread runs every job in the order the engine submitted them, so two saves of one name land in
that order, a restore of a name reads the last save submitted before it, complete, and a delete never
races a write. Snapshots wait in memory for their turn: at most `n_snapshots` of them, in buffers that
are reused (fresh pages cost as much as the copy); a save finding none free waits in the engine's queue.
The first buffer is made full-size at the start, before any slot generates: its fresh pages cost 20-40
ms for a 55 MB file on a quiet machine and took 175-210 ms when a first save met another slot's
generation (a gap of that length in its stream). The second, for a save that overlaps another, still
grows on first use.
"""
from __future__ import annotations

import queue
from concurrent.futures import Future
from typing import Callable

from . import background
from .cache import KVCache
from .persist import SaveSnapshot, SlotStore


class SlotWriter:
    def __init__(self, store: SlotStore, wake: Callable[[], None] = lambda: None, n_snapshots: int = 2,
                 reserve_bytes: int = 0):
        """wake: called on the writer thread when a job ends, so the engine comes to collect it.
        reserve_bytes: the size of a full slot's file, the first snapshot buffer's size."""
        self.store, self._wake = store, wake
        self._io = background.executor(1, "slotserve-slot-io")  # yields the cores to generating slots
        self._buffers: queue.SimpleQueue = queue.SimpleQueue()  # snapshot buffers not in use
        self._buffers.put(bytearray(reserve_bytes))  # zero-filled: its pages are touched now; taken first
        for _ in range(n_snapshots - 1):
            self._buffers.put(bytearray())

    def can_save(self) -> bool:
        """A snapshot buffer is free (engine thread: the only one that takes them)."""
        return not self._buffers.empty()

    def snapshot(self, cache: KVCache, filename: str, id_slot: int) -> SaveSnapshot:
        """A save's snapshot in a free buffer (engine thread, can_save() true); the engine copies it
        (SaveSnapshot.copy) before the slot changes, then hands it to write(). A bad filename raises here."""
        buffer = self._buffers.get_nowait()
        try:
            return self.store.snapshot(cache, filename, id_slot, buffer)  # grows it to the largest slot saved
        except BaseException:
            self._buffers.put(buffer)
            raise

    def write(self, snap: SaveSnapshot) -> Future:
        """Write a copied snapshot on the writer thread; the future gives the store's save result."""
        return self._submit(self._write, snap)

    def _write(self, snap: SaveSnapshot) -> dict:  # writer thread
        try:
            return self.store.write_snapshot(snap)
        finally:
            self.discard(snap)

    def discard(self, snap: SaveSnapshot) -> None:
        """Give a snapshot's buffer back (written, or never to be)."""
        snap.data.release()
        self._buffers.put(snap.buffer)

    def restore(self, into: KVCache, filename: str) -> Future:
        """Read, verify and copy the file into the scratch cache `into` on the writer thread; the future
        gives the store's restore result, and the engine swaps `into` in (persist.SlotStore.restore)."""
        return self._submit(self.store.restore, into, filename)

    def delete(self, filename: str) -> Future:
        return self._submit(self.store.delete, filename)

    def _submit(self, fn, *args) -> Future:
        future = self._io.submit(fn, *args)
        future.add_done_callback(lambda _: self._wake())
        return future

    def close(self) -> None:
        """Finish every job submitted (at shutdown: a save that was accepted is written)."""
        self._io.shutdown(wait=True)
