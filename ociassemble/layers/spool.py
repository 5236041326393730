"""A content-addressed scratch store for file bodies taken out of source layers.

New layers are written in sorted path order, while their files arrive in the order the
source layers hold them (and across several layers). File bodies are therefore parked
here, named by their sha256, and read back when the new layer is written. Identical files
are stored once. The sha256 doubles as the content hash that ``--verify`` checks against.

With ``deflate_level`` set (gzip output), a body parked on disk is kept as one gzip member
of the body and its tar padding, compressed at the output's level while the source layer
streams. The new layer's blob then splices that member in verbatim (a gzip file may hold
several members), so the bytes are compressed once, on the core the source's inflating
leaves free, and the spool writes about a third of what plain bodies would: on a disk that
flushes at a few hundred MB/s, those writes were the largest cost of a cold compose.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

from isal import igzip, isal_zlib

from ociassemble.layers.compression import read_exact
from ociassemble.oci.digest import ViewReadable

CHUNK = 1 << 20
TAR_BLOCK = 512



SMALL = 64 << 10  # bodies up to this size are kept in memory...
MEMORY_CAP = 64 << 20  # ...until they add up to this: a file per small body costs ~0.2 ms


def tar_padding(size: int) -> int:
    return -size % TAR_BLOCK


class Spool:
    def __init__(self, root: Path, memory_cap: int = MEMORY_CAP, deflate_level: int | None = None,
                 hash_bodies: bool = True):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.deflate_level = deflate_level
        # without --verify nothing reads a big body's sha256: it is then named by a number,
        # which saves hashing every selected byte once more (and gives up deduplication)
        self.hash_bodies = hash_bodies
        self._count = 0
        self._small: dict[str, bytes] = {}
        self._names: dict[str, str] = {}  # each small body's digest string, shared by its files
        self._small_bytes = 0
        self._cap = memory_cap
        self._sizes: dict[str, int] = {}  # bodies parked as gzip members: digest -> body size
        self._lock = threading.Lock()

    def path(self, digest: str) -> Path:
        return self.root / digest.split(":", 1)[1]

    def member(self, digest: str) -> tuple[Path, int] | None:
        """The gzip member (body + tar padding) holding this body, and the body's size."""
        size = self._sizes.get(digest)
        return (self.path(digest), size) if size is not None else None

    def put(self, src: ViewReadable, size: int) -> str:
        """Copy exactly ``size`` bytes from ``src``; return their sha256 digest (``spool:N``
        for a body parked on disk when bodies are not hashed). ``src`` may hand out shorter
        pieces than asked for, as memoryviews of its own buffers."""
        if size <= SMALL:
            with self._lock:
                room = self._small_bytes + size <= self._cap
                if room:
                    self._small_bytes += size  # reserved now, so concurrent puts stay under the cap
            if room:
                data = bytes(read_exact(src, size)) if size else b""
                if len(data) < size:
                    with self._lock:
                        self._small_bytes -= size
                    raise OSError("source ended before the file's recorded size")
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                with self._lock:
                    if digest in self._small:
                        self._small_bytes -= size
                        # one string per distinct body, however many files share it (a
                        # layer of 200,000 empty files held 200,000 copies of one digest)
                        digest = self._names[digest]
                    else:
                        self._small[digest] = data
                        self._names[digest] = digest
                return digest
        h = hashlib.sha256() if self.hash_bodies else None
        level = self.deflate_level
        c = isal_zlib.compressobj(level, isal_zlib.DEFLATED, 31) if level is not None else None
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                # the compressor's output depends on how its input is cut: it always gets
                # CHUNK-sized pieces, whatever pieces the source hands out
                chunk = bytearray(CHUNK) if c is not None else None
                fill = 0
                left = size
                while left:
                    piece = src.read(min(CHUNK, left))
                    if not piece:
                        raise OSError("source ended before the file's recorded size")
                    if h is not None:
                        h.update(piece)
                    left -= len(piece)
                    if c is None:
                        out.write(piece)
                        continue
                    assert chunk is not None
                    while piece:
                        k = min(len(piece), CHUNK - fill)
                        chunk[fill : fill + k] = piece[:k]
                        fill += k
                        piece = piece[k:]
                        if fill == CHUNK:
                            out.write(c.compress(chunk))
                            fill = 0
                if c is not None:
                    assert chunk is not None
                    if fill:
                        out.write(c.compress(memoryview(chunk)[:fill]))
                    out.write(c.compress(b"\0" * tar_padding(size)))
                    out.write(c.flush())
            if h is not None:
                digest = "sha256:" + h.hexdigest()
            else:
                with self._lock:
                    self._count += 1
                    digest = f"spool:{self._count}"
            final = self.path(digest)
            if final.exists():
                os.unlink(tmp)
            else:
                os.replace(tmp, final)
            if c is not None:
                with self._lock:
                    self._sizes[digest] = size
            return digest
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def open(self, digest: str) -> BinaryIO | _MemberReader:
        small = self._small.get(digest)
        if small is not None:
            return io.BytesIO(small)
        size = self._sizes.get(digest)
        if size is not None:
            return _MemberReader(self.path(digest), size)
        return open(self.path(digest), "rb")


class _MemberReader:
    """The body inside a parked gzip member, without its tar padding."""

    def __init__(self, path: Path, size: int):
        self._f = igzip.open(path, "rb")
        self._left = size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        try:
            data = read_exact(self._f, n)
        except (EOFError, igzip.BadGzipFile):
            data = b""
        if len(data) < n:
            raise OSError(f"spooled body {self._f.name} is truncated")
        self._left -= n
        return data

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _MemberReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
