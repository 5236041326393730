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
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import zlib
from typing import Any

from ociassemble.errors import ManifestError
from ociassemble.layers.layerindex import LayerIndex, check_entry
from ociassemble.layers.spool import TAR_BLOCK, tar_padding
from ociassemble.layers.tarscan import scan_layer
from ociassemble.oci.changeset import BLOCK, CHAR, DIR, FIFO, FILE, HARDLINK, SYMLINK, Entry, normalise

TOC_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
TOC_NAME = "stargz.index.json"
FOOTER = 51  # eStargz's footer: an empty gzip member whose extra field gives the TOC's offset
TOC_MAX = 64 << 20  # compressed or not, a bigger table of contents is refused (a layer of millions of files)
_TYPES = {"dir": DIR, "reg": FILE, "symlink": SYMLINK, "hardlink": HARDLINK, "char": CHAR, "block": BLOCK,
          "fifo": FIFO}


class _Keep:
    """What scan_layer hands the TOC tar's one body to: it is kept (it is small and checked)."""

    def __init__(self) -> None:
        self.body = b""

    def put(self, src: Any, size: int) -> str:
        self.body = bytes(src.read(size))
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
    if not 0 < off < size - FOOTER or size - FOOTER - off > TOC_MAX:
        raise ValueError("its footer does not give a table of contents inside the layer")
    return off


def index_from_toc(raw: Any, digest: str, size: int, diff_id: str, toc_digest: str, label: str) -> LayerIndex:
    """The layer index an eStargz layer carries (``raw``: the blob, seekable, fetched as read),
    refused in one line when the TOC is not the one the manifest names or is malformed."""
    try:
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
        entries, members = _entries(doc, size, label)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, zlib.error) as e:
        raise ManifestError(f"{label}: its eStargz table of contents is malformed ({e}); the layer is refused "
                            "(--no-index reads it whole instead)") from None
    toc = tail[0]
    toc.content = "sha256:" + hashlib.sha256(keep.body).hexdigest()
    entries.append(toc)
    members.append((off, offsets[0]))
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


def _entries(doc: Any, size: int, label: str) -> tuple[list[Entry], list[tuple[int, int]]]:
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("entries"), list):
        raise ValueError("not an eStargz TOC of version 1")
    entries: list[Entry] = []
    members: list[tuple[int, int]] = []
    last = 0
    # the writer leaves out an owner name equal to the last one given for the same id: it is
    # that one (as stargz-snapshotter's reader takes it; a header with no name after a named
    # one of the same id cannot be told from it, see README)
    unames: dict[int, str] = {}
    gnames: dict[int, str] = {}
    for item in doc["entries"]:
        kind = item["type"]
        if kind == "chunk":  # a later part of the body before: it is read on from where that starts
            continue
        if kind not in _TYPES:
            raise ValueError(f"an entry has type {kind!r}")
        xattrs = item.get("xattrs") or {}
        uid, gid = item.get("uid", 0), item.get("gid", 0)
        uname = unames[uid] = item.get("userName") or unames.get(uid, "")
        gname = gnames[gid] = item.get("groupName") or gnames.get(gid, "")
        e = Entry(
            path=normalise(str(item["name"]), f"{label} entry"), kind=_TYPES[kind],
            mode=item.get("mode", 0) & 0o7777, uid=uid, gid=gid, uname=uname, gname=gname,
            mtime=_mtime(item.get("modtime")),
            size=item.get("size", 0) if kind == "reg" else 0, linkname=str(item.get("linkName", "")),
            devmajor=item.get("devMajor", 0), devminor=item.get("devMinor", 0),
            pax={f"SCHILY.xattr.{k}": _xattr(v) for k, v in xattrs.items()})
        check_entry(e)
        if e.kind == HARDLINK:
            e.linkname = normalise(e.linkname, f"{label} hardlink target")
        member = (0, 0)
        if e.kind == FILE and e.size:
            digest, off, inner = item["digest"], item["offset"], item.get("innerOffset", 0)
            if not (isinstance(digest, str) and digest.startswith("sha256:") and len(digest) == 71):
                raise ValueError(f"file {e.path} has no sha256")
            if not (type(off) is int and type(inner) is int and last <= off < size and inner >= 0):
                raise ValueError(f"file {e.path} has a malformed offset")
            last = off
            member = (off, inner)
            e.content = digest
        entries.append(e)
        members.append(member)
    return entries, members


def _mtime(value: Any) -> int:
    if value is None:
        return 0
    return int(datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())


def _xattr(value: Any) -> str:
    import base64

    return base64.b64decode(str(value), validate=True).decode("utf-8", "surrogateescape")


__all__ = ["TOC_ANNOTATION", "index_from_toc"]
