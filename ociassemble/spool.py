"""A content-addressed scratch store for file bodies taken out of source layers.

New layers are written in sorted path order, while their files arrive in the order the
source layers hold them (and across several layers). File bodies are therefore parked
here, named by their sha256, and read back when the new layer is written. Identical files
are stored once. The sha256 doubles as the content hash that ``--verify`` checks against.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Protocol


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


CHUNK = 1 << 20


SMALL = 64 << 10  # bodies up to this size are kept in memory...
MEMORY_CAP = 64 << 20  # ...until they add up to this: a file per small body costs ~0.2 ms


class Spool:
    def __init__(self, root: Path, memory_cap: int = MEMORY_CAP):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._small: dict[str, bytes] = {}
        self._small_bytes = 0
        self._cap = memory_cap
        self._lock = threading.Lock()

    def path(self, digest: str) -> Path:
        return self.root / digest.split(":", 1)[1]

    def put(self, src: Readable, size: int) -> str:
        """Copy exactly ``size`` bytes from ``src``; return their sha256 digest."""
        if size <= SMALL:
            with self._lock:
                room = self._small_bytes + size <= self._cap
                if room:
                    self._small_bytes += size  # reserved now, so concurrent puts stay under the cap
            if room:
                data = src.read(size) if size else b""
                while len(data) < size:
                    more = src.read(size - len(data))
                    if not more:
                        with self._lock:
                            self._small_bytes -= size
                        raise OSError("source ended before the file's recorded size")
                    data += more
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                with self._lock:
                    if digest in self._small:
                        self._small_bytes -= size
                    else:
                        self._small[digest] = data
                return digest
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                left = size
                while left:
                    data = src.read(min(CHUNK, left))
                    if not data:
                        raise OSError("source ended before the file's recorded size")
                    h.update(data)
                    out.write(data)
                    left -= len(data)
            digest = "sha256:" + h.hexdigest()
            final = self.path(digest)
            if final.exists():
                os.unlink(tmp)
            else:
                os.replace(tmp, final)
            return digest
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def open(self, digest: str) -> BinaryIO:
        small = self._small.get(digest)
        if small is not None:
            return io.BytesIO(small)
        return open(self.path(digest), "rb")
