"""A GGUF file's metadata as plain Python values, read fast; its tensors through `gguf`.

`gguf.GGUFReader` builds a numpy memmap view for every element of every metadata array: a 128,256-token
vocabulary with 280,147 merges is ~950k views and 13-40 s of parsing before a model can load. `GGUFFile`
keeps gguf's tensor reading and replaces only the metadata pass (GGUF v2/v3: key, u32 type, value; an array
is u32 item type, u64 count, items; a string is u64 byte length and bytes) with one loop over the bytes.
`metadata[key]` holds what `ReaderField.contents()` would give, except that strings inside arrays are decoded
with surrogateescape: a vocabulary may hold pieces that are not valid UTF-8 and must round-trip byte for byte.
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType

_SCALARS = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}


class GGUFFile(GGUFReader):
    """`GGUFReader` whose metadata is `self.metadata: dict[str, Any]`; `fields` keeps only the header counts."""

    metadata: dict[str, Any]

    # GGUFReader.__init__ calls this once, between the header and the tensor infos, and wants the end offset
    def _build_fields(self, offs: int, count: int) -> int:
        self._order = ">" if self.byte_order == "S" else "<"
        self._buf = memoryview(self.data)
        self.metadata = {}
        for _ in range(int(count)):
            key, offs = self._string(offs, "strict")
            (vtype,), offs = self._unpack("I", offs)
            if key in self.metadata:
                raise ValueError(f"duplicate metadata key {key!r}")
            self.metadata[key], offs = self._value(vtype, offs)
        align = self.metadata.get("general.alignment")
        if align is not None:  # gguf reads it from `fields`, which this reader leaves without metadata
            if not isinstance(align, int) or align <= 0 or align & (align - 1):
                raise ValueError(f"invalid general.alignment {align!r}: must be a power of two")
            self.alignment = align
        return offs

    def _unpack(self, fmt: str, offs: int) -> tuple[tuple, int]:
        fmt = self._order + fmt
        return struct.unpack_from(fmt, self._buf, offs), offs + struct.calcsize(fmt)

    def _string(self, offs: int, errors: str) -> tuple[str, int]:
        (n,), offs = self._unpack("Q", offs)
        if offs + n > len(self._buf):
            raise ValueError(f"string of {n} bytes at offset {offs} runs past the end of the file")
        return str(self._buf[offs:offs + n], "utf-8", errors), offs + n

    def _value(self, vtype: int, offs: int) -> tuple[Any, int]:
        if vtype == GGUFValueType.STRING:
            return self._string(offs, "strict")
        if vtype in _SCALARS:
            (value,), offs = self._unpack(_SCALARS[vtype], offs)
            return value, offs
        if vtype != GGUFValueType.ARRAY:
            raise ValueError(f"unknown metadata value type {vtype}")
        (itype, n), offs = self._unpack("IQ", offs)
        if itype == GGUFValueType.STRING:
            return self._strings(n, offs)
        if itype in _SCALARS:
            dtype = np.dtype(self._order + _SCALARS[itype])
            if offs + n * dtype.itemsize > len(self._buf):
                raise ValueError(f"array of {n} items at offset {offs} runs past the end of the file")
            return np.frombuffer(self._buf, dtype, n, offs).tolist(), offs + n * dtype.itemsize
        items = []
        for _ in range(n):  # arrays of arrays: rare and small, the general path is fine
            item, offs = self._value(itype, offs)
            items.append(item)
        return items, offs

    def _strings(self, n: int, offs: int) -> tuple[list[str], int]:
        # the hot loop of a vocabulary load (408k strings for Llama 3): a memoryview slice per string, no numpy
        # object, keeps it ~1 us a string
        buf, out, size = self._buf, [], len(self._buf)
        length = struct.Struct(self._order + "Q").unpack_from
        for _ in range(n):
            (k,) = length(buf, offs)
            offs += 8
            out.append(str(buf[offs:offs + k], "utf-8", "surrogateescape"))
            offs += k
        if offs > size:
            raise ValueError(f"string array of {n} items runs past the end of the file")
        return out, offs
