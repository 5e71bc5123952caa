"""A disk cache of a model's widened (float32) weights, mapped read-only by later loads.

Widening a quantized GGUF to float32 takes tens of seconds for a 1B model and leaves each process with
its own private copy (4.4 GB for TinyLlama). The first load writes the widened arrays to one file under
the user's cache directory; later loads map that file read-only and shared, so they are ready in about a
second and every process on the machine reads the same copy in the page cache.

One entry per GGUF, named after a hash of its absolute path. The entry's header records the GGUF's size,
mtime and inode: a stat tells a stale entry (the GGUF was replaced or rewritten) without reading the GGUF,
where hashing it would cost a full read (seconds for a 2 GB file) on every start. The header also keeps the
GGUF's sha256, so slot files keep their model fingerprint without that read either.

Damage is found cheaply, at load: the header must parse and match its own crc32, the file must have
exactly the size the header implies, and every array's first and last 64 KiB must match the crc32 the
header holds for them (about 20 MB read for TinyLlama, pages the first step would read anyway). A damaged
or stale entry is deleted and rebuilt. Entries are written atomically (temporary file, fsync, rename), so
a crash never leaves a torn entry under the real name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger("slotserve")

MAGIC = b"SSWCACHE"
VERSION = 1
ALIGN = 1 << 12  # arrays start on page boundaries, so each maps straight into numpy
PROBE = 64 << 10  # bytes checked at each end of every array
DEFAULT_LIMIT_BYTES = 32 * 10**9


def default_dir() -> Path:
    if os.environ.get("SLOTSERVE_WEIGHT_CACHE_DIR"):  # e.g. a test run's own directory
        return Path(os.environ["SLOTSERVE_WEIGHT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "slotserve" / "weights"


@dataclass(frozen=True)
class GgufIdentity:
    """What a stat says about the GGUF: a change in any of these makes its entry stale."""
    path: str
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> "GgufIdentity":
        st = path.stat()
        return cls(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def _probe_crc(buf, start: int, nbytes: int) -> int:
    head = buf[start:start + min(nbytes, PROBE)]
    tail = buf[start + max(0, nbytes - PROBE):start + nbytes]
    return zlib.crc32(tail, zlib.crc32(head))


class WeightCache:
    def __init__(self, directory: Path | None = None, limit_bytes: int = DEFAULT_LIMIT_BYTES):
        self.dir = Path(directory) if directory is not None else default_dir()
        self.limit_bytes = limit_bytes

    def entry_path(self, gguf: Path) -> Path:
        key = hashlib.sha256(str(gguf.resolve()).encode()).hexdigest()[:24]
        return self.dir / f"{gguf.stem}-{key}.f32"

    def load(self, gguf: Path) -> tuple[dict[str, np.ndarray], str] | None:
        """The cached arrays (read-only views of a shared mapping) and the GGUF's sha256, or None when
        there is no usable entry (a stale or damaged one is deleted on the way)."""
        entry = self.entry_path(gguf)
        try:
            f = open(entry, "rb")
        except FileNotFoundError:
            return None
        with f:
            problem, found = self._read(f, GgufIdentity.of(gguf))
        if problem:
            log.warning("weight cache %s: %s; rebuilding it", entry, problem)
            entry.unlink(missing_ok=True)
            return None
        os.utime(entry)  # the size limit evicts the least recently used entries first
        return found

    def _read(self, f, identity: GgufIdentity):
        head = f.read(len(MAGIC) + 12)
        if len(head) < len(MAGIC) + 12 or head[:len(MAGIC)] != MAGIC:
            return "not a weight cache file", None
        version, meta_len, meta_crc = struct.unpack("<III", head[len(MAGIC):])
        if version != VERSION:
            return f"format version {version}, expected {VERSION}", None
        raw = f.read(meta_len)
        if len(raw) != meta_len or zlib.crc32(raw) != meta_crc:
            return "damaged header", None
        meta = json.loads(raw)
        if GgufIdentity(**meta["gguf"]) != identity:
            return "stale (the GGUF changed since the entry was written)", None
        size = os.fstat(f.fileno()).st_size
        if size != meta["size"]:
            return f"size {size}, the header says {meta['size']}", None
        # MAP_POPULATE maps every page now, at load, so the first decode step does not take a fault per
        # page of weights (TinyLlama, quiet machine: first step 0.17-0.18 s, sixth 0.15-0.17 s)
        buf = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                        prot=mmap.PROT_READ)
        arrays = {}
        for name, (offset, shape, crc) in meta["arrays"].items():
            n = int(np.prod(shape)) * 4
            if _probe_crc(buf, offset, n) != crc:
                return f"array '{name}' is damaged (checksum mismatch)", None
            arrays[name] = np.frombuffer(buf, np.float32, count=n // 4, offset=offset).reshape(shape)
        return None, (arrays, meta["fingerprint"])

    def store(self, gguf: Path, arrays: dict[str, np.ndarray], fingerprint: str,
              progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """Write an entry for these arrays and return them mapped from it (so this process shares them
        too), or the arrays unchanged when the entry would not fit the size limit or cannot be written."""
        layout, offset = {}, 0
        for name, a in arrays.items():
            layout[name] = (offset, list(a.shape))
            offset += -(-a.nbytes // ALIGN) * ALIGN
        data_bytes = offset
        if data_bytes > self.limit_bytes:
            log.info("weight cache: %.1f GB of weights exceed the cache limit (%.1f GB); not cached",
                     data_bytes / 1e9, self.limit_bytes / 1e9)
            return arrays
        entry = self.entry_path(gguf)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._evict(self.limit_bytes - data_bytes, keep=entry)
            self._write(tmp, gguf, arrays, layout, data_bytes, fingerprint, progress)
            os.replace(tmp, entry)
        except OSError as exc:  # a full disk or a read-only home: serve from memory, as without the cache
            log.warning("weight cache: cannot write %s (%s); weights stay in memory", entry, exc)
            tmp.unlink(missing_ok=True)
            return arrays
        found = self.load(gguf)
        return found[0] if found else arrays

    def _write(self, tmp: Path, gguf: Path, arrays, layout, data_bytes, fingerprint, progress) -> None:
        probes = {name: _probe_crc(memoryview(np.ascontiguousarray(a)).cast("B"), 0, a.nbytes)
                  for name, a in arrays.items()}
        meta = {"gguf": GgufIdentity.of(gguf).__dict__, "fingerprint": fingerprint, "size": 0,
                "arrays": {n: (0, shape, probes[n]) for n, (_, shape) in layout.items()}}
        # the header's length fixes the data offset, and the offsets are in the header: grow until it fits
        base = ALIGN
        while True:
            meta["arrays"] = {n: (base + off, shape, probes[n]) for n, (off, shape) in layout.items()}
            meta["size"] = base + data_bytes
            raw = json.dumps(meta).encode()
            if len(MAGIC) + 12 + len(raw) <= base:
                break
            base += ALIGN
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<III", VERSION, len(raw), zlib.crc32(raw)) + raw)
            done = 0
            for name, a in arrays.items():
                f.seek(meta["arrays"][name][0])
                f.write(memoryview(np.ascontiguousarray(a, dtype=np.float32)).cast("B"))
                done += a.nbytes
                if progress:
                    progress(done, data_bytes)
            f.truncate(meta["size"])
            f.flush()
            os.fsync(f.fileno())

    def _evict(self, room: int, keep: Path) -> None:
        """Delete least recently used entries until the others take at most `room` bytes."""
        entries = sorted((p for p in self.dir.glob("*.f32") if p != keep), key=lambda p: p.stat().st_mtime)
        used = sum(p.stat().st_size for p in entries)
        for p in entries:
            if used <= room:
                break
            used -= p.stat().st_size
            log.info("weight cache: evicting %s (size limit)", p)
            p.unlink(missing_ok=True)


_LAYER_FIELDS = ("attn_norm", "wqkv", "wo", "ffn_norm", "w_gate_up", "w_down")


def flatten(weights) -> dict[str, np.ndarray]:
    """A loader.Weights as named arrays; a tied output matrix is stored once."""
    arrays = {"tok_embd": weights.tok_embd, "output_norm": weights.output_norm}
    if weights.output is not weights.tok_embd:
        arrays["output"] = weights.output
    if weights.rope_freqs is not None:  # Llama 3.1's rope scaling factors
        arrays["rope_freqs"] = weights.rope_freqs
    for i, layer in enumerate(weights.layers):
        arrays.update({f"blk.{i}.{name}": getattr(layer, name) for name in _LAYER_FIELDS})
    return arrays


def unflatten(arrays: dict[str, np.ndarray], n_layer: int):
    from .loader import LayerWeights, Weights  # the loader imports this module: import its classes late
    layers = [LayerWeights(**{name: arrays[f"blk.{i}.{name}"] for name in _LAYER_FIELDS}) for i in range(n_layer)]
    return Weights(tok_embd=arrays["tok_embd"], layers=layers, output_norm=arrays["output_norm"],
                   output=arrays.get("output", arrays["tok_embd"]), rope_freqs=arrays.get("rope_freqs"))


def _write_progress(label: str) -> Callable[[int, int], None]:
    """The cache file's writing shown as the downloads are: a bar on a terminal, a line per quarter elsewhere."""
    from ..progress import Progress  # tqdm is only needed when an entry is written
    bar: list[Progress] = []

    def show(done: int, total: int) -> None:
        if not bar:
            bar.append(Progress(total=total, desc=f"writing weight cache {label}", unit="B", unit_scale=True))
        bar[0].update(done - bar[0].n)
        if done >= total:
            bar[0].close()
    return show


def cached_weights(cache: WeightCache | None, gguf: Path, n_layer: int, widen: Callable[[], object],
                   fingerprint: Callable[[], str], progress: Callable[[int, int], None] | None = None):
    """(weights, the GGUF's sha256): from the cache when it holds a valid entry, else widen() and
    fingerprint(), then written to the cache (when there is one) and mapped back from it. A hit reports
    its progress as done at once, since widen() (which reports per tensor) does not run."""
    if cache is None:
        return widen(), fingerprint()
    found = cache.load(gguf)
    if found is not None:
        if progress:
            progress(1, 1)
        return unflatten(found[0], n_layer), found[1]
    weights, digest = widen(), fingerprint()
    arrays = cache.store(gguf, flatten(weights), digest, _write_progress(str(cache.entry_path(gguf))))
    del weights  # the anonymous copy goes; the mapped one stays
    return unflatten(arrays, n_layer), digest
