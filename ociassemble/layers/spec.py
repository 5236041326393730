"""What to build, independent of where the bytes come from: the engine's input.

A :class:`Recipe` says which trees of which source image become which new layers, which
environment and labels the config gains, and how the result is described. Front ends
(the Triton preset) produce recipes; :mod:`ociassemble.assemble` carries them out.
"""

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


@dataclass
class Recipe:
    layers: list[LayerSpec]
    env: list[tuple[str, str]]  # applied in order, with ${VAR} expansion like Dockerfile ENV
    labels: dict[str, str]
    entrypoint: list[str] | None = None
    dockerfile: str = ""

    def wanted_prefixes(self, image: str) -> list[str]:
        return sorted({c.src.strip("/") for spec in self.layers for c in spec.copies if c.image == image})
