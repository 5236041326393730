"""The OCI layer changeset model: what one entry of a layer says, whiteouts and all.

An image-spec layer is a changeset: entries that add or replace files, and whiteout
entries (``.wh.NAME``, and the opaque marker ``.wh..wh..opq``) that delete what lower
layers hold. Every layer of the code speaks in these records: the tar reader produces them,
the store keeps them as a layer's index, the tree merges them and the writer emits them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ociassemble.errors import UnsafeTarEntry

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

FILE, DIR, SYMLINK, HARDLINK, CHAR, BLOCK, FIFO = "file", "dir", "symlink", "hardlink", "char", "block", "fifo"
@dataclass(slots=True)
class Entry:
    path: str
    kind: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: float = 0
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = field(default_factory=dict)
    content: str | None = None  # spool digest of the body, when captured

    @property
    def is_whiteout(self) -> bool:
        return self.path.rsplit("/", 1)[-1].startswith(WHITEOUT)

    def whiteout(self) -> tuple[str, str | None]:
        """For a whiteout entry: (its directory, the name it deletes there, or None for an
        opaque marker, which hides everything below the directory)."""
        parent, _, base = self.path.rpartition("/")
        return parent, None if base == OPAQUE else base[len(WHITEOUT):]


def normalise(name: str, what: str = "layer entry") -> str:
    """Relative, slash-separated, without ``.`` parts or trailing slash; ``..`` is refused."""
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise UnsafeTarEntry(
                f"{what} {name!r} climbs out of the root with '..'; the layer is hostile or "
                "corrupt and will not be used"
            )
        parts.append(part)
    return "/".join(parts)


def sort_key(path: str) -> tuple[bytes, ...]:
    """Tree order: a directory's children directly follow it, components compared as bytes."""
    return tuple(path.encode("utf-8", "surrogateescape").split(b"/")) if path else ()
