"""The engine: read source layers once, build the merged trees, write the new layers.

Planning is by diff_id: the layers ``full`` shares with ``min`` (its longest common
prefix) are never read. Of the rest, those before the first layer that writes the
recipe's marker path (``/opt/tritonserver``) are NVIDIA's own build of compose.py's RUN
steps and are carried over as the same blobs ("system layers"); the others are streamed
once, their headers indexed and the bodies of selected files spooled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ociassemble.errors import DigestMismatch, ManifestError, SelectionError
from ociassemble.layers.compression import CompressionSpec, ReadAhead, open_decompressed
from ociassemble.layers.estargz import TOC_ANNOTATION, index_from_toc
from ociassemble.layers.layerindex import LayerIndex, entries_copy, read_bodies, spans
from ociassemble.layers.spec import LayerSpec, TreeCopy
from ociassemble.layers.speculate import Speculation
from ociassemble.layers.spool import Spool
from ociassemble.layers.tarscan import scan_layer
from ociassemble.layers.tree import Node, Tree, at_or_under, resolve
from ociassemble.layers.write import (
    OutEntry,
    WrittenLayer,
    clamp_mtime,
    entry_record,
    synthetic_entries,
    write_layer,
)
from ociassemble.oci import model
from ociassemble.oci.changeset import DIR, FILE, HARDLINK, SYMLINK, Entry, sort_key
from ociassemble.oci.digest import HashingReader
from ociassemble.progress import CountingReader, NullProgress, Progress
from ociassemble.text import printable
from ociassemble.transport.source import ResolvedImage
from ociassemble.transport.store import StoreCorrupt

Log = Callable[[str], None]


def common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


DiffIdReader = HashingReader  # its sha256 must equal the layer's diff_id


@dataclass
class ScannedLayer:
    index: int
    desc: model.Descriptor
    entries: list[Entry]
    diff_id: str  # from the config, checked against the bytes whenever the layer is read

    def touches(self, prefix: str) -> bool:
        return any(at_or_under(e.path, prefix) for e in self.entries)


def scan_layers(image: ResolvedImage, indices: list[int], want: Callable[[str], bool], spool: Spool,
                jobs: int, log: Log, progress: Progress | None = None,
                speculation: Speculation | None = None) -> list[ScannedLayer]:
    """Stream the given layers (concurrently), verifying blob digest and diff_id."""

    show: Progress = progress or NullProgress()

    def one(i: int) -> ScannedLayer:
        try:
            return read_one(i)
        except StoreCorrupt as e:
            log(str(e))
            return read_one(i)  # the damaged copy is gone: this read comes from the source

    def read_one(i: int) -> ScannedLayer:
        desc = image.manifest.layers[i]
        label = f"{image.role} layer {i} ({desc.digest[:19]})"
        if desc.media_type in model.FOREIGN_LAYER_TYPES:
            raise ManifestError(
                f"{label} is a non-distributable (foreign) layer whose bytes live at "
                f"{', '.join(desc.urls) or 'an external URL'}; ociassemble does not fetch those. "
                "Mirror the image with its foreign layers included first"
            )
        full = layer_index_of(image, i)
        if full is not None:
            return _read_through_index(image, i, full, want, spool, label, show, log, speculation, jobs)
        indexed = image.source.index(desc.digest)
        if indexed is not None and not any(e.kind == FILE and e.size and want(e.path) for e in indexed):
            # headers known from an earlier run and no body wanted: the layer is not read
            for e in indexed:
                if e.kind == FILE and want(e.path):
                    e.content = spool.put(io.BytesIO(b""), 0)
            if speculation is not None:
                speculation.layer_read(i, indexed)
            log(f"{label}: {len(indexed)} entries from the store's index, not read")
            show.finish(label, "nothing selected: not read (store index)")
            return ScannedLayer(i, desc, indexed, image.config.diff_ids[i])
        show.start(label, label, desc.size)
        with image.source.open_blob(desc) as raw_blob:
            # four stages in four threads: fetch + verify + keep in the store; inflate;
            # diff_id hash; tar parse + spool. Each releases the GIL for its heavy part, and
            # none is much longer than the others (inflate and hash in one thread were the
            # longest stage of the benchmark's cold compose).
            fetch = ReadAhead(CountingReader(raw_blob, show, label), chunk=1 << 20)
            # half-MiB pieces: inflate, hash and parse then touch data still in cache
            # (measured ~0.5 s faster on the benchmark's cold compose than 2 MiB pieces)
            inflated = ReadAhead(open_decompressed(fetch), chunk=512 << 10, depth=12)
            plain = DiffIdReader(inflated)
            ahead = ReadAhead(plain, chunk=512 << 10, depth=12)
            try:
                observe = speculation.observer(i) if speculation is not None else None
                try:
                    entries = scan_layer(ahead, want, spool, label, observe=observe)
                finally:
                    if observe is not None:
                        observe.close()
                while ahead.read(1 << 20):
                    pass
                while fetch.read(1 << 20):  # bytes after the compressed stream still count
                    pass
            finally:
                ahead.close()
                inflated.close()
                fetch.close()
            raw_blob.drain()
        diff_id = plain.digest
        expected = image.config.diff_ids[i]
        if diff_id != expected:
            raise DigestMismatch(
                f"{label} decompresses to {diff_id}, but the image config says {expected}; the "
                "image is corrupt"
            )
        if speculation is not None:
            speculation.layer_read(i, entries)
        image.source.put_index(desc.digest, diff_id, entries)
        log(f"read {label}: {len(entries)} entries, {plain.size} bytes uncompressed")
        show.finish(label)
        return ScannedLayer(i, desc, entries, diff_id)

    if not indices:
        return []
    # the biggest first: the longest read then starts at once instead of after the small ones
    return biggest_first(indices, lambda i: image.manifest.layers[i].size, one, jobs)


_TOCS: dict[tuple[str, int, str, str], LayerIndex | None] = {}  # eStargz TOCs read, by what names them
_TOCS_LOCK = threading.Lock()


def layer_index_of(image: ResolvedImage, i: int) -> LayerIndex | None:
    """The full index of layer ``i`` where the source knows one (or the layer is eStargz: its
    TOC) and it read the layer with the codec its media type names; refused (one line) when it
    names another layer than the one the manifest and config give."""
    desc = image.manifest.layers[i]
    found = image.source.layer_index(desc.digest)
    if found is None:
        toc = desc.annotations.get(TOC_ANNOTATION)
        if toc is None or not image.source.uses_indexes or codec_of(desc.media_type) != "gzip":
            return None
        key = (desc.digest, desc.size, image.config.diff_ids[i], toc)  # all content-addressed
        with _TOCS_LOCK:
            if key in _TOCS:  # compose, then the library check: one fetch a run (a process)
                return _TOCS[key]
        with contextlib.closing(image.source.open_range(desc)) as raw:  # an eStargz layer carries its own
            made = index_from_toc(raw, desc.digest, desc.size, image.config.diff_ids[i], toc,
                                  f"{image.role} layer {i} ({desc.digest[:19]})")
        with _TOCS_LOCK:
            if len(_TOCS) >= 256:
                _TOCS.pop(next(iter(_TOCS)))
            _TOCS[key] = made
        return made
    label = f"the layer index of {image.role} layer {i} ({desc.digest[:19]})"
    index = LayerIndex.from_json(found[0], found[1], label)
    if (index.digest, index.size, index.diff_id) != (desc.digest, desc.size, image.config.diff_ids[i]):
        raise ManifestError(f"{label} describes layer {index.digest} (diff_id {index.diff_id}), not this one; "
                            "it is refused")
    return index if index.codec == codec_of(desc.media_type) else None  # else the layer is read as it is


def _read_through_index(image: ResolvedImage, i: int, index: LayerIndex, want: Callable[[str], bool], spool: Spool,
                        label: str, show: Progress, log: Log, speculation: Speculation | None,
                        jobs: int = 1) -> ScannedLayer:
    """A layer with a full index: its headers are the index's, and only the wanted bodies are
    read, each from the access point before it (a Range request to a registry, a seek in a
    stored blob), checked against the sha256 the index records. Nothing wanted: nothing read.

    A big selection is read by ``jobs`` readers at once, each over its own run of the layer
    (inflating is the bound, one core per reader: the other layers are seldom read by then)."""
    desc = image.manifest.layers[i]
    entries = entries_copy(index)
    need = [k for k, e in enumerate(entries) if e.kind == FILE and e.size and want(e.path)]
    for e in entries:
        if e.kind == FILE and not e.size and want(e.path):
            e.content = spool.put(io.BytesIO(b""), 0)
    if need:
        show.start(label, label, sum(entries[k].size for k in need))
        fetched: list[int | None] = []
        failed = threading.Event()  # one reader failed: the others stop at their next body

        def run(part: list[int]) -> None:
            try:
                with contextlib.closing(image.source.open_range(desc)) as raw:
                    for k, name in read_bodies(index, raw, part, spool, label):
                        entries[k].content = name
                        show.advance(label, entries[k].size)
                        if failed.is_set():
                            return
                fetched.append(getattr(raw, "fetched", None))
            except BaseException:
                failed.set()
                raise

        parts = spans(index, need, jobs)
        if len(parts) == 1:
            run(parts[0])
        else:
            with ThreadPoolExecutor(max_workers=len(parts)) as pool:
                for f in [pool.submit(run, part) for part in parts]:
                    f.result()
        got = sum(f for f in fetched if f is not None) if all(f is not None for f in fetched) else None
        log(f"{label}: {len(need)} bodies read through its {index.what}"
            + (f" by {len(parts)} readers" if len(parts) > 1 else "")
            + (f" ({got} of {desc.size} compressed bytes fetched)" if got is not None else ""))
    else:
        log(f"{label}: {len(entries)} entries from its {index.what}, nothing wanted: not read")
    show.finish(label, f"{len(need)} bodies through the {index.what}" if need else f"nothing selected: not read "
                f"({index.what})")
    if speculation is not None:
        speculation.layer_read(i, entries)
    return ScannedLayer(i, desc, entries, image.config.diff_ids[i])


_T = TypeVar("_T")
_R = TypeVar("_R")


def biggest_first(items: list[_T], size: Callable[[_T], int], work: Callable[[_T], _R], jobs: int) -> list[_R]:
    """``work`` on every item, ``jobs`` at a time, started largest first (so the longest
    job does not start last); results in the items' order."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {k: pool.submit(work, items[k]) for k in sorted(range(len(items)), key=lambda k: -size(items[k]))}
        return [futures[k].result() for k in range(len(items))]


def build_tree(layers: list[ScannedLayer], complete: bool = False) -> Tree:
    tree = Tree()
    for sl in layers:
        tree.apply(sl.entries, f"layer {sl.index} ({sl.desc.digest[:19]})")
    if complete:  # the whole image: nothing below it to delete from
        tree.complete = True
        tree.deleted.clear()
        tree.opaque.clear()
    return tree


def prefix_filter(prefixes: list[str]) -> Callable[[str], bool]:
    """Whether a path is at or under one of the prefixes ("" or "/": every path)."""
    tops = tuple(p.strip("/") for p in prefixes)

    def want(path: str) -> bool:
        return any(at_or_under(path, t) for t in tops)

    return want


def _relocate(path: str, src: str, dest: str) -> str:
    """``path`` (at or under ``src``) moved to ``dest``; "" is the root on both sides."""
    if path == src:
        return dest
    rest = path[len(src) + 1:] if src else path
    return f"{dest}/{rest}" if dest else rest


def materialise(spec: LayerSpec, trees: dict[str, Tree], mtime: int, clamp: int | None,
                names: dict[str, str]) -> list[OutEntry]:
    """The entries of one new layer: what it writes itself (owned directories, an opaque
    marker for ``RUN rm -fr DIR/*``), then the copied trees.

    A copy writes the merged state of its source tree into the destination and deletes
    nothing, as Docker's COPY does: no whiteout or opaque marker comes from a source image
    (what the source's own layers deleted is simply not there to copy). Entries are in the
    order the source layers first wrote them, which lets a layer's diff_id be hashed while
    its source streams (see :mod:`ociassemble.layers.speculate`).
    """
    out: dict[str, OutEntry] = {o.path: o for o in synthetic_entries(spec, mtime, clamp)}
    copied: dict[str, tuple[tuple[object, ...], int, Node]] = {}  # dest -> (order, copy, node)
    for k, c in enumerate(spec.copies):
        tree = trees[c.image]
        real = resolve(tree, c.src)
        node = tree.get(real) if real is not None else None
        if node is None or real is None:
            if c.required:
                raise SelectionError(
                    f"{c.image} image {names.get(c.image, '')} has no /{printable(c.src)}, which the "
                    f"{spec.name} layer copies; is it the right image?"
                )
            continue
        for n in tree.walk(node):
            dest = _relocate(n.path, real, c.dest)
            if not dest:
                continue  # the root itself: a copy into / writes what is below it
            out.pop(dest, None)
            copied[dest] = ((1, c.image, *n.first), k, n)
    # hardlinks: the first path of an inode in layer order holds the body, the others link to it
    groups: dict[tuple[int, int], str] = {}
    owned = {d.path: d for d in spec.dirs}
    for dest, (order, k, n) in sorted(copied.items(), key=lambda kv: kv[1][0]):  # type: ignore[arg-type]
        c = spec.copies[k]
        e = _entry_for(n, dest, mtime, groups, k, c.image, names)
        if c.owner is not None:
            e.uid, e.gid, e.uname, e.gname = c.owner[0], c.owner[1], "", ""
        if dest in owned:  # RUN chown U:G of a directory this layer copies
            e.uid, e.gid, e.uname, e.gname = owned[dest].uid, owned[dest].gid, "", ""
        if c.mode is not None and e.kind != SYMLINK:
            e.mode = c.mode
        out[dest] = OutEntry(e, key=order, origin=n.entry)
    items = list(out.values())
    for o in items:
        clamp_mtime(o, clamp)
    return items


def _entry_for(n: Node, dest: str, mtime: int, groups: dict[tuple[int, int], str], copy_index: int,
               image: str, names: dict[str, str]) -> Entry:
    if n.implicit:
        return Entry(dest, DIR, mode=0o755, mtime=mtime)
    if n.entry.kind == HARDLINK and n.inode is None:
        raise SelectionError(
            f"/{printable(n.path)} in the {image} image {names.get(image, '')} is a hardlink to "
            f"/{printable(n.entry.linkname)}, "
            "which no layer below it holds; the image is corrupt"
        )
    if n.inode is not None:
        src = n.inode.entry
        first = groups.get((copy_index, id(n.inode)))
        if first is not None:
            return dataclasses.replace(src, path=dest, kind=HARDLINK, linkname=first, size=0,
                                       content=None, pax=dict(src.pax))
        groups[(copy_index, id(n.inode))] = dest
        if src.content is None:
            raise SelectionError(f"internal: the body of /{printable(n.path)} was not captured")
        return dataclasses.replace(src, path=dest, kind=FILE, linkname="", pax=dict(src.pax))
    return dataclasses.replace(n.entry, path=dest, pax=dict(n.entry.pax))


def _selected_nodes(tree: Tree, image: str, specs: list[LayerSpec]) -> Iterator[Node]:
    for spec in specs:
        for c in spec.copies:
            if c.image != image:
                continue
            real = resolve(tree, c.src)
            node = tree.get(real) if real is not None else None
            if node is not None:
                yield from tree.walk(node)


def fill_missing_bodies(image: ResolvedImage, layers: list[ScannedLayer], tree: Tree,
                        specs: list[LayerSpec], spool: Spool, jobs: int, log: Log) -> None:
    """Second, targeted read for bodies the first read did not keep: hardlink targets
    outside the selection, and sources a symlink leads outside the copied trees."""
    need: dict[int, set[str]] = {}
    for n in _selected_nodes(tree, image.role, specs):
        if n.inode is not None and n.inode.entry.content is None:
            need.setdefault(n.inode.layer, set()).add(n.inode.entry.path)
    if not need:
        return
    log(f"re-reading {len(need)} layer(s) for bodies outside the copied trees")
    for pos in sorted(need):
        paths = need[pos]
        sl = layers[pos]
        again = scan_layers(image, [sl.index], lambda p, paths=paths: p in paths, spool, 1, log)[0]
        bodies = {e.path: e.content for e in again.entries if e.kind == FILE and e.content}
        for e in sl.entries:
            if e.path in paths and e.kind == FILE and e.content is None:
                e.content = bodies.get(e.path)


def link_to_lower_layers(image: ResolvedImage, lower: list[int], tree: Tree, specs: list[LayerSpec],
                         spool: Spool, jobs: int, log: Log) -> None:
    """Give selected hardlinks whose target lies below the merged layers their body.

    Such a link names a file written by a layer shared with min or a system layer, which
    are otherwise never read. Those layers are read (headers, plus the targets' bodies)
    only when a selected link needs them; the link then becomes a regular file in the new
    layer, and other selected links to the same target stay linked to it.
    """
    links = [n for n in _selected_nodes(tree, image.role, specs) if n.entry.kind == HARDLINK and n.inode is None]
    if not links:
        return
    targets = {n.entry.linkname for n in links}
    log(f"reading {len(lower)} lower layer(s) of {image.role} for {len(targets)} hardlink target(s)")
    scanned = scan_layers(image, lower, lambda p: p in targets, spool, jobs, log)
    below = build_tree(scanned)
    fill_missing_bodies(image, scanned, below, [LayerSpec("hardlink targets", [
        TreeCopy(t, t, image=image.role) for t in sorted(targets)])], spool, jobs, log)
    for n in links:
        target = below.get(n.entry.linkname)
        if target is None or target.inode is None or target.inode.entry.content is None:
            raise SelectionError(
                f"/{printable(n.path)} in the {image.role} image {image.name} is a hardlink to "
                f"/{printable(n.entry.linkname)}, "
                "which no layer of the image holds as a file; the image is corrupt"
            )
        n.inode = target.inode


@dataclass
class NewLayer:
    spec: LayerSpec
    written: WrittenLayer
    source: model.Descriptor | None = None  # a source layer passed through as this layer's blob
    origin: ResolvedImage | None = None  # the image that layer belongs to
    part: int = 1  # of ``parts``: a layer split by --max-layer-size
    parts: int = 1


_CODEC = {model.OCI_LAYER_GZIP: "gzip", model.DOCKER_LAYER_GZIP: "gzip", model.OCI_LAYER_ZSTD: "zstd"}


def codec_of(media_type: str) -> str:
    """gzip, zstd or none (a plain tar): what a layer index of such a layer must say it read."""
    return _CODEC.get(media_type, "none")


def same_layer(items: list[OutEntry], candidates: list[ScannedLayer], kind: str) -> ScannedLayer | None:
    """The source layer that holds exactly this new layer's entries, if one does.

    Such a layer, applied at the new layer's place, changes the filesystem exactly as the
    new layer would, so its blob is used as it is: nothing compressed, a mount instead of an
    upload. "Exactly": the same paths, each with the same record (type, mode, owner and
    names, mtime, size, link, devices, xattrs, body), and every copied entry taken from
    that very layer rather than from another with equal bytes, so that the choice depends
    neither on ``--verify`` (which names bodies by digest) nor on the store. Its codec
    must be the one asked for; a zstd level applies only to layers ociassemble writes.
    Layers built by a ``RUN`` or ``COPY`` step also carry their parent directories
    (``opt/``), which no new layer writes, so they are written anew; layers written by an
    earlier compose qualify.
    """
    for sl in candidates:
        if len(sl.entries) != len(items) or _CODEC.get(sl.desc.media_type) != kind:
            continue
        theirs = {e.path: e for e in sl.entries}
        if len(theirs) != len(items):
            continue
        if all((e := theirs.get(o.path)) is not None and (o.origin is None or o.origin is e)
               and entry_record(e) == entry_record(o.entry) for o in items):
            return sl
    return None


def passed_through(sl: ScannedLayer) -> WrittenLayer:
    """A source layer standing in for a new one: its records are what ``--verify`` reads back."""
    return WrittenLayer([], sl.desc.digest, sl.desc.size, sl.diff_id, len(sl.entries),
                        sum(e.size for e in sl.entries if e.kind == FILE),
                        [entry_record(e) for e in sl.entries])


def write_layers(specs: list[LayerSpec], trees: dict[str, Tree], spool: Spool, out_dir: Path,
                 spec: CompressionSpec, mtime: int, clamp: int | None, jobs: int,
                 names: dict[str, str], log: Log,
                 on_written: Callable[[NewLayer], None] | None = None,
                 speculation: Speculation | None = None,
                 candidates: list[ScannedLayer] | None = None,
                 origins: dict[int, ResolvedImage] | None = None,
                 max_size: int | None = None) -> list[NewLayer]:
    """Write the recipe's layers (``candidates``: source layers that may stand in for one,
    ``origins``: the image each candidate belongs to, by ``id``); with ``max_size`` a layer
    whose entries would make a bigger blob is written as several (see :func:`split`)."""
    plans: list[tuple[LayerSpec, list[OutEntry], int, int]] = []  # spec, entries, part, parts
    for s in specs:
        items = materialise(s, trees, mtime, clamp, names)
        parts = split(items, max_size, s.name) if max_size else [items]
        plans += [(s, part, k, len(parts)) for k, part in enumerate(parts, 1)]

    def one(arg: tuple[int, tuple[LayerSpec, list[OutEntry], int, int]]) -> NewLayer:
        i, (s, items, part, parts) = arg
        label = s.name if parts == 1 else f"{s.name} (part {part} of {parts})"
        same = same_layer(items, candidates or [], spec.kind) if parts == 1 else None
        if same is not None:
            layer = NewLayer(s, passed_through(same), same.desc, (origins or {}).get(id(same)))
            log(f"layer '{s.name}': layer {same.index} of the source holds exactly its {len(items)} entries; "
                f"its blob {same.desc.digest[:19]} is passed through")
        else:
            # a later part starts in the middle of what the source streamed: nothing was hashed for it
            recordings = speculation.recordings(s.name) if speculation is not None and part == 1 else []
            w = write_layer(items, out_dir / f"layer-{i}.tar", spool, spec, recordings)
            log(f"wrote layer '{label}': {w.entries} entries, {w.content_bytes} bytes -> {w.size} compressed"
                + (f" (diff_id: {w.speculated} bytes hashed while reading)" if recordings else ""))
            if max_size and w.size > max_size:
                raise SelectionError(f"layer '{printable(label)}' came out at {w.size} bytes, over --max-layer-size "
                                     f"{max_size} (its files do not compress); give a smaller size")
            layer = NewLayer(s, w, part=part, parts=parts)
        if on_written is not None:
            on_written(layer)
        return layer

    def content(arg: tuple[int, tuple[LayerSpec, list[OutEntry], int, int]]) -> int:
        return sum(o.entry.size for o in arg[1][1] if o.entry.kind == FILE)

    # the biggest first: it takes longest, and its upload then overlaps the smaller ones
    return biggest_first(list(enumerate(plans)), content, one, jobs)


TAR_BLOCK = 512


def split_source_layer(sl: ScannedLayer, max_size: int, spool: Spool, out_dir: Path, spec: CompressionSpec,
                       name: str) -> list[WrittenLayer]:
    """A reused layer too big for the destination (``--split-reused``) rewritten as
    consecutive layers whose union is its changeset: its whiteouts and opaque markers in
    the first (they act only on the layers below, as before), its other entries in its own
    order, cut by whole files (see :func:`split`). Its bodies were read into the spool."""
    items = [OutEntry(e, whiteout=True, key=(0, k)) if e.is_whiteout else OutEntry(e, key=(1, k), origin=e)
             for k, e in enumerate(sl.entries)]
    return [write_layer(part, out_dir / f"split-{sl.index}-{k}.tar", spool, spec)
            for k, part in enumerate(split(items, max_size, name))]


def split(items: list[OutEntry], max_size: int, name: str) -> list[list[OutEntry]]:
    """A layer's entries as consecutive parts whose blobs stay within ``max_size``: cut by
    whole files in the layer's own order (what the layer writes itself, its whiteouts and
    opaque markers all in the first part, so that they act on the layers below as before),
    a hardlink always in the part of the file it links to. Sized by the tar stream, which
    bounds the compressed blob up to the compressor's few bytes per block, kept as margin."""
    budget = max_size - max_size // 100 - 8 * TAR_BLOCK
    if all(o.key is not None for o in items):
        ordered = sorted(items, key=lambda o: o.key)  # type: ignore[arg-type,return-value]
    else:
        ordered = sorted(items, key=lambda o: sort_key(o.path))
    parts: list[list[OutEntry]] = [[]]
    used = 0
    home: dict[str, int] = {}  # body holder -> its part
    for o in ordered:
        e = o.entry
        size = TAR_BLOCK * (2 + (e.size + TAR_BLOCK - 1) // TAR_BLOCK if e.kind == FILE else 1)
        if e.kind == FILE and size > budget:
            raise SelectionError(f"/{printable(e.path)} in layer '{printable(name)}' is {e.size} bytes: one file "
                                 f"bigger than --max-layer-size {max_size} cannot be split; give a larger size")
        if e.kind == HARDLINK and e.linkname in home:
            parts[home[e.linkname]].append(o)
            continue
        first_part = (o.key is not None and o.key[0] in (0, 2)) or o.whiteout
        if used + size > budget and parts[-1] and not first_part:
            parts.append([])
            used = 0
        parts[-1].append(o)
        used += size
        home[e.path] = len(parts) - 1
    return parts


def rfc3339(epoch: int) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(epoch, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_created(value: Any) -> int:
    import datetime as _dt

    if not isinstance(value, str) or not value:
        return 0
    text = re.sub(r"(\.\d+)?(Z|[+-]\d\d:\d\d)$", "", value)
    try:
        dt = _dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=_dt.UTC)
    except ValueError:
        return 0
    return int(dt.timestamp())


def history_below(history: list[Any], layers: int) -> list[Any]:
    """The history entries of an image's first ``layers`` layers, with the empty-layer
    entries (ENV, LABEL, ...) that follow them up to the next layer."""
    out: list[Any] = []
    seen = 0
    for h in history:
        empty = isinstance(h, dict) and bool(h.get("empty_layer"))
        if not empty:
            if seen == layers:
                break
            seen += 1
        out.append(h)
    return out


def layer_media_type(kind: str, docker: bool) -> str:
    if docker:
        return model.DOCKER_LAYER_GZIP
    return model.OCI_LAYER_ZSTD if kind == "zstd" else model.OCI_LAYER_GZIP


_TO_OCI = {
    model.DOCKER_LAYER_GZIP: model.OCI_LAYER_GZIP,
    model.DOCKER_LAYER_TAR: model.OCI_LAYER,
    model.DOCKER_LAYER_FOREIGN: model.OCI_LAYER_ND_GZIP,
}
_TO_DOCKER = {v: k for k, v in _TO_OCI.items()}


def convert_desc(desc: model.Descriptor, docker: bool) -> model.Descriptor:
    table = _TO_DOCKER if docker else _TO_OCI
    mt = table.get(desc.media_type, desc.media_type)
    return dataclasses.replace(desc, media_type=mt)


def can_be_docker(descs: list[model.Descriptor]) -> bool:
    return all(d.media_type in _TO_DOCKER or d.media_type in _TO_OCI for d in descs)
