"""``ociassemble ls REF [PATH]``: a directory of an image's merged tree, with sizes.

What a full image holds (backends, repository agents, caches) is read from the layers'
indexes in the store when it has them, reading no body; otherwise every layer's headers
are read once (bodies pass by unkept) and their indexes kept for the next run.
"""

from __future__ import annotations

from dataclasses import dataclass

from ociassemble.engine.assemble import build_tree
from ociassemble.engine.run import RunOptions, Session, translating_os_errors
from ociassemble.errors import NotFound
from ociassemble.layers.tree import Node, resolve
from ociassemble.oci.changeset import DIR, FILE, SYMLINK, normalise
from ociassemble.text import printable


@dataclass
class LsOptions(RunOptions):
    ref: str = ""
    path: str = "/"


@dataclass
class Listed:
    name: str
    kind: str  # file dir symlink hardlink char block fifo
    size: int  # a file's bytes; a directory's: every file below it (a hardlinked body once)
    mode: int
    uid: int
    gid: int
    target: str = ""  # a symlink's


@dataclass
class Listing:
    image: str
    digest: str
    path: str
    entries: list[Listed]
    layers_read: int  # layers whose headers had to be read (the rest came from the store's index)


def ls(opts: LsOptions) -> Listing:
    """The entries of one directory (or the one entry a file path names)."""
    return translating_os_errors(lambda: _ls(opts), opts)  # type: ignore[arg-type,return-value]


def _ls(opts: LsOptions) -> Listing:
    with Session(opts) as s:
        image = s.resolve("image", s.source(opts.ref))
        before = s.store.stats.get("index_hits", 0) if s.store is not None else 0
        layers = s.scan(image, list(range(len(image.manifest.layers))), lambda _p: False)
        hits = (s.store.stats.get("index_hits", 0) - before) if s.store is not None else 0
        tree = build_tree(layers, complete=True)
        path = normalise(opts.path, "path") if opts.path.strip("/") else ""
        real = resolve(tree, path) if path else ""
        node = tree.get(real) if real is not None else None
        if node is None:
            raise NotFound(f"{printable(image.name)} has no /{printable(path)}")
        if node.kind != DIR or node.children is None:
            entries = [_listed(path.rsplit("/", 1)[-1], node)]
        else:
            entries = [_listed(name, child) for name, child in sorted(node.children.items())]
        return Listing(image.name, image.digest, "/" + path, entries, max(0, len(layers) - hits))


def _listed(name: str, node: Node) -> Listed:
    e = node.entry
    if node.kind == DIR:
        size = _du(node)
    elif node.inode is not None:
        size = node.inode.entry.size
    else:
        size = e.size if e.kind == FILE else 0
    meta = node.inode.entry if node.inode is not None else e
    return Listed(name, node.kind, size, meta.mode, meta.uid, meta.gid, e.linkname if node.kind == SYMLINK else "")


def _du(top: Node) -> int:
    """Bytes of every file below ``top``, each hardlinked body once (an explicit stack)."""
    seen: set[int] = set()
    total = 0
    stack = [top]
    while stack:
        n = stack.pop()
        if n.children:
            stack.extend(n.children.values())
        if n.inode is not None and id(n.inode) not in seen:
            seen.add(id(n.inode))
            total += n.inode.entry.size
    return total


__all__ = ["Listed", "Listing", "LsOptions", "ls"]
