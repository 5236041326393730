"""A local content-addressed store: verified blobs, per-layer file indexes, compose memos.

Layout under the store directory (default ``$XDG_CACHE_HOME/ociassemble``)::

    blobs/sha256/<hex>     blobs exactly as the registry served them, verified
    index/<hex>.json       a layer's entry headers (no bodies), keyed by its blob digest
    memo/<hex>.json        (tool version, source digests, selection) -> the output manifest

Every file appears by atomic rename after it is complete and verified, so two processes
sharing the store at once see either nothing or a whole, correct file; a blob is verified
again whenever it is read. Use refreshes a blob's mtime, and :meth:`Store.prune` evicts
least recently used blobs down to a size limit.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ociassemble.errors import DigestMismatch, OciAssembleError
from ociassemble.oci.changeset import Entry
from ociassemble.oci.digest import CHUNK, HashingWriter, VerifyingReader, blob_path, iter_file
from ociassemble.oci.model import Descriptor
from ociassemble.transport.atomic import name_write_errors, part_file, remove_stale_parts, stale_parts, write_atomically
from ociassemble.transport.source import Source

DEFAULT_MAX_BYTES = 50 << 30


class StoreCorrupt(DigestMismatch):
    """A stored blob no longer matches its digest (disk damage, an outside edit)."""
INDEX_VERSION = 1


def default_store_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ociassemble"


def _file_digest(path: Path) -> str:
    w = HashingWriter(None)
    with open(path, "rb") as f:
        for chunk in iter_file(f):
            w.write(chunk)
    return w.digest


class Store:
    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = root
        self.max_bytes = max_bytes
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (root / "index").mkdir(exist_ok=True)
        (root / "memo").mkdir(exist_ok=True)
        self.stats = {"store_hits": 0, "store_hit_bytes": 0, "downloaded_bytes": 0, "index_hits": 0}

    # -- blobs ------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return blob_path(self.root, digest)

    def has(self, desc: Descriptor) -> bool:
        p = self.blob_path(desc.digest)
        return p.is_file() and p.stat().st_size == desc.size

    @contextmanager
    def open_blob(self, desc: Descriptor, source: Source) -> Iterator[Any]:
        """The blob from the store if there, else from ``source``, kept as it streams by."""
        p = self.blob_path(desc.digest)
        if self.has(desc):
            os.utime(p)
            self.stats["store_hits"] += 1
            self.stats["store_hit_bytes"] += desc.size
            with open(p, "rb") as f:
                try:
                    yield VerifyingReader(f, desc.digest, desc.size, f"stored blob {desc.digest[:19]}")
                except OciAssembleError:
                    # a damaged copy often trips the decompressor before the digest check
                    # ends: look at the file itself before blaming anything else
                    if _file_digest(p) == desc.digest:
                        raise
                    p.unlink(missing_ok=True)  # never served again
                    raise StoreCorrupt(
                        f"the store's copy of {desc.digest} was damaged and has been removed; it is fetched "
                        "again from the source"
                    ) from None
            return
        with source.open_blob(desc) as remote:
            tee = _Tee(remote, self.blobs, p)
            try:
                yield tee
            finally:
                tee.close()
                self.stats["downloaded_bytes"] += tee.count

    # -- layer indexes ----------------------------------------------------------------------
    def index(self, digest: str) -> list[Entry] | None:
        p = self.root / "index" / (digest.split(":", 1)[1] + ".json")
        try:
            doc = json.loads(p.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if doc.get("version") != INDEX_VERSION:
            return None
        self.stats["index_hits"] += 1
        return [Entry(**{**e, "content": None}) for e in doc["entries"]]

    def put_index(self, digest: str, diff_id: str, entries: list[Entry]) -> None:
        doc = {"version": INDEX_VERSION, "digest": digest, "diff_id": diff_id,
               "entries": [{k: v for k, v in asdict(e).items() if k != "content"} for e in entries]}
        write_atomically(self.root / "index" / (digest.split(":", 1)[1] + ".json"),
                      json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogateescape"))

    # -- full layer indexes (offsets, body hashes, access points: see layers/layerindex.py) ---------
    def _lindex(self, digest: str) -> tuple[Path, Path]:
        hexd = digest.split(":", 1)[1]
        return self.root / "lindex" / f"{hexd}.json", self.root / "lindex" / f"{hexd}.points"

    def layer_index_raw(self, digest: str, origins: frozenset[str] | None = None) -> tuple[bytes, bytes | None] | None:
        """A stored index of a layer; with ``origins``, only one made here ("local") or found in
        one of those repositories (an index is trusted as its repository is, not beyond it)."""
        doc, points = self._lindex(digest)
        if origins is not None and self.layer_index_origin(digest) not in origins:
            return None
        try:
            raw = doc.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return raw, points.read_bytes()
        except FileNotFoundError:
            return raw, None

    def layer_index_origin(self, digest: str) -> str:
        doc, _ = self._lindex(digest)
        try:
            return doc.with_suffix(".origin").read_text().strip()
        except FileNotFoundError:
            return ""

    def put_layer_index_raw(self, digest: str, raw: bytes, points: bytes | None, origin: str = "local") -> None:
        doc, pts = self._lindex(digest)
        doc.parent.mkdir(exist_ok=True)
        if points is not None:
            write_atomically(pts, points)
        write_atomically(doc.with_suffix(".origin"), origin.encode())
        write_atomically(doc, raw)

    # -- memos ------------------------------------------------------------------------------
    def memo(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / "memo" / f"{key}.json").read_text())  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError):
            return None

    def put_memo(self, key: str, value: dict[str, Any]) -> None:
        write_atomically(self.root / "memo" / f"{key}.json", json.dumps(value, sort_keys=True).encode())

    # -- leftovers of killed runs --------------------------------------------------------------
    def _part_dirs(self) -> list[Path]:
        """Every folder of the store a run writes by rename (libcheck: its per-layer records)."""
        return [d for d in (self.blobs, self.root / "index", self.root / "memo", self.root / "lindex",
                            self.root / "libcheck") if d.is_dir()]

    def stale(self) -> list[tuple[Path, int]]:
        """Temporary files (``.part-*``) no live process holds: left by a killed run."""
        return [found for d in self._part_dirs() for found in stale_parts(d)]

    def remove_stale(self) -> list[tuple[Path, int]]:
        """Remove what :meth:`stale` lists (files being written by live runs stay)."""
        return [found for d in self._part_dirs() for found in remove_stale_parts(d)]

    # -- size -------------------------------------------------------------------------------
    def usage(self) -> tuple[int, int]:
        files = [p for p in self.blobs.iterdir() if not p.name.startswith(".")]
        return len(files), sum(p.stat().st_size for p in files)

    def prune(self, max_bytes: int | None = None) -> tuple[int, int]:
        """Evict least recently used blobs (and their indexes) until under ``max_bytes``."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        files = sorted((p for p in self.blobs.iterdir() if not p.name.startswith(".")),
                       key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        removed = freed = 0
        for p in files:
            if total <= limit:
                break
            size = p.stat().st_size
            p.unlink(missing_ok=True)
            (self.root / "index" / f"{p.name}.json").unlink(missing_ok=True)
            (self.root / "libcheck" / f"{p.name}.json").unlink(missing_ok=True)  # libcheck.py's record of the layer
            total -= size
            freed += size
            removed += 1
        self.remove_stale()
        return removed, freed


class _Tee:
    """Passes a verifying stream through and keeps a copy, committed only once verified."""

    def __init__(self, src: VerifyingReader, directory: Path, final: Path):
        self._src = src
        self._final = final
        self._part = contextlib.ExitStack()  # the part file stays locked until committed or dropped
        fd, self._tmp = self._part.enter_context(part_file(directory))
        self._out: Any = os.fdopen(fd, "wb", closefd=False)
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if self._out is not None:
            with name_write_errors(self._tmp):
                if data:
                    self._out.write(data)
                    self.count += len(data)
                if self._src.verified:  # the end was reached and checked (read(-1) reaches it at once)
                    self._out.close()
                    self._out = None
                    with contextlib.suppress(FileNotFoundError):  # removed by an outside prune: keep nothing
                        os.replace(self._tmp, self._final)
                    self._part.close()
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass
        self.read(CHUNK)

    def close(self) -> None:
        if self._out is not None:  # not read to a verified end: keep nothing
            with contextlib.suppress(OSError):  # a full disk may refuse the last buffered bytes
                self._out.close()
            self._out = None
            self._part.close()  # removes the part file


class StoreSource(Source):
    """A source whose blobs go through the store: served from it when there, kept when not.

    Blobs of a local OCI layout are not copied (they are on disk already); the store's
    layer indexes serve such sources all the same.
    """

    def __init__(self, inner: Source, store: Store, keep_blobs: bool = True):
        self.inner = inner
        self.store = store
        self.keep_blobs = keep_blobs and not inner.local
        self.local = inner.local
        self.label = inner.label
        where = inner.registry()
        # the repositories whose published layer indexes this source trusts (None: use none)
        self.index_origins: frozenset[str] | None = frozenset(
            {"local", *([f"{where[0].host}/{where[1]}"] if where else [])})

    def manifest(self, reference: str | None = None) -> tuple[bytes, str]:
        return self.inner.manifest(reference)

    def top_digest(self) -> str | None:
        return self.inner.top_digest()

    def mount_origin(self) -> tuple[str, str] | None:
        return self.inner.mount_origin()

    def index(self, digest: str) -> list[Entry] | None:
        return self.store.index(digest)

    def put_index(self, digest: str, diff_id: str, entries: list[Entry]) -> None:
        self.store.put_index(digest, diff_id, entries)

    def registry(self) -> tuple[Any, str] | None:
        return self.inner.registry()

    def layer_index(self, digest: str) -> tuple[bytes, bytes | None] | None:
        """The store's full index of a layer, as stored (the engine parses and checks it): one
        made on this machine, or found in this image's repository or one the run names."""
        if self.index_origins is None:
            return None  # --no-index
        return self.store.layer_index_raw(digest, self.index_origins) or self.inner.layer_index(digest)

    @property  # type: ignore[override]
    def uses_indexes(self) -> bool:
        return self.index_origins is not None

    def open_range(self, desc: Descriptor) -> Any:
        if self.store.has(desc):
            return open(self.store.blob_path(desc.digest), "rb")  # verified when it was kept
        return self.inner.open_range(desc)

    @contextmanager
    def open_blob(self, desc: Descriptor) -> Iterator[Any]:
        if not self.keep_blobs:
            with self.inner.open_blob(desc) as r:
                yield r
            return
        with self.store.open_blob(desc, self.inner) as r:
            yield r
