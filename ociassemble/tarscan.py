"""Reading layer tar streams into entry records, capturing the file bodies we want.

A layer is read once, front to back, as a stream. Every entry's metadata is recorded
(paths, types, modes, owners, link targets, xattrs): that is the layer's file index, small
next to the layer. Bodies of regular files are copied to the spool only when the caller's
predicate says the path matters, so a 3 GB layer costs memory only for its headers.

Entry names are normalised (``./`` and leading ``/`` dropped) and names with ``..``
components are refused: such an entry would write outside the root filesystem.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ociassemble.errors import UnsafeTarEntry
from ociassemble.spool import Spool

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

FILE, DIR, SYMLINK, HARDLINK, CHAR, BLOCK, FIFO = "file", "dir", "symlink", "hardlink", "char", "block", "fifo"
_KINDS = {
    tarfile.REGTYPE: FILE, tarfile.AREGTYPE: FILE, tarfile.CONTTYPE: FILE, tarfile.GNUTYPE_SPARSE: FILE,
    tarfile.DIRTYPE: DIR, tarfile.SYMTYPE: SYMLINK, tarfile.LNKTYPE: HARDLINK,
    tarfile.CHRTYPE: CHAR, tarfile.BLKTYPE: BLOCK, tarfile.FIFOTYPE: FIFO,
}
# PAX records that describe the entry itself and are rewritten from the fields on output;
# everything else (xattrs above all) is carried over verbatim.
_PAX_DERIVED = {"path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime", "atime",
                "ctime", "hdrcharset", "comment"}


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(slots=True)
class Entry:
    path: str
    kind: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: float = 0
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = field(default_factory=dict)
    content: str | None = None  # spool digest of the body, when captured

    @property
    def is_whiteout(self) -> bool:
        return self.path.rsplit("/", 1)[-1].startswith(WHITEOUT)


def normalise(name: str, what: str = "entry") -> str:
    """Relative, slash-separated, without ``.`` parts or trailing slash; ``..`` is refused."""
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise UnsafeTarEntry(
                f"layer {what} {name!r} climbs out of the root with '..'; the layer is hostile or "
                "corrupt and will not be used"
            )
        parts.append(part)
    return "/".join(parts)


def sort_key(path: str) -> tuple[bytes, ...]:
    """Tree order: a directory's children directly follow it, components compared as bytes."""
    return tuple(path.encode("utf-8", "surrogateescape").split(b"/")) if path else ()


class _RawIO(io.RawIOBase):
    def __init__(self, src: Readable):
        self._src = src
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        if not self._pending:
            self._pending = self._src.read(1 << 20)
            if not self._pending:
                return 0
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _entry_from(info: tarfile.TarInfo, layer: str) -> Entry:
    kind = _KINDS.get(info.type)
    path = normalise(info.name, f"{layer} entry")
    if kind is None:
        raise UnsafeTarEntry(
            f"{layer} has entry {info.name!r} of unsupported tar type {info.type!r}; the layer "
            "cannot be represented in an image"
        )
    linkname = ""
    if kind == HARDLINK:
        linkname = normalise(info.linkname, f"{layer} hardlink target")
    elif kind == SYMLINK:
        linkname = info.linkname  # data, not a path we follow: kept verbatim
    pax = {k: v for k, v in info.pax_headers.items() if k not in _PAX_DERIVED and not k.startswith("GNU.sparse")}
    return Entry(
        path=path, kind=kind, mode=info.mode & 0o7777, uid=info.uid, gid=info.gid,
        uname=info.uname or "", gname=info.gname or "", mtime=info.mtime,
        size=info.size if kind == FILE else 0, linkname=linkname,
        devmajor=info.devmajor, devminor=info.devminor, pax=pax,
    )


def scan_layer(
    stream: Readable,
    want: Callable[[str], bool],
    spool: Spool,
    layer: str = "layer",
    on_entry: Callable[[Entry], None] | None = None,
) -> list[Entry]:
    """Read a decompressed layer tar; return its entries, with wanted bodies spooled."""
    entries: list[Entry] = []
    buffered = io.BufferedReader(_RawIO(stream), buffer_size=1 << 20)
    try:
        # a big bufsize: tarfile's stream mode otherwise reads in 10 KiB records
        tf = tarfile.open(fileobj=buffered, mode="r|", encoding="utf-8", errors="surrogateescape",
                          bufsize=1 << 20)
    except tarfile.ReadError as e:
        if str(e) == "empty file":
            return entries
        raise UnsafeTarEntry(f"{layer} is not a readable tar stream ({e})") from None
    with tf:
        while True:
            try:
                info = tf.next()
            except tarfile.TarError as e:
                raise UnsafeTarEntry(f"{layer} has a corrupt tar header ({e})") from None
            if info is None:
                break
            tf.members.clear()  # stream mode would otherwise keep every header in memory
            entry = _entry_from(info, layer)
            if not entry.path:
                continue  # the root directory itself: runtimes ignore it
            if entry.kind == FILE and entry.size and want(entry.path):
                f = tf.extractfile(info)
                assert f is not None
                entry.content = spool.put(f, entry.size)
            elif entry.kind == FILE and want(entry.path):
                entry.content = spool.put(io.BytesIO(b""), 0)
            entries.append(entry)
            if on_entry:
                on_entry(entry)
    return entries
