"""A layer's index: what it holds and where, so that a compose reads only what it needs.

For each entry: its header record, where its data starts in the uncompressed tar stream,
and (for files) its body's sha256. For a gzip layer, access points every few MiB of the
uncompressed stream (compressed offset, bit offset, the 32 KiB window), made and used by
``indexed_gzip`` (zran), so that inflating can start near any entry instead of at the
layer's first byte. A plain tar layer needs none (offsets are file offsets); for a zstd
layer, the starts of its frames serve (frames are independent): a layer of one frame is read
from its start, one written as many frames (zstd:chunked, zstd's seekable format) from the
frame before each entry.

An index is only as good as where it came from: it names the layer digest and diff_id it
describes and is refused for any other layer; every body read through it is checked
against the sha256 it records. See README, "Fetching only what a selection needs".
"""

from __future__ import annotations

import bisect
import functools
import gzip as gzip_module
import hashlib
import io
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from ociassemble.errors import DigestMismatch, ManifestError
from ociassemble.layers.compression import GZIP_MAGIC, CorruptLayer, FrameWalker, is_zstd, open_decompressed
from ociassemble.layers.spool import Spool
from ociassemble.layers.tarscan import scan_layer
from ociassemble.oci.changeset import BLOCK, CHAR, DIR, FIFO, FILE, HARDLINK, SYMLINK, Entry, normalise
from ociassemble.oci.digest import HashingReader
from ociassemble.text import printable

INDEX_VERSION = 1
MEDIA_TYPE = "application/vnd.ociassemble.layer-index.v1+json"
POINTS_MEDIA_TYPE = "application/vnd.ociassemble.gzip-access-points.v1"
ARTIFACT_TYPE = "application/vnd.ociassemble.layer-indexes.v1"
# uncompressed bytes between access points (each keeps a 32 KiB window); the tests set less,
# down to the least this allows (indexed_gzip refuses a spacing of one window or less)
WINDOW = 32 << 10
LEAST_SPACING = 2 * WINDOW
SPACING = max(LEAST_SPACING, int(os.environ.get("OCIASSEMBLE_INDEX_SPACING", 4 << 20)))
READ = 1 << 20
_SHA = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass
class LayerIndex:
    digest: str  # the layer blob it describes
    size: int
    diff_id: str
    entries: list[Entry]  # ``content`` holds each file body's sha256 ("sha256:...")
    offsets: list[int]  # where each entry's data starts in the uncompressed stream
    points: bytes | None  # indexed_gzip's export (gzip layers)
    gzip: bool
    # zstd layers: where frames start, (compressed offset, uncompressed offset), at least the
    # spacing apart; each is a place to start decompressing (frames are independent)
    frames: list[tuple[int, int]] | None = None
    # an eStargz layer's TOC: per entry, the gzip member its body starts in and where in that
    # member's output (``offsets`` are then only an order: a TOC gives no uncompressed offsets)
    members: list[tuple[int, int]] | None = None

    @property
    def codec(self) -> str:
        """What the layer blob is compressed with, as the index saw it (it is used only for a
        layer of that media type)."""
        return "gzip" if self.gzip else "zstd" if self.frames is not None else "none"

    @property
    def seekable(self) -> bool:
        """Can reading start near any entry (not only at the layer's first byte)?"""
        return (self.points is not None or self.members is not None or self.codec == "none"
                or (self.frames is not None and len(self.frames) > 1))

    def frame_before(self, offset: int) -> tuple[int, int]:
        """The last zstd frame starting at or before uncompressed ``offset``: (compressed,
        uncompressed) offsets of its start."""
        assert self.frames is not None
        return self.frames[bisect.bisect_right(self._frame_starts, offset) - 1]

    def start_before(self, offset: int) -> int:
        """Where (uncompressed) the last zstd frame starting at or before ``offset`` starts."""
        return self.frame_before(offset)[1]

    @functools.cached_property
    def _frame_starts(self) -> list[int]:
        return [u for _, u in self.frames or []]

    @property
    def what(self) -> str:
        return "eStargz TOC" if self.members is not None else "layer index"

    def to_json(self) -> bytes:
        doc = {"version": INDEX_VERSION, "digest": self.digest, "size": self.size, "diffID": self.diff_id,
               "gzip": self.gzip, **({"zstdFrames": [list(f) for f in self.frames]} if self.frames is not None else {}),
               **({"estargzMembers": [list(m) for m in self.members]} if self.members is not None else {}),
               "entries": [{**{k: v for k, v in asdict(e).items() if k != "content"}, "offset": off,
                            **({"sha256": e.content} if e.content else {})}
                           for e, off in zip(self.entries, self.offsets, strict=True)]}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogateescape")

    @classmethod
    def from_json(cls, raw: bytes, points: bytes | None, label: str) -> LayerIndex:
        """Parse and check an index from anywhere (a registry, the store): every field
        typed, names normalised (``..`` refused), offsets increasing, hashes well formed."""
        try:
            doc = json.loads(raw.decode("utf-8", "surrogateescape"))
            if not isinstance(doc, dict) or doc.get("version") != INDEX_VERSION:
                raise ValueError("not an ociassemble layer index of this version")
            digest, diff_id, size = doc["digest"], doc["diffID"], doc["size"]
            if not (isinstance(digest, str) and _SHA.fullmatch(digest) and isinstance(diff_id, str)
                    and _SHA.fullmatch(diff_id) and isinstance(size, int) and size >= 0):
                raise ValueError("its digest, diffID or size is malformed")
            entries, offsets = [], []
            last = -1
            for item in doc["entries"]:
                off = item.pop("offset")
                sha = item.pop("sha256", None)
                if not isinstance(off, int) or off < last or (sha is not None and not _SHA.fullmatch(str(sha))):
                    raise ValueError("an entry's offset or sha256 is malformed")
                e = Entry(**item)
                check_entry(e)
                e.path = normalise(e.path, f"{label} entry")
                if e.kind == HARDLINK:
                    e.linkname = normalise(e.linkname, f"{label} hardlink target")
                if e.kind == FILE and e.size and sha is None:
                    raise ValueError(f"file {printable(e.path)} has no sha256")
                e.content = sha
                entries.append(e)
                offsets.append(off)
                last = off + (e.size if e.kind == FILE else 0)  # the next data starts past this body
            frames = None
            if "zstdFrames" in doc:
                frames = [(c, u) for c, u in doc["zstdFrames"]]
                if not frames or frames[0] != (0, 0) or doc.get("gzip") or any(
                        type(v) is not int for f in frames for v in f) or any(
                        not (a[0] < b[0] <= size and a[1] <= b[1]) for a, b in itertools.pairwise(frames)):
                    raise ValueError("its zstd frame offsets are malformed")
            members = None
            if "estargzMembers" in doc:
                members = [(c, i) for c, i in doc["estargzMembers"]]
                if len(members) != len(entries) or not doc.get("gzip") or any(
                        type(v) is not int or v < 0 for m in members for v in m) or any(c >= size for c, _ in members):
                    raise ValueError("its eStargz member offsets are malformed")
            if points is not None and not doc.get("gzip"):
                raise ValueError("it gives gzip access points for a layer it says is not gzip")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise ManifestError(f"{label} is not a usable layer index ({e}); it is refused") from None
        return cls(digest, size, diff_id, entries, offsets, points, bool(doc.get("gzip")), frames, members)


KINDS = (FILE, DIR, SYMLINK, HARDLINK, CHAR, BLOCK, FIFO)


def check_entry(e: Entry) -> None:
    """What the tar reader would have made sure of, for an entry that comes from a document."""
    ints = (e.mode, e.uid, e.gid, e.size, e.devmajor, e.devminor)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
        raise ValueError("an entry's mode, owner, size or device numbers are not whole numbers")
    strs = (e.path, e.kind, e.uname, e.gname, e.linkname)
    if not all(isinstance(v, str) and "\0" not in v for v in strs) or e.kind not in KINDS:
        raise ValueError("an entry's name, kind or link is malformed")
    if not isinstance(e.mtime, int | float) or isinstance(e.mtime, bool) or not math.isfinite(e.mtime):
        raise ValueError("an entry's modification time is not a time")
    if not isinstance(e.pax, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in e.pax.items()):
        raise ValueError("an entry's extended records are malformed")


class _Hashes(Spool):
    """Bodies hashed on their way by, none kept: the name returned is the sha256."""

    def __init__(self) -> None:  # no folder: nothing is stored
        pass

    def put(self, reader: Any, size: int) -> str:  # type: ignore[override]
        h = hashlib.sha256()
        left = size
        while left > 0:
            data = reader.read(min(READ, left))
            if not data:
                break
            h.update(data)
            left -= len(data)
        return "sha256:" + h.hexdigest()


def build(blob: Path | BinaryIO, digest: str, size: int, diff_id: str, label: str) -> LayerIndex:
    """The index of a layer blob (a stored, verified file, or a seekable file of a local
    layout): one pass that inflates it, records every entry with its offset and body hash,
    checks the diff_id, and (gzip) keeps access points."""
    import indexed_gzip  # a C extension, loaded only where indexes are made or used

    with (open(blob, "rb") if isinstance(blob, Path) else blob) as raw:
        head = raw.read(4)
        gzip = head[:2] == GZIP_MAGIC
        zstd = is_zstd(head)
        raw.seek(0)
        igz = indexed_gzip.IndexedGzipFile(fileobj=raw, spacing=SPACING, auto_build=True) if gzip else None
        frames = ZstdFrameReader(raw, SPACING) if zstd else None
        try:
            plain = HashingReader(igz if igz is not None else frames if frames is not None else open_decompressed(raw))
            offsets: list[int] = []
            entries = scan_layer(plain, lambda _p: True, _Hashes(), label, offsets=offsets)
            while plain.read(READ):
                pass
            if plain.digest != diff_id:
                raise DigestMismatch(f"{label} does not decompress to its diff_id {diff_id}; no index is made")
            points = None
            if igz is not None and igz.tell() > SPACING:  # a smaller layer is inflated from its start
                igz.build_full_index()  # read through already: this marks the whole stream covered
                buf = io.BytesIO()
                igz.export_index(fileobj=buf)
                points = gzip_module.compress(buf.getvalue(), 6)  # the windows compress as the data does
        finally:
            if igz is not None:
                igz.close()
    for e in entries:
        if e.kind != FILE or not e.size:
            e.content = None
    return LayerIndex(digest, size, diff_id, entries, offsets, points, gzip,
                      frames.frames if frames is not None else None)


class _Exact:
    """``size`` bytes of ``f`` from where it stands, hashed; wrong at the end is an error."""

    def __init__(self, f: Any, size: int, sha256: str | None, label: str):
        self.f = f
        self.left = size
        self.want = sha256
        self.hash = hashlib.sha256()
        self.label = label

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        data: bytes = self.f.read(self.left if n is None or n < 0 else min(n, self.left))
        if not data:
            raise DigestMismatch(f"{self.label} ends before its size; the layer or its index is wrong")
        self.left -= len(data)
        self.hash.update(data)
        if self.left == 0 and self.want is not None and "sha256:" + self.hash.hexdigest() != self.want:
            raise DigestMismatch(f"{self.label} does not match the sha256 its layer index records; the index "
                                 "is refused (is it for this layer?)")
        return data


def read_bodies(index: LayerIndex, raw: BinaryIO, need: list[int], spool: Spool, label: str,
                before: Callable[[int], None] | None = None) -> Iterator[tuple[int, str]]:
    """The bodies of entries ``need`` (positions in ``index.entries``), each checked against
    its recorded sha256, into the spool: inflating starts at the access point nearest each.
    ``before(k)`` is called as entry ``k``'s body is about to be handed to the spool."""
    if index.members is not None:
        yield from _read_members(index, raw, need, spool, label, before)
        return
    stream: Any = raw
    igz = None
    if index.codec != "none" and not index.seekable:  # a small layer (or one zstd frame): from its start
        stream = _Forward(open_decompressed(raw))
    elif index.frames is not None:
        stream = _ZstdSeekable(raw, index.frame_before)
    elif index.gzip:
        import indexed_gzip

        # compressed bytes zran reads at a time: a quarter of the spacing at most, so a reader
        # starting at an access point fetches little past what it inflates
        igz = indexed_gzip.IndexedGzipFile(fileobj=raw, spacing=SPACING, auto_build=False,
                                           readbuf_size=min(READ, SPACING // 4))
        try:
            igz.import_index(fileobj=io.BytesIO(gzip_module.decompress(index.points)))
        except Exception as e:  # indexed_gzip raises its own ZranError types
            igz.close()
            raise ManifestError(f"{label}: its access points cannot be used ({e}); the index is refused") from None
        stream = igz
    try:
        at = -1  # where the inflated stream stands (-1: not known)
        for k in sorted(need, key=lambda k: index.offsets[k]):
            e = index.entries[k]
            target = index.offsets[k]
            if 0 <= at <= target and (target - at <= SPACING if index.frames is None
                                      else index.start_before(target) <= at):
                # close ahead (or no frame starts between): inflate on, rather than go back
                _skip(stream, target - at)
            else:
                stream.seek(target)
            name = _hand_over(stream, index, k, spool, label, before)
            at = target + e.size
            yield k, name
    finally:
        if igz is not None:
            igz.close()


def _read_members(index: LayerIndex, raw: BinaryIO, need: list[int], spool: Spool, label: str,
                  before: Callable[[int], None] | None) -> Iterator[tuple[int, str]]:
    """Bodies of an eStargz layer: each inflated from the gzip member it starts in (gzip
    members are independent: no window is needed), on across members for a chunked file."""
    assert index.members is not None
    for k in sorted(need, key=lambda k: index.members[k]):  # type: ignore[index]
        e = index.entries[k]
        member, inner = index.members[k]
        raw.seek(member)
        if raw.read(2) != GZIP_MAGIC:
            raise DigestMismatch(f"{label}: /{printable(e.path)} does not start at a gzip member where its eStargz "
                                 "TOC says; the TOC is refused (--no-index reads the layer whole)")
        raw.seek(member)
        stream = open_decompressed(raw)
        _skip(stream, inner)
        yield k, _hand_over(stream, index, k, spool, label, before)


def _hand_over(stream: Any, index: LayerIndex, k: int, spool: Spool, label: str,
               before: Callable[[int], None] | None) -> str:
    """Entry ``k``'s body, from where ``stream`` stands, into the spool, checked against the
    sha256 the index records (all of it, even where the spool looks at the start only)."""
    e = index.entries[k]
    body = _Exact(stream, e.size, e.content, f"{label} /{printable(e.path)}")
    if before is not None:
        before(k)
    name = spool.put(body, e.size)
    while body.read(READ):
        pass
    return name


def spans(index: LayerIndex, need: list[int], streams: int) -> list[list[int]]:
    """``need`` cut into at most ``streams`` runs of neighbouring entries holding about as
    many bytes each, for as many readers (each inflating from its own access points, at once).

    A cut costs at most one spacing inflated twice (the next reader starts at the access point
    before its first body), so a selection too small to pay for that stays one run. A zstd
    layer is cut only before a body that a frame starts at most a spacing before, or after
    the body before it (frames may be far longer than the spacing)."""
    order = sorted(need, key=lambda k: index.offsets[k])
    total = sum(index.entries[k].size for k in order)
    if streams <= 1 or not index.seekable or total < 4 * streams * SPACING:
        return [order] if order else []
    out: list[list[int]] = [[]]
    done = 0
    end = 0  # where the body before ends
    for k in order:
        start = index.start_before(index.offsets[k]) if index.frames is not None else 0
        if out[-1] and len(out) < streams and done >= total * len(out) / streams and (
                index.frames is None or index.offsets[k] - start <= SPACING or start >= end):
            out.append([])
        out[-1].append(k)
        done += index.entries[k].size
        end = index.offsets[k] + index.entries[k].size
    return out


class ZstdFrameReader:
    """A zstd stream decompressed frame by frame (skippable frames too), noting where frames
    start, at least ``spacing`` uncompressed bytes apart: each is a place a later read can
    start from. Each frame is handed to its own bounded reader, cut from the stream by its
    frame and block headers (a small frame may inflate to gigabytes: nothing is held whole).
    A stream that ends inside a frame is an error, not a short read."""

    def __init__(self, raw: Any, spacing: int):
        self.raw = raw
        self.spacing = spacing
        self.frames: list[tuple[int, int]] = []
        self._pending = memoryview(b"")  # compressed bytes read but not yet given to a frame
        self._c = 0  # compressed bytes given to frames so far
        self._u = 0  # uncompressed bytes made so far
        self._walker: FrameWalker | None = None
        self._reader: Any = None

    def _input(self, n: int) -> bytes:
        """Up to ``n`` compressed bytes of the current frame, none past its end."""
        assert self._walker is not None
        if self._walker.ended:
            return b""
        if not self._pending:
            self._pending = memoryview(self.raw.read(READ))
            if not self._pending:
                raise CorruptLayer("a zstd layer ends in the middle of a frame; the blob is truncated")
        k = self._walker.consume(self._pending[:max(1, n)])
        data, self._pending = bytes(self._pending[:k]), self._pending[k:]
        self._c += k
        return data

    def read(self, n: int = -1) -> bytes:
        n = READ if n is None or n < 0 else n
        if n == 0:
            return b""
        while True:
            if self._reader is None:
                if not self._pending:
                    self._pending = memoryview(self.raw.read(READ))
                    if not self._pending:
                        return b""
                if not self.frames or self._u - self.frames[-1][1] >= self.spacing:
                    self.frames.append((self._c, self._u))
                self._walker = FrameWalker()
                self._reader = zstandard.ZstdDecompressor().stream_reader(_Source(self._input), read_size=READ,
                                                                          read_across_frames=False)
            try:
                out: bytes = self._reader.read(n)
            except zstandard.ZstdError as e:
                raise CorruptLayer(f"a zstd layer is corrupt ({e})") from None
            if out:
                self._u += len(out)
                return out
            assert self._walker is not None
            if not self._walker.ended:
                raise CorruptLayer("a zstd layer ends in the middle of a frame; the blob is truncated")
            self._reader = None


class _Source:
    def __init__(self, read: Callable[[int], bytes]):
        self.read = read


class _ZstdSeekable:
    """A zstd layer read from the frame at or before each place asked for."""

    def __init__(self, raw: Any, frame_before: Callable[[int], tuple[int, int]]):
        self.raw = raw
        self.frame_before = frame_before
        self._reader: Any = None

    def seek(self, target: int) -> None:
        c, u = self.frame_before(target)
        self.raw.seek(c)
        self._reader = zstandard.ZstdDecompressor().stream_reader(self.raw, read_across_frames=True,
                                                                   read_size=READ, closefd=False)
        _skip(self, target - u)

    def read(self, n: int) -> bytes:
        if self._reader is None:
            self.seek(0)
        try:
            data: bytes = self._reader.read(n)
        except zstandard.ZstdError as e:  # a frame offset that is not one: the index is wrong
            raise DigestMismatch(f"a zstd layer does not decompress from where its index says a frame "
                                 f"starts ({e}); the index is refused") from None
        return data


def _skip(stream: Any, n: int) -> None:
    while n > 0:
        data = stream.read(min(READ, n))
        if not data:
            raise DigestMismatch("a layer ended before an offset its index gives; the index is refused")
        n -= len(data)


class _Forward:
    """A stream that "seeks" forward by reading (the entries are visited in offset order)."""

    def __init__(self, raw: Any):
        self.raw = raw
        self.pos = 0

    def seek(self, offset: int) -> None:
        if offset > self.pos:
            _skip(self.raw, offset - self.pos)
            self.pos = offset

    def read(self, n: int) -> bytes:
        data: bytes = self.raw.read(n)
        self.pos += len(data)
        return data


def entries_copy(index: LayerIndex) -> list[Entry]:
    """The entries as a scan would give them (no body captured yet)."""
    return [Entry(**{**asdict(e), "content": None}) for e in index.entries]


Opener = Callable[[], Any]
