"""A blob made of pieces of files, read as one seekable file.

New gzip layers are not written out whole (see :mod:`ociassemble.layers.write`): their bytes
stay where they were produced. Uploads need a body they can seek in (chunked uploads resume
from the registry's offset) and replay (a retried PUT), which this gives without a copy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, NamedTuple


class Segment(NamedTuple):
    path: Path
    offset: int
    length: int


class SegmentReader:
    def __init__(self, segments: list[Segment]):
        self._segs = [s for s in segments if s.length]
        self._starts: list[int] = []
        total = 0
        for s in self._segs:
            self._starts.append(total)
            total += s.length
        self.len = total
        self._pos = 0
        self._files: dict[Path, BinaryIO] = {}

    @property
    def single_file(self) -> Path | None:
        """The file, when the blob is exactly one whole file (then it can be hardlinked)."""
        if len(self._segs) == 1:
            s = self._segs[0]
            if s.offset == 0 and os.path.getsize(s.path) == s.length:
                return s.path
        return None

    def __len__(self) -> int:
        return self.len

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.len}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.len - self._pos
        parts: list[bytes] = []
        while n > 0 and self._pos < self.len:
            i = self._find(self._pos)
            seg, start = self._segs[i], self._starts[i]
            within = self._pos - start
            take = min(n, seg.length - within)
            f = self._files.get(seg.path)
            if f is None:
                f = self._files[seg.path] = open(seg.path, "rb")
            f.seek(seg.offset + within)
            data = f.read(take)
            if len(data) != take:
                raise OSError(f"{seg.path} is shorter than the layer it holds part of")
            parts.append(data)
            self._pos += take
            n -= take
        return b"".join(parts)

    def _find(self, pos: int) -> int:
        import bisect

        return bisect.bisect_right(self._starts, pos) - 1

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> SegmentReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
