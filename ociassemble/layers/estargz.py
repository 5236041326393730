"""An eStargz layer's table of contents, read as its layer index: no artifact needed.

eStargz (stargz-snapshotter's lazily pulled layers, written by ``ctr-remote image convert
--estargz``, ``nerdctl image convert``, buildkit's ``compression=estargz``) is a gzip layer
made of many gzip members: each file's body starts a member of its own, and the last member
before a 51-byte footer holds a tar of one file, ``stargz.index.json``: every entry with its
header fields, its body's sha256 and the compressed offset of the member where it starts.
That is everything a layer index holds but the uncompressed offsets, which a reader of an
eStargz layer does not need: it inflates from the member a body starts in.

Trust: the TOC is taken only when its sha256 is the one the manifest's layer descriptor
names (``containerd.io/snapshot/stargz/toc.digest``), so the image's digest covers it, and
every body read through it is checked against the sha256 it records, as with any index.
What a TOC cannot tell (README, "eStargz layers need no artifact") is left to ``--no-index``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import re
import tarfile
import zlib
from typing import Any

from ociassemble.errors import ManifestError
from ociassemble.layers.compression import read_exact
from ociassemble.layers.layerindex import LayerIndex, check_entry
from ociassemble.layers.spool import TAR_BLOCK, tar_padding
from ociassemble.layers.tarscan import scan_layer
from ociassemble.oci.changeset import BLOCK, CHAR, DIR, FIFO, FILE, HARDLINK, SYMLINK, Entry, normalise

TOC_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
TOC_NAME = "stargz.index.json"
LANDMARKS = (".prefetch.landmark", ".no.prefetch.landmark")  # estargz.Build writes one of them, always
FOOTER = 51  # eStargz's footer: an empty gzip member whose extra field gives the TOC's offset
_SHA = re.compile(r"sha256:[0-9a-f]{64}")
TOC_MAX = 64 << 20  # compressed or not, a bigger table of contents is refused (a layer of millions of files)
_TYPES = {"dir": DIR, "reg": FILE, "symlink": SYMLINK, "hardlink": HARDLINK, "char": CHAR, "block": BLOCK,
          "fifo": FIFO}


class _Keep:
    """What scan_layer hands the TOC tar's one body to: it is kept (it is small and checked)."""

    def __init__(self) -> None:
        self.body = b""

    def put(self, src: Any, size: int) -> str:
        self.body = bytes(read_exact(src, size))  # the tar reader may hand a body over in pieces
        return "toc"


def toc_offset(footer: bytes, size: int) -> int:
    """Where the TOC's gzip member starts, from the footer (gzip header, FEXTRA, subfield
    ``SG`` holding ``%016x`` + ``STARGZ``)."""
    ok = (len(footer) == FOOTER and footer[:4] == b"\x1f\x8b\x08\x04" and footer[10:12] == b"\x1a\x00"
          and footer[12:16] == b"SG\x16\x00" and footer[32:38] == b"STARGZ")
    try:
        off = int(footer[16:32].decode("ascii"), 16) if ok else -1
    except ValueError:
        off = -1
    if not 0 <= off < size - FOOTER or size - FOOTER - off > TOC_MAX:
        raise ValueError("its footer does not give a table of contents inside the layer")
    return off


def index_from_toc(raw: Any, digest: str, size: int, diff_id: str, toc_digest: str, label: str) -> LayerIndex | None:
    """The layer index an eStargz layer carries (``raw``: the blob, seekable, fetched as read),
    refused in one line when the TOC is not the one the manifest names or is malformed; None
    where the TOC cannot describe the layer exactly (names that are not UTF-8: JSON turned
    them into U+FFFD), so that the layer is read whole instead."""
    try:
        if size <= FOOTER:
            raise ValueError("the layer is smaller than an eStargz footer")
        off = toc_offset(_span(raw, size - FOOTER, size), size)
        member = _span(raw, off, size - FOOTER)
        inflater = zlib.decompressobj(31)
        tar = inflater.decompress(member, TOC_MAX)
        if inflater.unconsumed_tail:
            raise ValueError("its table of contents inflates to more than 64 MiB")
        keep = _Keep()
        offsets: list[int] = []
        tail = scan_layer(io.BytesIO(tar), lambda p: p == TOC_NAME, keep, f"{label} TOC", offsets=offsets)  # type: ignore[arg-type]
        if [e.path for e in tail] != [TOC_NAME]:
            raise ValueError(f"its last member is not a tar of {TOC_NAME} alone")
        if "sha256:" + hashlib.sha256(keep.body).hexdigest() != toc_digest:
            raise ManifestError(f"{label}: its eStargz table of contents is not the one its manifest names "
                                f"({toc_digest[:19]}); the layer is refused (--no-index reads it whole instead)")
        doc = json.loads(keep.body)
        if _replaced(doc):  # U+FFFD: Go's JSON encoder stands it in for bytes that are not UTF-8
            return None
        entries, members, last = _entries(doc, size, label)
        # written losslessly (BuildKit), the layer's own end-of-archive blocks come before the
        # TOC's tar, so a reader of the whole layer never sees stargz.index.json; written by
        # estargz.Build (ctr-remote, nerdctl: its landmark file first), no end-of-archive comes
        # first and it does. Without a landmark, the member of the last body is read to see
        if any(e.path in LANDMARKS for e in entries) or not _end_of_archive_before(_span(raw, last[0], off),
                                                                                   last[1:]):
            toc = tail[0]
            toc.content = "sha256:" + hashlib.sha256(keep.body).hexdigest()
            entries.append(toc)
            members.append((off, offsets[0]))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, zlib.error, tarfile.TarError) as e:
        raise ManifestError(f"{label}: its eStargz table of contents is malformed ({e}); the layer is refused "
                            "(--no-index reads it whole instead)") from None
    # uncompressed offsets are not in a TOC: an increasing stand-in keeps the entries' order
    synthetic, pos = [], 0
    for e in entries:
        pos += TAR_BLOCK
        synthetic.append(pos)
        pos += e.size + tar_padding(e.size)
    return LayerIndex(digest, size, diff_id, entries, synthetic, None, True, members=members)


def _span(raw: Any, start: int, end: int) -> bytes:
    """Bytes ``start:end`` of the blob: one request of their own from a registry's blob."""
    if hasattr(raw, "span"):
        return raw.span(start, end)  # type: ignore[no-any-return]
    raw.seek(start)
    return raw.read(end - start)  # type: ignore[no-any-return]


def _end_of_archive_before(data: bytes, skip: tuple[int, int]) -> bool:
    """Whether, after the last file body (``skip``: where it starts in the inflated member and
    how much of it, with its padding, is left) the tar stream holds an end-of-archive block
    before the TOC: the headers of the entries after that body are walked over."""
    inflater = zlib.decompressobj(31)
    out = bytearray()
    view = data
    want = skip[0] + skip[1] + (TOC_MAX >> 4)  # the headers after the last body are few
    while view and len(out) < want:  # gzip members, one after another
        out += inflater.decompress(view, want - len(out))
        if inflater.unconsumed_tail:
            break
        if inflater.eof:
            view = inflater.unused_data
            inflater = zlib.decompressobj(31)
        else:
            view = b""
    pos = skip[0] + skip[1]
    while pos + TAR_BLOCK <= len(out):
        block = bytes(out[pos:pos + TAR_BLOCK])
        if block == bytes(TAR_BLOCK):
            return True
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        pos += TAR_BLOCK
        if info.type in tarfile.REGULAR_TYPES or info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE,
                                                              tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            pos += info.size + tar_padding(info.size)
    return False


def _entries(doc: Any, size: int, label: str) -> tuple[list[Entry], list[tuple[int, int]], tuple[int, int, int]]:
    """The entries, their members, and where the last body lies: (member offset, where it
    starts in that member's output, how much of it and its padding is left from there)."""
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("entries"), list):
        raise ValueError("not an eStargz TOC of version 1")
    entries: list[Entry] = []
    members: list[tuple[int, int]] = []
    floor = 0
    last = (0, 0, 0)
    # the writer leaves out an owner name equal to the last one it gave for the same id (user
    # names by uid, group names by gid): it is that one. A tar header with no name after a
    # named one of the same id cannot be told from it (see README)
    unames: dict[int, str] = {}
    gnames: dict[int, str] = {}
    file_size = 0
    for item in doc["entries"]:
        kind = item["type"]
        if kind == "chunk":  # a later part of the file before: read on from where that starts
            c_off, c_inner, c_at = item["offset"], item.get("innerOffset", 0), item["chunkOffset"]
            if not (_whole(c_off, c_inner, c_at) and floor <= c_off < size and 0 < c_at < file_size):
                raise ValueError("a chunk has a malformed offset")
            floor = c_off
            last = (c_off, c_inner, file_size - c_at + tar_padding(file_size))
            continue
        if kind not in _TYPES:
            raise ValueError(f"an entry has type {kind!r}")
        name, xattrs = item["name"], item.get("xattrs") or {}
        uid, gid = item.get("uid", 0), item.get("gid", 0)
        if not isinstance(name, str) or not _whole(uid, gid) or not isinstance(xattrs, dict):
            raise ValueError("an entry's name, owner or xattrs are malformed")
        uname = unames[uid] = item.get("userName") or unames.get(uid, "")
        gname = gnames[gid] = item.get("groupName") or gnames.get(gid, "")
        kind_ = _TYPES[kind]
        e = Entry(
            path=normalise(name, f"{label} entry"), kind=kind_, mode=item.get("mode", 0) & 0o7777, uid=uid,
            gid=gid, uname=uname, gname=gname, mtime=_mtime(item.get("modtime")),
            size=item.get("size", 0) if kind_ == FILE else 0,
            linkname=item.get("linkName", "") if kind_ in (SYMLINK, HARDLINK) else "",
            devmajor=item.get("devMajor", 0) if kind_ in (CHAR, BLOCK) else 0,
            devminor=item.get("devMinor", 0) if kind_ in (CHAR, BLOCK) else 0,
            pax={f"SCHILY.xattr.{k}": _xattr(v) for k, v in xattrs.items()})
        check_entry(e)
        if e.kind == HARDLINK:
            e.linkname = normalise(e.linkname, f"{label} hardlink target")
        member = (0, 0)
        file_size = 0
        if e.kind == FILE and e.size:
            digest, off, inner = item["digest"], item["offset"], item.get("innerOffset", 0)
            if not (isinstance(digest, str) and _SHA.fullmatch(digest)):
                raise ValueError(f"file {e.path} has no sha256")
            if not (_whole(off, inner) and floor <= off < size):
                raise ValueError(f"file {e.path} has a malformed offset")
            floor, file_size = off, e.size
            member = (off, inner)
            last = (off, inner, e.size + tar_padding(e.size))
            e.content = digest
        entries.append(e)
        members.append(member)
    return entries, members, last


def _replaced(doc: Any) -> bool:
    """Whether any name, link or owner in the TOC holds U+FFFD (so the tar's bytes are lost)."""
    entries = doc.get("entries") if isinstance(doc, dict) else None
    for item in entries if isinstance(entries, list) else []:
        if isinstance(item, dict):
            texts = [item.get(k) for k in ("name", "linkName", "userName", "groupName")]
            texts += list(item.get("xattrs") or {}) if isinstance(item.get("xattrs"), dict) else []
            if any(isinstance(t, str) and "\ufffd" in t for t in texts):
                return True
    return False


def _whole(*values: Any) -> bool:
    return all(type(v) is int and v >= 0 for v in values)


def _mtime(value: Any) -> int:
    """RFC 3339 seconds (the writer rounds to them), UTC where no offset is given."""
    if value is None:
        return 0
    when = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp())


def _xattr(value: Any) -> str:
    return base64.b64decode(str(value), validate=True).decode("utf-8", "surrogateescape")


__all__ = ["TOC_ANNOTATION", "index_from_toc"]
