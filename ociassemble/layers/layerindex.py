"""A layer's index: what it holds and where, so that a compose reads only what it needs.

For each entry: its header record, where its data starts in the uncompressed tar stream,
and (for files) its body's sha256. For a gzip layer, access points every few MiB of the
uncompressed stream (compressed offset, bit offset, the 32 KiB window), made and used by
``indexed_gzip`` (zran), so that inflating can start near any entry instead of at the
layer's first byte. A plain tar layer needs none (offsets are file offsets); a zstd layer
gets none here (it is read whole).

An index is only as good as where it came from: it names the layer digest and diff_id it
describes and is refused for any other layer; every body read through it is checked
against the sha256 it records. See README, "Fetching only what a selection needs".
"""

from __future__ import annotations

import gzip as gzip_module
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ociassemble.errors import DigestMismatch, ManifestError
from ociassemble.layers.compression import GZIP_MAGIC, open_decompressed
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

    def to_json(self) -> bytes:
        doc = {"version": INDEX_VERSION, "digest": self.digest, "size": self.size, "diffID": self.diff_id,
               "gzip": self.gzip,
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
                _check_entry(e)
                e.path = normalise(e.path, f"{label} entry")
                if e.kind == HARDLINK:
                    e.linkname = normalise(e.linkname, f"{label} hardlink target")
                if e.kind == FILE and e.size and sha is None:
                    raise ValueError(f"file {printable(e.path)} has no sha256")
                e.content = sha
                entries.append(e)
                offsets.append(off)
                last = off + (e.size if e.kind == FILE else 0)  # the next data starts past this body
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise ManifestError(f"{label} is not a usable layer index ({e}); it is refused") from None
        return cls(digest, size, diff_id, entries, offsets, points, bool(doc.get("gzip")))


KINDS = (FILE, DIR, SYMLINK, HARDLINK, CHAR, BLOCK, FIFO)


def _check_entry(e: Entry) -> None:
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
        gzip = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        igz = indexed_gzip.IndexedGzipFile(fileobj=raw, spacing=SPACING, auto_build=True) if gzip else None
        try:
            plain = HashingReader(igz if igz is not None else open_decompressed(raw))
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
    return LayerIndex(digest, size, diff_id, entries, offsets, points, gzip)


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


def read_bodies(index: LayerIndex, raw: BinaryIO, need: list[int], spool: Spool, label: str) -> Iterator[
        tuple[int, str]]:
    """The bodies of entries ``need`` (positions in ``index.entries``), each checked against
    its recorded sha256, into the spool: inflating starts at the access point nearest each."""
    stream: Any = raw
    igz = None
    if index.gzip and index.points is None:  # a small layer: inflated from its start, forward only
        stream = _Forward(open_decompressed(raw))
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
            if 0 <= at <= target and target - at <= SPACING:
                _skip(stream, target - at)  # close ahead: inflate on, rather than go back to an access point
            else:
                stream.seek(target)
            body = _Exact(stream, e.size, e.content, f"{label} /{printable(e.path)}")
            name = spool.put(body, e.size)
            while body.read(READ):  # a spool that looks at the start only: the rest is still checked
                pass
            at = target + e.size
            yield k, name
    finally:
        if igz is not None:
            igz.close()


def spans(index: LayerIndex, need: list[int], streams: int) -> list[list[int]]:
    """``need`` cut into at most ``streams`` runs of neighbouring entries holding about as
    many bytes each, for as many readers (each inflating from its own access points, at once).

    A cut costs at most one spacing inflated twice (the next reader starts at the access point
    before its first body), so a selection too small to pay for that stays one run."""
    order = sorted(need, key=lambda k: index.offsets[k])
    total = sum(index.entries[k].size for k in order)
    if streams <= 1 or index.points is None or total < 4 * streams * SPACING:
        return [order] if order else []
    out: list[list[int]] = [[]]
    done = 0
    for k in order:
        if out[-1] and len(out) < streams and done >= total * len(out) / streams:
            out.append([])
        out[-1].append(k)
        done += index.entries[k].size
    return out


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
