"""Writing new layers: deterministic tar, compressed, hashed twice on the way out.

The same entries always give the same bytes: entries in a fixed order, PAX headers only
where a value needs them, no atime/ctime, fixed compression parameters. Both digests are
computed while streaming: the uncompressed one is the layer's diff_id (config), the
compressed one names the blob (manifest).

A gzip layer is a list of segments rather than one file: runs of tar headers and small
bodies, compressed here as gzip members into one small file, alternate with the bodies the
spool already holds as gzip members, which are spliced in unchanged. Readers see one
multi-member gzip stream (as gzip(1), Go's compress/gzip and every runtime read it); the
big bodies are neither compressed nor written a second time. The diff_id is taken over
from the hash made while the source streamed (:mod:`ociassemble.layers.speculate`) for as many
leading entries as match it exactly; only the members after those are inflated again.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from isal import igzip, isal_zlib

from ociassemble.layers.compression import GZIP_LEVEL, READ_CHUNK, CompressingWriter, CompressionSpec, ReadAhead
from ociassemble.layers.spec import LayerSpec
from ociassemble.layers.spool import Spool, tar_padding
from ociassemble.oci.changeset import BLOCK, CHAR, DIR, FIFO, FILE, HARDLINK, OPAQUE, SYMLINK, WHITEOUT, Entry, sort_key
from ociassemble.oci.digest import HashingWriter
from ociassemble.transport.segments import Segment, SegmentReader


class Recorded(Protocol):
    """What the writer needs of a recording made while the source streamed (see
    :mod:`ociassemble.layers.speculate`): how far it matches, and the hash state to go on from."""

    def match(self, headers: list[bytes], bodies: list[str | None]) -> int: ...

    def floor(self, k: int) -> int: ...

    def state(self, k: int) -> tuple[int, Any]: ...


def header_id(header: bytes) -> bytes:
    """A header as recordings keep it: 16 bytes instead of 512-1536 (a selected tree of
    50,000 files would otherwise hold 25-75 MB of headers twice)."""
    return hashlib.blake2b(header, digest_size=16).digest()

_TYPES = {FILE: tarfile.REGTYPE, DIR: tarfile.DIRTYPE, SYMLINK: tarfile.SYMTYPE, HARDLINK: tarfile.LNKTYPE,
          CHAR: tarfile.CHRTYPE, BLOCK: tarfile.BLKTYPE, FIFO: tarfile.FIFOTYPE}


@dataclass
class OutEntry:
    """One entry of a new layer. ``entry.content`` names the body in the spool for files."""

    entry: Entry
    whiteout: bool = False
    key: tuple[object, ...] | None = None  # the entry's place in the layer (materialise sets it)
    origin: Entry | None = None  # the source layer's entry this one copies (None: the layer writes it itself)

    @property
    def path(self) -> str:
        return self.entry.path


@dataclass
class WrittenLayer:
    segments: list[Segment]  # the blob's bytes, in order
    digest: str
    size: int
    diff_id: str
    entries: int
    content_bytes: int
    records: list[tuple[object, ...]] = field(default_factory=list)  # entry_record of each entry, for --verify
    speculated: int = 0  # leading uncompressed bytes whose hash was taken over from the source's read

    def open(self) -> SegmentReader:
        return SegmentReader(self.segments)


def entry_record(e: Entry) -> tuple[object, ...]:
    """Everything about an entry that a reader of the layer sees, bodies by their sha256."""
    return (e.path, e.kind, e.mode, e.uid, e.gid, e.uname, e.gname, float(e.mtime), e.size, e.linkname,
            e.devmajor, e.devminor, tuple(sorted(e.pax.items())), e.content if e.size else "")


def whiteout_entry(path: str, mtime: float) -> OutEntry:
    parent, _, name = path.rpartition("/")
    wpath = f"{parent}/{WHITEOUT}{name}" if parent else f"{WHITEOUT}{name}"
    return OutEntry(Entry(wpath, FILE, mode=0o644, mtime=mtime), whiteout=True)


def opaque_entry(path: str, mtime: float) -> OutEntry:
    return OutEntry(Entry(f"{path}/{OPAQUE}" if path else OPAQUE, FILE, mode=0o644, mtime=mtime), whiteout=True)


def _tarinfo(e: Entry) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(e.path + ("/" if e.kind == DIR else ""))
    ti.type = _TYPES[e.kind]
    ti.mode = e.mode & 0o7777
    ti.uid, ti.gid = e.uid, e.gid
    ti.uname, ti.gname = e.uname, e.gname
    ti.mtime = e.mtime
    ti.size = e.size if e.kind == FILE else 0
    ti.linkname = e.linkname
    ti.devmajor, ti.devminor = e.devmajor, e.devminor
    ti.pax_headers = dict(e.pax)
    return ti


def body_id(o: OutEntry) -> str | None:
    """What names an entry's body when comparing layers entry by entry."""
    return o.entry.content if o.entry.kind == FILE and not o.whiteout else None


def synthetic_entries(spec: LayerSpec, mtime: int, clamp: int | None) -> list[OutEntry]:
    """The entries a layer writes itself (owned directories, opaque markers), in the order
    they open the layer: known before any source layer is read."""
    out = [OutEntry(Entry(d.path, DIR, mode=d.mode, uid=d.uid, gid=d.gid, mtime=mtime)) for d in spec.dirs]
    out += [opaque_entry(top, mtime) for top in spec.opaque]
    out.sort(key=lambda o: sort_key(o.path))
    for n, o in enumerate(out):
        o.key = (0, n)
        clamp_mtime(o, clamp)
    return out


def clamp_mtime(o: OutEntry, clamp: int | None) -> None:
    if clamp is not None and o.entry.mtime > clamp:
        o.entry.mtime = clamp


def tar_header(e: Entry) -> bytes:
    """The header block(s) this module writes for ``e``."""
    return _tarinfo(e).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def write_layer(items: list[OutEntry], dest: Path, spool: Spool, spec: CompressionSpec,
                recordings: Sequence[Recorded] = ()) -> WrittenLayer:
    """Write ``items`` as a compressed tar blob based at ``dest``, in the order of their
    keys (in path order when they have none)."""
    if all(o.key is not None for o in items):
        items = sorted(items, key=lambda o: o.key)  # type: ignore[arg-type,return-value]
    else:
        items = sorted(items, key=lambda o: sort_key(o.path))
    seen: set[str] = set()
    for item in items:
        if item.path in seen:
            raise AssertionError(f"duplicate path in new layer: {item.path!r}")
        seen.add(item.path)
    if spec.kind == "gzip":
        return _write_gzip(items, dest, spool, recordings)
    return _write_single(items, dest, spool, spec)


def _write_single(items: list[OutEntry], dest: Path, spool: Spool, spec: CompressionSpec) -> WrittenLayer:
    records: list[tuple[object, ...]] = []
    content = 0
    tmp = dest.with_name(dest.name + ".part")
    with open(tmp, "wb") as raw:
        compressed = HashingWriter(raw)
        cw = CompressingWriter(compressed, spec)  # type: ignore[arg-type]
        plain = HashingWriter(cw)  # type: ignore[arg-type]
        with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                          errors="surrogateescape") as tf:  # type: ignore[call-overload]
            for item in items:
                e = item.entry
                ti = _tarinfo(e)
                records.append(entry_record(e))
                if e.kind == FILE and not item.whiteout:
                    assert e.content is not None, f"no body captured for {e.path!r}"
                    content += e.size
                    with spool.open(e.content) as body:
                        tf.addfile(ti, body)
                else:
                    tf.addfile(ti)
        cw.close()
    os.replace(tmp, dest)
    return WrittenLayer([Segment(dest, 0, compressed.size)], compressed.digest, compressed.size, plain.digest,
                        len(items), content, records)


class _Runs:
    """The layer's own bytes, compressed as gzip members into one file, one member per run
    between two spliced bodies. Input is cut into fixed pieces before compressing, so the
    same entries give the same members on every run."""

    def __init__(self, path: Path, blob_hash: HashingWriter):
        self.path = path
        self._f = open(path, "wb")
        self._hash = blob_hash  # the blob's digest sees every byte in blob order
        self._c: Any = None
        self._pending: list[bytes] = []
        self._n = 0
        self._start = 0
        self._pos = 0

    def write(self, data: bytes) -> None:
        if self._c is None:
            self._c = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)
        self._pending.append(data)
        self._n += len(data)
        while self._n >= READ_CHUNK:
            joined = b"".join(self._pending)
            self._emit(self._c.compress(joined[:READ_CHUNK]))
            rest = joined[READ_CHUNK:]
            self._pending, self._n = ([rest] if rest else []), len(rest)

    def _emit(self, out: bytes) -> None:
        if out:
            self._f.write(out)
            self._hash.write(out)
            self._pos += len(out)

    def end_member(self, segments: list[Segment]) -> None:
        """Close the current run, adding the segment it fills (if it holds anything)."""
        if self._c is None:
            return
        if self._pending:
            self._emit(self._c.compress(b"".join(self._pending)))
        self._emit(self._c.flush())
        self._c, self._pending, self._n = None, [], 0
        segments.append(Segment(self.path, self._start, self._pos - self._start))
        self._start = self._pos

    def close(self) -> None:
        self._f.close()


def _write_gzip(items: list[OutEntry], dest: Path, spool: Spool, recordings: Sequence[Recorded]) -> WrittenLayer:
    records: list[tuple[object, ...]] = []
    segments: list[Segment] = []
    content = 0
    blob = HashingWriter(None)
    # the diff_id goes on from the longest run of leading entries hashed while the source
    # streamed (ociassemble.layers.speculate); only what follows is hashed (and inflated) here.
    # Headers are made twice rather than held: a layer of 200,000 files would hold ~100 MB
    # of them, where their 16-byte ids and the second tobuf cost ~5 us a file
    taken, found = 0, None
    if recordings:
        ids = [header_id(tar_header(o.entry)) for o in items]
        bodies = [body_id(o) for o in items]
        for rec in recordings:
            k = rec.match(ids, bodies)
            if k > taken:
                taken, found = k, rec
        if found is not None:
            taken = found.floor(taken)
    plain: Any = hashlib.sha256()
    plain_size = 0
    speculated = 0
    live = found is None
    runs = _Runs(dest.with_name(dest.name + ".runs"), blob)

    def run_bytes(data: bytes) -> None:
        nonlocal plain_size
        if live:
            plain.update(data)
            plain_size += len(data)
        runs.write(data)

    def take_over() -> None:
        """From here on hash live, going on from the recording's state."""
        nonlocal plain_size, plain, speculated, live
        assert found is not None
        plain_size, plain = found.state(taken)
        speculated, live = plain_size, True

    try:
        for i, item in enumerate(items):
            if not live and i == taken:
                take_over()
            e = item.entry
            records.append(entry_record(e))
            run_bytes(tar_header(e))
            if e.kind != FILE or item.whiteout or not e.size:
                continue
            assert e.content is not None, f"no body captured for {e.path!r}"
            content += e.size
            member = spool.member(e.content)
            if member is None:
                with spool.open(e.content) as body:
                    left = e.size
                    while left:
                        data = body.read(min(READ_CHUNK, left))
                        if not data:
                            raise OSError(f"the spooled body of {e.path!r} is shorter than {e.size} bytes")
                        run_bytes(data)
                        left -= len(data)
                run_bytes(b"\0" * tar_padding(e.size))
                continue
            runs.end_member(segments)
            path, size = member
            if live:
                plain_size += _splice(path, size, blob, plain, e.path)
            else:
                _copy_member(path, blob)
            segments.append(Segment(path, 0, path.stat().st_size))
        if not live:
            take_over()
        # the end of the archive: two zero blocks, then zeros up to tarfile's record size
        end = 2 * tarfile.BLOCKSIZE
        end += -(plain_size + end) % tarfile.RECORDSIZE
        run_bytes(b"\0" * end)
        runs.end_member(segments)
    finally:
        runs.close()
    return WrittenLayer(segments, blob.digest, blob.size, "sha256:" + plain.hexdigest(),
                        len(items), content, records, speculated)


def _copy_member(path: Path, blob: HashingWriter) -> None:
    """A parked member whose plain bytes were hashed as the source streamed: only its
    compressed bytes go into the blob digest."""
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            blob.write(chunk)


def _splice(path: Path, size: int, blob: HashingWriter, plain: Any, name: str) -> int:
    """Hash a parked member into the blob digest, and its inflated bytes into the diff_id.

    Inflating runs a chunk ahead in its own thread, so a big layer's inflate and hash
    share both cores."""
    n = 0
    with open(path, "rb") as f:
        member = ReadAhead(igzip.IGzipFile(fileobj=_Teed(f, blob), mode="rb"), chunk=READ_CHUNK, depth=4)
        try:
            while out := member.read(READ_CHUNK):
                plain.update(out)
                n += len(out)
        except (EOFError, igzip.BadGzipFile, isal_zlib.error):
            n = -1
        finally:
            member.close()
    if n != size + tar_padding(size):
        raise OSError(f"the spooled body of {name!r} is damaged (scratch space corrupted?)")
    return n


class _Teed:
    """A file whose bytes also go to a hash as they are read."""

    def __init__(self, f: Any, sink: HashingWriter):
        self._f = f
        self._sink = sink

    def readinto(self, buf: Any) -> int:
        k: int = self._f.readinto(buf)
        if k:
            self._sink.write(memoryview(buf)[:k])
        return k

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._f.read(n)
        self._sink.write(data)
        return data
