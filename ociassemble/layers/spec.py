"""What one new layer holds: trees copied from named sources, directories it makes,
opaque markers. The layer writer and the speculative writer read these;
:class:`ociassemble.engine.recipe.Recipe` lists them with the config changes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TreeCopy:
    """``COPY --from=<image> src dest``: src is resolved like COPY resolves symlinks."""

    src: str
    dest: str
    required: bool = True
    image: str = "full"


@dataclass(frozen=True)
class OwnedDir:
    """A directory the new layer writes itself (created by the build, not copied)."""

    path: str
    uid: int = 0
    gid: int = 0
    mode: int = 0o755


@dataclass(frozen=True)
class LocalAdd:
    """``compose --add SRC:DEST``: local content copied to DEST (an image path, relative)."""

    key: str  # the name of its tree among the sources ("add0", ...)
    src: str  # as the user gave it
    dest: str
    uid: int = 0
    gid: int = 0
    chown: bool = False  # --add-chown was given (Dockerfile.compose then says --chown)

    @property
    def copy_line(self) -> str:
        chown = f"--chown={self.uid}:{self.gid} " if self.chown else ""
        return f"COPY {chown}{self.src} /{self.dest}"


@dataclass
class LayerSpec:
    name: str
    copies: list[TreeCopy]
    opaque: list[str] = field(default_factory=list)  # "rm -fr dir/*" before this layer
    dirs: list[OwnedDir] = field(default_factory=list)
    optional: bool = False  # drop the layer when it would be empty

    local: LocalAdd | None = None  # the layer of one --add

    @property
    def created_by(self) -> str:
        if self.local is not None:
            return "ociassemble: " + self.local.copy_line
        return "ociassemble: " + "; ".join(f"COPY --from={c.image} {c.src} {c.dest}" for c in self.copies)
