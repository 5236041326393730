"""Writing new layers: deterministic tar, compressed, hashed twice on the way out.

The same entries always give the same bytes: entries in tree order, PAX headers only
where a value needs them, no atime/ctime, fixed compression parameters. Both digests are
computed while streaming: the uncompressed one is the layer's diff_id (config), the
compressed one names the blob (manifest).
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from ociassemble.compression import CompressingWriter, CompressionSpec
from ociassemble.digest import HashingWriter
from ociassemble.spool import Spool
from ociassemble.tarscan import (
    BLOCK,
    CHAR,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    OPAQUE,
    SYMLINK,
    WHITEOUT,
    Entry,
    sort_key,
)

_TYPES = {FILE: tarfile.REGTYPE, DIR: tarfile.DIRTYPE, SYMLINK: tarfile.SYMTYPE, HARDLINK: tarfile.LNKTYPE,
          CHAR: tarfile.CHRTYPE, BLOCK: tarfile.BLKTYPE, FIFO: tarfile.FIFOTYPE}


@dataclass
class OutEntry:
    """One entry of a new layer. ``entry.content`` names the body in the spool for files."""

    entry: Entry
    whiteout: bool = False

    @property
    def path(self) -> str:
        return self.entry.path


@dataclass
class WrittenLayer:
    path: Path
    digest: str
    size: int
    diff_id: str
    media_kind: str  # "gzip" | "zstd"
    entries: int
    content_bytes: int
    records: list[tuple[object, ...]] = field(default_factory=list)  # entry_record of each entry, for --verify


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


def write_layer(items: list[OutEntry], dest: Path, spool: Spool, spec: CompressionSpec) -> WrittenLayer:
    """Write ``items`` (sorted here) as a compressed tar blob at ``dest``."""
    items = sorted(items, key=lambda o: sort_key(o.path))
    seen: set[str] = set()
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
                if item.path in seen:
                    raise AssertionError(f"duplicate path in new layer: {item.path!r}")
                seen.add(item.path)
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
    return WrittenLayer(dest, compressed.digest, compressed.size, plain.digest, spec.kind,
                        len(items), content, records)
