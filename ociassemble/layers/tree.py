"""The merged filesystem of a stack of layers, as an OCI runtime would see it.

Layers are applied bottom to top with OCI changeset rules: whiteouts (``.wh.name``) and
opaque markers (``.wh..wh..opq``) delete from the layers *below* (never from their own
layer, whatever the order in the tar), a later entry replaces an earlier one at the same
path (a non-directory replacing a directory drops the directory's subtree), and hardlinks
share an inode, so they keep the body the target had when the link was made.

Only metadata is held: bodies live in the spool, named in each inode's ``entry.content``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ociassemble.errors import UnsafeTarEntry
from ociassemble.oci.changeset import DIR, FILE, HARDLINK, SYMLINK, Entry


@dataclass(slots=True, eq=False)
class Inode:
    """One file body and its metadata; several paths share it when hardlinked."""

    entry: Entry
    layer: int  # index, in the tree's layer list, of the layer that wrote it


@dataclass(slots=True, eq=False)
class Node:
    path: str
    entry: Entry  # metadata of this path (for hardlinks: the path's own header)
    inode: Inode | None = None  # regular files (and hardlinks resolved to them)
    children: dict[str, Node] | None = None  # directories
    implicit: bool = False  # a parent directory no layer wrote explicitly
    # where the path first appeared: (layer, position in the layer, -depth for the parent
    # directories an entry implied); new layers list their entries in this order
    first: tuple[int, int, int] = (0, 0, 0)

    @property
    def kind(self) -> str:
        return FILE if self.inode is not None else self.entry.kind


@dataclass
class Tree:
    """A merged tree over layers ``0..n-1`` applied to an unknown base below them.

    ``deleted`` and ``opaque`` remember what these layers remove from that base, so a
    subtree can be re-expressed as a layer of its own (with whiteouts) on top of it.
    """

    root: Node = field(default_factory=lambda: Node("", Entry("", DIR, mode=0o755), children={}))
    deleted: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)
    unresolved_links: list[tuple[str, str]] = field(default_factory=list)
    layers: int = 0
    complete: bool = False  # True when the layers start from an empty filesystem

    # -- lookups ----------------------------------------------------------------------------
    def get(self, path: str) -> Node | None:
        node = self.root
        if not path:
            return node
        for part in path.split("/"):
            if node.children is None:
                return None
            nxt = node.children.get(part)
            if nxt is None:
                return None
            node = nxt
        return node

    def walk(self, node: Node | None = None) -> Iterator[Node]:
        """Pre-order, children in sorted byte order; an explicit stack, so that a path
        thousands of directories deep is no deeper for Python than a flat one."""
        stack = [node or self.root]
        while stack:
            node = stack.pop()
            yield node
            if node.children:
                stack.extend(node.children[name] for name in
                             sorted(node.children, key=lambda n: n.encode("utf-8", "surrogateescape"), reverse=True))

    # -- applying layers --------------------------------------------------------------------
    def _parent_for(self, path: str, layer_name: str, create: bool = True,
                    at: tuple[int, int] = (0, 0)) -> Node | None:
        node = self.root
        parts = path.split("/")[:-1]
        done = []
        for depth, part in enumerate(parts):
            done.append(part)
            assert node.children is not None
            nxt = node.children.get(part)
            if nxt is None:
                if not create:
                    return None
                nxt = Node("/".join(done), Entry("/".join(done), DIR, mode=0o755), children={}, implicit=True,
                           first=(*at, depth - len(parts)))
                node.children[part] = nxt
            elif nxt.children is None:
                what = "a symlink" if nxt.kind == SYMLINK else "not a directory"
                raise UnsafeTarEntry(
                    f"{layer_name} places {path!r} beneath {'/'.join(done)!r}, which is {what}; "
                    "writing through it could escape the tree, so the layer is refused"
                )
            node = nxt
        return node

    def _remove(self, path: str) -> None:
        parent = self.get(path.rsplit("/", 1)[0] if "/" in path else "")
        if parent is not None and parent.children is not None:
            parent.children.pop(path.rsplit("/", 1)[-1], None)

    def apply(self, entries: list[Entry], layer_name: str = "layer") -> None:
        index = self.layers
        self.layers += 1
        # Deletions first: they act on the layers below only.
        for e in entries:
            if not e.is_whiteout:
                continue
            parent, name = e.whiteout()
            if name is None:
                node = self.get(parent)
                if node is not None and node.children is not None:
                    node.children.clear()
                self.opaque.add(parent)
                self.deleted = {d for d in self.deleted if not at_or_under(d, parent)}
            else:
                if name in ("", ".", ".."):
                    raise UnsafeTarEntry(f"{layer_name} has a malformed whiteout {e.path!r}")
                target = f"{parent}/{name}" if parent else name
                self._remove(target)
                self.deleted.add(target)
        for seq, e in enumerate(entries):
            if e.is_whiteout:
                continue
            parent = self._parent_for(e.path, layer_name, at=(index, seq))
            assert parent is not None and parent.children is not None
            name = e.path.rsplit("/", 1)[-1]
            old = parent.children.get(name)
            first = old.first if old is not None else (index, seq, 0)
            if e.kind == DIR:
                if old is not None and old.children is not None:
                    old.entry, old.implicit = e, False
                else:
                    parent.children[name] = Node(e.path, e, children={}, first=first)
                continue
            if e.kind == HARDLINK:
                target = self.get(e.linkname)
                if target is None or target.inode is None:
                    # the body lives below this stack (or nowhere): resolved later, or refused
                    self.unresolved_links.append((e.path, e.linkname))
                    parent.children[name] = Node(e.path, e, first=first)
                    continue
                parent.children[name] = Node(e.path, e, inode=target.inode, first=first)
                continue
            inode = Inode(e, index) if e.kind == FILE else None
            parent.children[name] = Node(e.path, e, inode=inode, first=first)


def at_or_under(path: str, top: str) -> bool:
    """``path`` is ``top`` or lies below it (``top`` "" is the root, which holds everything)."""
    return top == "" or path == top or path.startswith(top + "/")


def resolve(tree: Tree, path: str, follow_last: bool = True) -> str | None:
    """Resolve symlinks in ``path`` inside the tree the way ``COPY`` resolves its source.

    Absolute link targets are taken relative to the tree's root, and ``..`` never climbs
    above it (as in a chroot). Returns the real path, or None if it does not exist.
    """
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        cand = "/".join([*done, part])
        node = tree.get(cand)
        if node is None:
            return None
        if node.kind == SYMLINK and (parts or follow_last):
            hops += 1
            if hops > 40:
                return None
            target = node.entry.linkname
            new = [p for p in target.split("/") if p]
            if target.startswith("/"):
                done = []
            parts = new + parts
            continue
        done.append(part)
    return "/".join(done)
