"""Reading layer tar streams into entry records, capturing the file bodies we want.

A layer is read once, front to back, as a stream. Every entry's metadata is recorded
(paths, types, modes, owners, link targets, xattrs): that is the layer's file index, small
next to the layer. Bodies of regular files are copied to the spool only when the caller's
predicate says the path matters, so a 3 GB layer costs memory only for its headers.

Entry names are normalised (``./`` and leading ``/`` dropped) and names with ``..``
components are refused: such an entry would write outside the root filesystem.
"""

from __future__ import annotations

import math
import os
import re
import tarfile
from collections.abc import Callable
from typing import Any

from ociassemble.errors import UnsafeTarEntry
from ociassemble.layers.spool import Spool
from ociassemble.oci.changeset import BLOCK, CHAR, DIR, FIFO, FILE, HARDLINK, SYMLINK, Entry, normalise
from ociassemble.oci.digest import Readable
from ociassemble.text import printable

_KINDS = {
    tarfile.REGTYPE: FILE, tarfile.AREGTYPE: FILE, tarfile.CONTTYPE: FILE, tarfile.GNUTYPE_SPARSE: FILE,
    tarfile.DIRTYPE: DIR, tarfile.SYMTYPE: SYMLINK, tarfile.LNKTYPE: HARDLINK,
    tarfile.CHRTYPE: CHAR, tarfile.BLKTYPE: BLOCK, tarfile.FIFOTYPE: FIFO,
}
# PAX records that describe the entry itself and are rewritten from the fields on output;
# everything else (xattrs above all) is carried over verbatim.
_PAX_DERIVED = {"path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime", "atime",
                "ctime", "hdrcharset", "comment"}



def _entry_from(info: tarfile.TarInfo, layer: str) -> Entry:
    kind = _KINDS.get(info.type)
    path = normalise(info.name, f"{layer} entry")
    if kind is None:
        raise UnsafeTarEntry(
            f"{layer} has entry {info.name!r} of unsupported tar type {info.type!r}; the layer "
            "cannot be represented in an image"
        )
    if "\0" in info.name or "\0" in info.linkname:
        raise UnsafeTarEntry(f"{layer} has entry {info.name!r} whose name or link target holds a NUL byte; the layer "
                             "is hostile or corrupt")
    if not math.isfinite(info.mtime):
        raise UnsafeTarEntry(f"{layer} entry {info.name!r} has modification time {info.mtime!r}, which is not a time; "
                             "the layer is corrupt")
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


# Limits on what one entry's headers may claim: a layer is untrusted input, and a 1 KB
# gzip blob can inflate to gigabytes of headers.
MAX_METADATA = 1 << 20  # one pax header or GNU long name (Go's archive/tar, docker's reader, stops there too)
MAX_ENTRY_METADATA = 16 << 20  # all header bytes of one entry: its extension headers and sparse maps
MAX_EXTENSIONS = 64  # pax and GNU long name/link headers in front of one entry (tarfile recurses on each)
MAX_SPARSE_RUNS = 1 << 18  # data runs in one sparse file's map
# bytes of holes in one sparse file: Docker never writes sparse entries, GNU tar's --sparse
# does; holes are expanded into the new layers (runtimes built on Go's archive/tar refuse
# type S), so their size is what a layer could cost to write
_HOLES = os.environ.get("OCIASSEMBLE_MAX_SPARSE_HOLES", "")
MAX_SPARSE_HOLES = int(_HOLES) if _HOLES.isdigit() else 8 << 30
MAX_GLOBAL_RECORDS = 64  # global pax records: tarfile applies them to every later entry
# entries of one layer: every header stays in memory (~2 KB each with the merged tree and the
# new layers' records, measured at 100,000 files), so a layer of tens of millions of empty
# files would exhaust the machine; 5,000,000 is far beyond any real image layer
_LIMIT = os.environ.get("OCIASSEMBLE_MAX_ENTRIES", "")
MAX_ENTRIES = int(_LIMIT) if _LIMIT.isdigit() and int(_LIMIT) > 0 else 5_000_000
_EXTENSION_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                    tarfile.SOLARIS_XHDTYPE)
_PAX_LENGTH = re.compile(rb"([0-9]{1,20}) ")


def _too_many_runs() -> UnsafeTarEntry:
    return UnsafeTarEntry(f"a sparse file's map has more than {MAX_SPARSE_RUNS} data runs; the layer is hostile "
                          "or corrupt")


class _TarInfo(tarfile.TarInfo):
    """``tarfile``'s header parsing, with what a hostile layer needs on top.

    The pax record parser is the one CPython 3.11.10 and 3.12.6 ship (CVE-2024-6232):
    older ones, such as 3.11.7, match records with backtracking regexes, and a megabyte of
    digits in a pax header takes hours. Chains of extension headers (which ``tarfile``
    follows by recursion) and sparse maps are capped; an old GNU sparse header whose
    extension block is cut off is a corrupt header, not an IndexError.
    """

    def _proc_member(self, archive):  # type: ignore[no-untyped-def]
        if self.type in _EXTENSION_TYPES:
            archive.extensions += 1
            if archive.extensions > MAX_EXTENSIONS:
                raise UnsafeTarEntry(f"{archive.layer} has more than {MAX_EXTENSIONS} extension headers in front of "
                                     "one entry; the layer is hostile or corrupt")
        return super()._proc_member(archive)

    def _proc_sparse(self, archive):  # type: ignore[no-untyped-def]
        structs, isextended, origsize = self._sparse_structs
        del self._sparse_structs
        while isextended:  # as tarfile does, with the block's length checked and the runs counted
            buf = archive.fileobj.read(tarfile.BLOCKSIZE)
            if len(buf) != tarfile.BLOCKSIZE:
                raise tarfile.TruncatedHeaderError("the layer ends inside a GNU sparse header")
            pos = 0
            for _ in range(21):
                try:
                    offset = tarfile.nti(buf[pos : pos + 12])
                    numbytes = tarfile.nti(buf[pos + 12 : pos + 24])
                except ValueError:
                    break
                if offset and numbytes:
                    structs.append((offset, numbytes))
                pos += 24
            if len(structs) > MAX_SPARSE_RUNS:
                raise _too_many_runs()
            isextended = bool(buf[504])
        self.sparse = structs
        self.offset_data = archive.fileobj.tell()
        archive.offset = self.offset_data + self._block(self.size)
        self.size = origsize
        return self

    def _proc_pax(self, archive):  # type: ignore[no-untyped-def]
        buf = archive.fileobj.read(self._block(self.size))
        pax_headers = archive.pax_headers if self.type == tarfile.XGLTYPE else archive.pax_headers.copy()
        # records are "%d %s=%s\n" % (length, keyword, value), length counting the whole record
        pos = 0
        encoding = None
        raw_headers = []
        while len(buf) > pos and buf[pos] != 0x00:
            match = _PAX_LENGTH.match(buf, pos)
            if not match:
                raise tarfile.InvalidHeaderError("invalid pax record")
            length = int(match.group(1))
            if length < 5 or pos + length > len(buf):  # the shortest record is "5 x=\n"
                raise tarfile.InvalidHeaderError("invalid pax record length")
            end = match.start(1) + length - 1  # the record's newline
            keyword, equals, value = buf[match.end(1) + 1 : end].partition(b"=")
            if not keyword or equals != b"=" or buf[end] != 0x0A:
                raise tarfile.InvalidHeaderError("invalid pax record")
            raw_headers.append((keyword, value))
            if keyword == b"hdrcharset" and encoding is None:  # only the first one counts
                encoding = archive.encoding if value == b"BINARY" else "utf-8"
            pos += length
        encoding = encoding or "utf-8"
        for keyword, value in raw_headers:
            try:
                key = keyword.decode("utf-8")
            except UnicodeDecodeError:
                raise tarfile.InvalidHeaderError("a pax record's keyword is not UTF-8") from None
            if key in tarfile.PAX_NAME_FIELDS:
                pax_headers[key] = self._decode_pax_field(value, encoding, archive.encoding, archive.errors)
            else:
                pax_headers[key] = self._decode_pax_field(value, "utf-8", "utf-8", archive.errors)
        if self.type == tarfile.XGLTYPE and len(pax_headers) > MAX_GLOBAL_RECORDS:
            # each later entry carries them all: a 1 MB header of short records over a
            # few thousand entries would take gigabytes and minutes (git archive writes one)
            raise UnsafeTarEntry(f"{archive.layer} has global pax headers with more than {MAX_GLOBAL_RECORDS} "
                                 "records; the layer is hostile or corrupt")

        try:
            next = self.fromtarfile(archive)
        except tarfile.HeaderError as e:
            raise tarfile.SubsequentHeaderError(str(e)) from None

        if "GNU.sparse.map" in pax_headers:  # GNU sparse format 0.1
            self._proc_gnusparse_01(next, pax_headers)
        elif "GNU.sparse.size" in pax_headers:  # 0.0
            self._sparse_00(next, raw_headers)
        elif pax_headers.get("GNU.sparse.major") == "1" and pax_headers.get("GNU.sparse.minor") == "0":
            self._proc_gnusparse_10(next, pax_headers, archive)

        if self.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            next._apply_pax_info(pax_headers, archive.encoding, archive.errors)
            next.offset = self.offset
            if "size" in pax_headers:  # the next header starts after the size the record gives
                offset = next.offset_data
                if next.isreg() or next.type not in tarfile.SUPPORTED_TYPES:
                    offset += next._block(next.size)
                archive.offset = offset
        return next

    @staticmethod
    def _sparse_00(next: tarfile.TarInfo, raw_headers: list[tuple[bytes, bytes]]) -> None:
        offsets, numbytes = [], []
        for keyword, value in raw_headers:
            if keyword in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
                if len(offsets) + len(numbytes) >= 2 * MAX_SPARSE_RUNS:
                    raise _too_many_runs()
                (offsets if keyword == b"GNU.sparse.offset" else numbytes).append(int(value))
        next.sparse = list(zip(offsets, numbytes, strict=False))

    def _proc_gnusparse_01(self, next, pax_headers):  # type: ignore[no-untyped-def]
        if pax_headers["GNU.sparse.map"].count(",") >= 2 * MAX_SPARSE_RUNS:
            raise _too_many_runs()
        super()._proc_gnusparse_01(next, pax_headers)

    def _proc_gnusparse_10(self, next, pax_headers, archive):  # type: ignore[no-untyped-def]
        # the map is decimal lines at the start of the data: a count, then offset and size pairs
        buf = archive.fileobj.read(tarfile.BLOCKSIZE)
        count, sep, buf = buf.partition(b"\n")
        runs = int(count) if sep else -1
        if runs < 0:
            raise tarfile.InvalidHeaderError("invalid GNU sparse map")
        if runs > MAX_SPARSE_RUNS:
            raise _too_many_runs()
        numbers = []
        while len(numbers) < 2 * runs:
            if b"\n" not in buf:
                buf += archive.fileobj.read(tarfile.BLOCKSIZE)
            number, sep, buf = buf.partition(b"\n")
            if not sep:
                raise tarfile.InvalidHeaderError("invalid GNU sparse map")
            numbers.append(int(number))
        next.offset_data = archive.fileobj.tell()
        next.sparse = list(zip(numbers[::2], numbers[1::2], strict=True))


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

    def __init__(self, src: Readable, layer: str = "layer"):
        self._src = src
        self._piece = memoryview(b"")
        self._pos = 0
        self._offset = 0  # stream offset of self._piece[0]
        self.pax_headers: dict[str, str] = {}  # global pax records (tarfile's name)
        self.offset = 0  # where tarfile says the next header starts
        self.fileobj = self
        self.layer = layer
        self.metadata = 0  # header bytes read for the current entry (scan_layer resets these two)
        self.extensions = 0  # extension headers read for the current entry

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
            raise UnsafeTarEntry(f"{self.layer}: a tar header claims {n} bytes of metadata; the layer is hostile "
                                 "or corrupt")
        self.metadata += n
        if self.metadata > MAX_ENTRY_METADATA:
            raise UnsafeTarEntry(f"{self.layer}: one entry's tar headers take more than {MAX_ENTRY_METADATA >> 20} "
                                 "MiB; the layer is hostile or corrupt")
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
        if info.size - self.stored > MAX_SPARSE_HOLES:
            # a few stored bytes may claim a file of any size: its holes would be written out
            # (or compressed) as zeros, so a tiny layer could fill the disk or run for hours
            raise UnsafeTarEntry(
                f"{layer} entry {printable(info.name)} is a sparse file of {info.size:,} bytes with only "
                f"{self.stored:,} stored; more than {MAX_SPARSE_HOLES:,} bytes of holes are refused "
                "(OCIASSEMBLE_MAX_SPARSE_HOLES raises the limit)"
            )

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
    offsets: list[int] | None = None,
) -> list[Entry]:
    """Read a decompressed layer tar; return its entries, with wanted bodies spooled.

    ``observe`` (see :mod:`ociassemble.layers.speculate`) may return a watcher for an entry: it
    sees the body's bytes on their way to the spool, and ``done`` when the entry ends.
    ``offsets`` collects, for each entry returned, where its data starts in the stream."""
    entries: list[Entry] = []
    blocks = _Blocks(stream, layer)
    last_pax: dict[str, str] = {}  # entries with the same records share one dict (global headers give many)
    while True:
        at = blocks.tell()
        blocks.metadata = blocks.extensions = 0
        try:
            info = _TarInfo.fromtarfile(blocks)  # type: ignore[arg-type]
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
        if entry.pax == last_pax:
            entry.pax = last_pax
        else:
            last_pax = entry.pax
        wanted = bool(entry.path) and want(entry.path)
        watch = observe(entry) if observe is not None and wanted else None
        data_at = blocks.tell()
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
        if offsets is not None:
            offsets.append(data_at)
        if on_entry:
            on_entry(entry)
    return entries
