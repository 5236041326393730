"""A content-addressed scratch store for file bodies taken out of source layers.

New layers are written in sorted path order, while their files arrive in the order the
source layers hold them (and across several layers). File bodies are therefore parked
here, named by their sha256, and read back when the new layer is written. Identical files
are stored once. The sha256 doubles as the content hash that ``--verify`` checks against.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


CHUNK = 1 << 20


class Spool:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / digest.split(":", 1)[1]

    def put(self, src: Readable, size: int) -> str:
        """Copy exactly ``size`` bytes from ``src``; return their sha256 digest."""
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
        return open(self.path(digest), "rb")
