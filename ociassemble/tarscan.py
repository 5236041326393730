"""Reading layer tar streams into entry records, capturing the file bodies we want.

A layer is read once, front to back, as a stream. Every entry's metadata is recorded
(paths, types, modes, owners, link targets, xattrs): that is the layer's file index, small
next to the layer. Bodies of regular files are copied to the spool only when the caller's
predicate says the path matters, so a 3 GB layer costs memory only for its headers.

Entry names are normalised (``./`` and leading ``/`` dropped) and names with ``..``
components are refused: such an entry would write outside the root filesystem.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

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

    def whiteout(self) -> tuple[str, str | None]:
        """For a whiteout entry: (its directory, the name it deletes there, or None for an
        opaque marker, which hides everything below the directory)."""
        parent, _, base = self.path.rpartition("/")
        return parent, None if base == OPAQUE else base[len(WHITEOUT):]


def normalise(name: str, what: str = "layer entry") -> str:
    """Relative, slash-separated, without ``.`` parts or trailing slash; ``..`` is refused."""
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise UnsafeTarEntry(
                f"{what} {name!r} climbs out of the root with '..'; the layer is hostile or "
                "corrupt and will not be used"
            )
        parts.append(part)
    return "/".join(parts)


def sort_key(path: str) -> tuple[bytes, ...]:
    """Tree order: a directory's children directly follow it, components compared as bytes."""
    return tuple(path.encode("utf-8", "surrogateescape").split(b"/")) if path else ()


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
        # device numbers mean something only for devices; old writers (suntar) leave them
        # in a regular file's header, and no writer keeps them there
        devmajor=info.devmajor if kind in (CHAR, BLOCK) else 0,
        devminor=info.devminor if kind in (CHAR, BLOCK) else 0, pax=pax,
    )


MAX_METADATA = 16 << 20  # a GNU long name or pax header larger than this is hostile
# entries of one layer: every header stays in memory (~2 KB each with the merged tree and the
# new layers' records, measured at 100,000 files), so a layer of tens of millions of empty
# files would exhaust the machine; 5,000,000 is far beyond any real image layer
_LIMIT = os.environ.get("OCIASSEMBLE_MAX_ENTRIES", "")
MAX_ENTRIES = int(_LIMIT) if _LIMIT.isdigit() and int(_LIMIT) > 0 else 5_000_000


class _Blocks:
    """The decompressed layer as one stream, read without copying file bodies.

    ``tarfile`` parses every header here (ustar, GNU long names, pax records, sparse maps)
    through :meth:`read` and :meth:`tell`; file bodies go past it: :meth:`view` hands out
    pieces of the stream's own buffers, and :meth:`skip` drops the bodies nobody wants.
    Reading the bodies through ``tarfile``'s stream mode copied every byte five or six
    times: ~2.4 s of CPU for a 3 GB layer, as much as inflating it.
    """

    encoding = "utf-8"
    errors = "surrogateescape"

    def __init__(self, src: Readable):
        self._src = src
        self._piece = memoryview(b"")
        self._pos = 0
        self._offset = 0  # stream offset of self._piece[0]
        self.pax_headers: dict[str, str] = {}  # global pax records (tarfile's name)
        self.offset = 0  # where tarfile says the next header starts
        self.fileobj = self

    def _more(self) -> bool:
        self._offset += len(self._piece)
        data = self._src.read(1 << 20)
        self._piece, self._pos = memoryview(data), 0
        return bool(data)

    def tell(self) -> int:
        return self._offset + self._pos

    def view(self, n: int) -> memoryview:
        """Up to ``n`` bytes, as they lie in the current piece; empty at the end."""
        if self._pos == len(self._piece) and not self._more():
            return self._piece[:0]
        out = self._piece[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > MAX_METADATA:
            raise UnsafeTarEntry(f"a tar header claims {n} bytes of metadata; the layer is hostile or corrupt")
        parts = []
        while n:
            piece = self.view(n)
            if not piece:
                break
            parts.append(piece)
            n -= len(piece)
        return b"".join(parts)

    def skip(self, n: int) -> bool:
        """Move ``n`` bytes on; False when the stream ends first."""
        while n:
            piece = self.view(n)
            if not piece:
                return False
            n -= len(piece)
        return True


class _Body:
    """One file's body: its stored bytes, with the holes of a sparse file filled with zeros."""

    _ZEROS = bytes(1 << 20)

    def __init__(self, blocks: _Blocks, info: tarfile.TarInfo, layer: str):
        self._blocks = blocks
        self._truncated = f"{layer} ends in the middle of entry {info.name!r}; the layer is truncated"
        self._at = 0
        self._size = info.size
        # (offset in the file, bytes) of each stored run; a plain file is one run. GNU's map
        # may end with empty (offset, 0) records: they hold no data
        runs = list(info.sparse) if info.sparse is not None else [(0, info.size)]
        self._runs = [(off, n) for off, n in runs if n]
        end = 0
        for off, n in self._runs:
            if off < end or n < 0 or off + n > info.size:
                raise UnsafeTarEntry(f"{layer} entry {info.name!r} has an inconsistent sparse map; the layer is "
                                     "hostile or corrupt")
            end = off + n
        self.stored = sum(n for _, n in self._runs)

    def read(self, n: int = -1) -> memoryview | bytes:
        n = self._size - self._at if n is None or n < 0 else min(n, self._size - self._at)
        if n <= 0:
            return b""
        if self._runs and self._runs[0][0] <= self._at:
            off, left = self._runs[0]
            piece = self._blocks.view(min(n, off + left - self._at))
            if not piece:
                raise UnsafeTarEntry(self._truncated)
            self._at += len(piece)
            if self._at == off + left:
                self._runs.pop(0)
            return piece
        hole = (self._runs[0][0] if self._runs else self._size) - self._at
        k = min(n, hole, len(self._ZEROS))
        self._at += k
        return memoryview(self._ZEROS)[:k]


def scan_layer(
    stream: Readable,
    want: Callable[[str], bool],
    spool: Spool,
    layer: str = "layer",
    on_entry: Callable[[Entry], None] | None = None,
    observe: Callable[[Entry], Any] | None = None,
) -> list[Entry]:
    """Read a decompressed layer tar; return its entries, with wanted bodies spooled.

    ``observe`` (see :mod:`ociassemble.speculate`) may return a watcher for an entry: it
    sees the body's bytes on their way to the spool, and ``done`` when the entry ends."""
    entries: list[Entry] = []
    blocks = _Blocks(stream)
    while True:
        at = blocks.tell()
        try:
            info = tarfile.TarInfo.fromtarfile(blocks)  # type: ignore[arg-type]
        except tarfile.EOFHeaderError:
            break  # the zero block that ends the archive
        except tarfile.EmptyHeaderError:
            break  # the stream ends at a header boundary (an empty layer, or no end blocks)
        except (tarfile.HeaderError, ValueError, UnicodeError) as e:
            raise UnsafeTarEntry(f"{layer} has a corrupt tar header at offset {at} ({e})") from None
        data_end = blocks.offset
        if data_end < blocks.tell() or info.size < 0:
            raise UnsafeTarEntry(f"{layer} has a tar header at offset {at} with a negative size; it is corrupt")
        entry = _entry_from(info, layer)
        wanted = bool(entry.path) and want(entry.path)
        watch = observe(entry) if observe is not None and wanted else None
        if entry.kind == FILE:
            body = _Body(blocks, info, layer)
            if blocks.tell() + body.stored > data_end:
                raise UnsafeTarEntry(f"{layer} entry {info.name!r} claims more data than it holds; it is corrupt")
            if wanted:
                entry.content = spool.put(body if watch is None else watch.tee(body), entry.size)
        if watch is not None:
            watch.done(entry)
        if not blocks.skip(data_end - blocks.tell()):
            raise UnsafeTarEntry(f"{layer} ends in the middle of entry {info.name!r}; the layer is truncated")
        if not entry.path:
            continue  # the root directory itself: runtimes ignore it
        if len(entries) >= MAX_ENTRIES:
            raise UnsafeTarEntry(
                f"{layer} has more than {MAX_ENTRIES:,} entries; ociassemble holds about 2 KB of metadata per "
                "entry in memory, so it refuses layers this large rather than exhaust the machine "
                "(set OCIASSEMBLE_MAX_ENTRIES to raise the limit where memory allows)"
            )
        entries.append(entry)
        if on_entry:
            on_entry(entry)
    return entries
