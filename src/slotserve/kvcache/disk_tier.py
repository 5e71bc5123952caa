"""The disk prompt cache (``--cache-disk DIR``, ``--cache-disk-size N`` MiB): states that leave RAM,
kept as slot files and found again after a restart.

Each entry is a slot file (llama-server's format, so llama-server could restore it too) with its
sidecar: checksum and size (written by SaveDir), the model's fingerprint, the cache type, the tokens
(so a restart rebuilds the index from sidecars alone, without reading the K/V) and the logits after
the last token when they were kept. A file's name is a digest of its tokens, so storing the same
state again replaces it.

Threads: the index and every decision (what to write, evict, serve) belong to the engine thread; one
I/O thread does all file work in submission order, so a read queued after a write of the same entry
finds it written, and a delete queued after a write removes it. The engine never waits on the disk:
`submit_write` and `read` return at once, and the engine collects reads with `complete` between steps.
Failures come back to the engine thread too (`poll`, `complete`), which drops the entry.

A damaged entry (checksum, size, undecodable) or a foreign one (another model, cache type or
sidecar format) is skipped with a warning and deleted, never served. Files in DIR that are not
entries are left alone.

Several servers may share DIR (replicas). When the directory's mtime changes, `poll` and `lookup`
queue a rescan on the I/O thread (disk_rescan.py; the engine only stats the directory): entries
others wrote join the index, and entries gone (another server evicted them) leave it; an entry that vanishes before its read is a miss, not an error. The size limit is applied by each
server to the entries it sees, its own and the others' alike, each evicting its least recently used
as it knows them (its own uses, and the file times of the others' entries when first seen): the
directory stays within the limit up to what the others wrote since the last rescan, and a server may
evict an entry another still uses.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import background
from .disk_rescan import DirWatch, list_new
from .persist import ModelIdentity, SlotStore
from .prefix_index import EvictParams, InsertParams, MatchPrefixParams, PrefixIndex
from .prompt_state import PromptState
from .ram_tier import MiB
from .filenames import SIDECAR_SUFFIX
from .savedir import SaveDir, SidecarMismatch, SlotFileNotFound
from .sharing import SHARED
from .sidecar import logits_entry, logits_from_entry
from .slotfile import SlotFileError

FORMAT = "slotserve-prompt-cache/1"
_NAME_RE = re.compile(r"^pc-[0-9a-f]{32}\.bin$")
log = logging.getLogger("slotserve.kvcache")


def entry_name(tokens: Sequence[int]) -> str:
    return "pc-" + hashlib.sha256(np.asarray(tokens, "<i4").tobytes()).hexdigest()[:32] + ".bin"


@dataclass(eq=False)
class DiskEntry:
    """One file; in the index it marks the node where its tokens end."""
    name: str
    n_tokens: int
    nbytes: int  # file and sidecar (an estimate until the write is done)

    def split(self, at: int):
        return None, self  # the entry stays with the run that ends where its tokens end


@dataclass(frozen=True)
class DiskHit:
    n_match: int  # leading prompt tokens the entry holds
    entry: DiskEntry  # the entry to read: it holds at least those tokens


class DiskRead:
    """A read in flight; the engine checks `done()` between steps and hands it to DiskTier.complete."""

    def __init__(self, hit: DiskHit, future: Future):
        self.hit, self.future = hit, future

    def done(self) -> bool:
        return self.future.done()


class DiskTier:
    def __init__(self, root: Path | str, model: ModelIdentity, kv_type: str, limit_mib: float = 16384,
                 max_pending_mib: int = 1024, clock: Callable[[], float] | None = None):
        self.dir = SaveDir(root)  # also clears temp files a killed write left
        # the I/O thread's own store: a store's buffers serve one user at a time
        self._store = SlotStore(self.dir, model)
        self.model, self.kv_type = model, kv_type
        self.limit_bytes = int(limit_mib * MiB)
        self.max_pending = max_pending_mib * MiB  # states queued for writing, held in memory until written
        self.index = PrefixIndex(clock)
        self._io = background.executor(1, "slotserve-cache-disk")  # yields the cores to generating slots
        self._writes: list[tuple[Future, DiskEntry, int]] = []
        self._nodes: dict = {}  # entry name -> its node
        self.n_hits = self.n_dropped = 0
        self._rescan: tuple[Future, dict] | None = None  # a rescan in flight, and the entries known when queued
        self._watch = DirWatch(self.dir.root)
        self._closed = False
        self._skipped: dict[str, tuple] = {}  # the I/O thread's: files a rescan refused, as they were
        self._scan()

    @property
    def nbytes(self) -> int:
        return self.index.nbytes

    @property
    def n_entries(self) -> int:
        return len(self._nodes)

    @property
    def pending_bytes(self) -> int:
        return sum(size for future, _, size in self._writes if not future.done())

    # ------------------------------------------------------------------ restart

    def _scan(self) -> None:
        """Rebuild the index from the sidecars, oldest first (so LRU order survives the restart)."""
        found = []
        for f in self.dir.list():
            if not _NAME_RE.match(f.name):
                log.warning("disk cache: %s is not a prompt-cache entry; left alone", f.name)
                continue
            try:
                entry = self._read_entry(f.name)
            except SidecarMismatch as exc:
                log.warning("disk cache: skipping and deleting %s: %s", f.name, exc)
                self._delete_file(f.name)
                continue
            if entry is not None:  # None: another server removed it meanwhile
                found.append(entry)
        for _, name, tokens, size in sorted(found):
            self._add(tokens, DiskEntry(name, len(tokens), size))
        if found:
            log.info("disk cache: %d entries, %.3f MiB found in %s", len(found), self.nbytes / MiB, self.dir.root)
        if self.nbytes > self.limit_bytes:  # the limit may have been lowered since
            self._evict(self.nbytes - self.limit_bytes)

    def _read_entry(self, name: str) -> tuple[float, str, list, int] | None:
        """(mtime, name, tokens, file and sidecar bytes) of entry `name`, None when it is gone. Checked
        with the directory's turn held: another server's save is never seen between its renames."""
        with self.dir.turn(SHARED):
            try:
                st = os.stat(self.dir.root / name, follow_symlinks=False)
            except FileNotFoundError:
                return None
            try:
                side = os.stat(self.dir.root / (name + SIDECAR_SUFFIX), follow_symlinks=False).st_size
            except FileNotFoundError:
                side = None
            meta = self._check_sidecar(name, st.st_size, side is not None)
        return st.st_mtime, name, meta["tokens"], st.st_size + side

    # ------------------------------------------------------------------ other servers' entries

    def _refresh(self) -> None:
        """Engine thread: take in a finished rescan, and queue one when the directory changed since the
        last (one stat; the listing and the sidecars are read on the I/O thread)."""
        if self._closed:
            return
        if self._rescan is not None:
            future, known = self._rescan
            if not future.done():
                return
            self._rescan = None
            self._merge(future, known)
        if not self._watch.changed():
            return
        known = {name: node.value for name, node in self._nodes.items()}
        self._rescan = (self._io.submit(list_new, self.dir, _NAME_RE, self._read_entry, frozenset(known),
                                        self._skipped), known)

    def _merge(self, future: Future, known: dict) -> None:
        if future.exception() is not None:
            log.warning("disk cache: rescanning %s failed: %s", self.dir.root, future.exception())
            return
        present, new = future.result()
        for name, entry in known.items():
            node = self._nodes.get(name)
            if name not in present and node is not None and node.value is entry:
                log.info("disk cache: %s is gone (another server removed it)", name)
                self._forget(entry)
        added = 0
        for _, name, tokens, size in sorted(new):
            if name not in self._nodes:
                self._add(tokens, DiskEntry(name, len(tokens), size))
                added += 1
        if added:
            log.info("disk cache: %d entries another server wrote taken in", added)
        if self.nbytes > self.limit_bytes:
            self._evict(self.nbytes - self.limit_bytes)

    def _check_sidecar(self, name: str, size: int, has_sidecar: bool) -> dict:
        """The sidecar of entry `name` if it is one of ours, for this model and cache type."""
        if not has_sidecar:
            raise SidecarMismatch("it has no sidecar (a write was interrupted)")
        meta = self.dir.read_sidecar(name)
        if meta.get("format") != FORMAT:
            raise SidecarMismatch(f"sidecar format {meta.get('format')!r}, expected {FORMAT!r}")
        if meta.get("model_fingerprint") != self.model.fingerprint:
            raise SidecarMismatch(f"saved from another model ({meta.get('model_name', '?')})")
        if meta.get("kv_type") != self.kv_type:
            raise SidecarMismatch(f"cache type {meta.get('kv_type')!r}, this server's is {self.kv_type!r}")
        if meta.get("size") != size:
            raise SidecarMismatch(f"file is {size} bytes, its sidecar says {meta.get('size')}")
        tokens = meta.get("tokens")
        if (not isinstance(tokens, list) or not tokens or meta.get("n_tokens") != len(tokens)
                or not all(type(t) is int and 0 <= t < self.model.n_vocab for t in tokens)):
            raise SidecarMismatch("its token list is damaged")
        if entry_name(tokens) != name:
            raise SidecarMismatch("its name does not match its tokens")
        return meta

    # ------------------------------------------------------------------ write

    def submit_write(self, state: PromptState) -> Future | None:
        """Queue `state` for writing (its arrays must not change afterwards: stored rows never do);
        None when it is not worth it: empty, held whole already, over the limit, or the queue full.
        Held prefixes of it are dropped, and least recently used entries make room."""
        self.poll()
        n = state.n_tokens
        if n == 0 or state.kv_type != self.kv_type:
            return None
        match = self.index.match_prefix(MatchPrefixParams(state.tokens, touch=False))
        if match.n_match == n:  # every node below the match ends in an entry holding these tokens
            log.debug("disk cache: %d tokens already held, not written again", n)
            return None
        size = _file_size(state) + _sidecar_size(state)
        if size > self.limit_bytes:
            log.warning("disk cache: a state of %.3f MiB exceeds the limit of %.3f MiB, not written",
                        size / MiB, self.limit_bytes / MiB)
            return None
        if self.pending_bytes + state.nbytes > self.max_pending:
            self.n_dropped += 1
            log.warning("disk cache: %.3f MiB already queued for writing; dropping a state of %d tokens",
                        self.pending_bytes / MiB, n)
            return None
        for node in match.nodes:  # held states that are prefixes of this one are obsolete
            if node.value is not None and (node is not match.last_node or match.n_in_node == len(node.key)):
                self._drop(node.value, "a longer state replaces it")
        if self.nbytes + size > self.limit_bytes:
            self._evict(self.nbytes + size - self.limit_bytes)
        entry = DiskEntry(entry_name(state.tokens), n, size)
        self._add(state.tokens, entry)
        future = self._io.submit(self._write, entry.name, state)
        self._writes.append((future, entry, state.nbytes))
        log.info("disk cache: writing %d tokens (%.3f MiB) as %s", n, size / MiB, entry.name)
        return future

    def _write(self, name: str, state: PromptState) -> int:  # I/O thread
        meta = {"format": FORMAT, "model_fingerprint": self.model.fingerprint, "model_name": self.model.name,
                "kv_type": state.kv_type, "n_tokens": state.n_tokens, "tokens": list(state.tokens)}
        if state.logits is not None:
            meta["logits"] = logits_entry(state.logits, state.n_tokens)
        size = self._store.write_state(state.to_slot_state(), name, meta)
        return size + os.stat(self.dir.root / (name + SIDECAR_SUFFIX)).st_size

    def poll(self) -> None:
        """Take in finished writes (engine thread): the sizes written replace the estimates, and a
        failed write leaves the index."""
        still = []
        for future, entry, size in self._writes:
            if not future.done():
                still.append((future, entry, size))
                continue
            exc = future.exception()
            if exc is not None:
                self._drop(entry, f"writing it failed: {exc}", warn=True)
                continue
            node = self._nodes.get(entry.name)
            if node is not None and node.value is entry:
                estimate, entry.nbytes = entry.nbytes, future.result()
                self.index.resized(node, estimate)
        self._writes = still
        if self.nbytes > self.limit_bytes:
            self._evict(self.nbytes - self.limit_bytes)
        self._refresh()

    # ------------------------------------------------------------------ read

    def lookup(self, prompt: Sequence[int]) -> DiskHit | None:
        """An entry sharing the longest prefix with `prompt`. Every entry below the match point holds
        that prefix; the walk down to one takes the most recently used branch and stops at the first
        entry, the shortest on it (the least to read), so it costs one path, not the subtree."""
        self._refresh()
        match = self.index.match_prefix(MatchPrefixParams(prompt, touch=False))
        if match.n_match == 0:
            return None
        node = match.last_node
        while node.value is None:  # a valueless node always has children (the index prunes it otherwise)
            node = max(node.children.values(), key=lambda n: n.last_access)
        return DiskHit(match.n_match, node.value)

    def read(self, hit: DiskHit) -> DiskRead:
        """Start reading the hit's entry on the I/O thread; nothing is decided until `complete`."""
        return DiskRead(hit, self._io.submit(self._read, hit.entry))

    def _read(self, entry: DiskEntry) -> PromptState:  # I/O thread
        def consume(state):
            return PromptState.from_slot_state(state, self.kv_type)  # a copy: the read buffer is reused

        state, meta, _ = self._store.read_state(entry.name, entry.n_tokens, consume)
        tokens = meta.get("tokens") if meta else None
        if tokens is None or list(state.tokens) != tokens:
            raise SidecarMismatch("the file's tokens are not its sidecar's")
        if "logits" in meta:
            state.logits = logits_from_entry(meta["logits"], len(tokens), self.model.n_vocab)
        try:
            os.utime(self.dir.root / entry.name)  # its use, remembered across restarts
        except OSError:
            pass
        return state

    def complete(self, read: DiskRead) -> PromptState | None:
        """The state read (engine thread, once read.done()): None if the entry was damaged or gone,
        which then leaves the index and the disk."""
        try:
            state = read.future.result()
        except SlotFileNotFound:  # another server evicted it: a miss, nothing to delete
            log.info("disk cache: %s is gone (another server removed it)", read.hit.entry.name)
            self._forget(read.hit.entry)
            return None
        except (SidecarMismatch, SlotFileError, SlotFileNotFound, ValueError, OSError) as exc:
            self._drop(read.hit.entry, str(exc), warn=True)
            return None
        if read.hit.entry.name in self._nodes:
            self.index.match_prefix(MatchPrefixParams(state.tokens))  # touch: a use
        self.n_hits += 1
        log.info("disk cache: read %d tokens from %s", state.n_tokens, read.hit.entry.name)
        return state

    def load(self, hit: DiskHit) -> PromptState | None:
        """read + complete, waiting for the disk: for shutdown, start-up or tests, not between steps."""
        read = self.read(hit)
        read.future.exception()
        return self.complete(read)

    # ------------------------------------------------------------------ eviction and removal

    def _add(self, tokens: Sequence[int], entry: DiskEntry) -> None:
        node = self.index.insert(InsertParams(tokens)).node
        self.index.set_value(node, entry)
        self._nodes[entry.name] = node  # a split keeps the value on this same node object

    def _forget(self, entry: DiskEntry) -> None:
        node = self._nodes.pop(entry.name, None)
        if node is not None and node.value is entry:
            self.index.remove(node)

    def _evict(self, n_bytes: int) -> None:
        self.index.evict(EvictParams(n_bytes, on_evict=lambda node: self._on_evict(node.value)))

    def _on_evict(self, entry: DiskEntry) -> None:
        log.info("disk cache: evicting %s (%d tokens, %.3f MiB)", entry.name, entry.n_tokens, entry.nbytes / MiB)
        self._nodes.pop(entry.name, None)
        self._io.submit(self._delete_file, entry.name)

    def _drop(self, entry: DiskEntry, why: str, warn: bool = False) -> None:
        """Forget an entry and delete its files (after whatever I/O is queued for it)."""
        (log.warning if warn else log.info)("disk cache: skipping and deleting %s: %s", entry.name, why)
        self._forget(entry)
        self._io.submit(self._delete_file, entry.name)

    def _delete_file(self, name: str) -> None:  # I/O thread (or the constructor)
        try:
            self.dir.delete(name)
        except SlotFileNotFound:
            pass

    def drain(self) -> None:
        """Wait for every queued write and delete (before sleeping: the states then hold no memory)."""
        self._io.submit(lambda: None).result()
        self.poll()

    def close(self) -> None:
        """Finish every queued write and delete (at shutdown, after the slots' states were submitted)."""
        self._closed = True  # no rescan after this
        self._io.shutdown(wait=True)
        self.poll()


def _file_size(state: PromptState) -> int:
    """The slot file's exact size: header, packed tokens, one stream's cells, per-layer K and V."""
    n, n_layer = state.n_tokens, state.parts[0].k.shape[0]
    return 4 * 3 + 4 * (n + 4) + 4 + 4 + 12 * n + 16 + n_layer * 2 * 12 + state.nbytes


def _sidecar_size(state: PromptState) -> int:
    # tokens as indented JSON lines, logits as base64, and the fixed fields (poll makes it exact)
    return 10 * state.n_tokens + (0 if state.logits is None else 6 * len(state.logits)) + 512
