"""What one new layer holds: trees copied from named sources, directories it makes,
opaque markers. The layer writer and the speculative writer read these;
:class:`ociassemble.engine.recipe.Recipe` lists them with the config changes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TreeCopy:
    """``COPY --from=<image> src dest``: src is resolved like COPY resolves symlinks."""

    src: str
    dest: str
    required: bool = True
    image: str = "full"
    owner: tuple[int, int] | None = None  # --chown: every copied entry's uid:gid
    mode: int | None = None  # --chmod: every copied entry's permission bits


@dataclass(frozen=True)
class OwnedDir:
    """A directory the new layer writes itself (created by the build, not copied)."""

    path: str
    uid: int = 0
    gid: int = 0
    mode: int = 0o755


@dataclass(frozen=True)
class LocalAdd:
    """Local content copied to DEST (an image path, relative): ``compose --add SRC:DEST``, or
    one source of a build's ``COPY``/``ADD`` from the context."""

    key: str  # the name of its tree among the sources ("add0", "context0", ...)
    src: str  # the path on this machine
    dest: str
    uid: int = 0
    gid: int = 0
    chown: bool = False  # --add-chown was given (Dockerfile.compose then says --chown)
    extract: bool = False  # a tar file extracted into DEST (ADD), not copied as a file
    context: str = ""  # the build context it lies in ("": none); .dockerignore is relative to it
    ignore: tuple[str, ...] = ()  # .dockerignore patterns of that context

    @property
    def copy_line(self) -> str:
        """The Dockerfile line that makes the same layer (compose writes it into Dockerfile.compose)."""
        chown = f"--chown={self.uid}:{self.gid} " if self.chown else ""
        paths = f"{self.src} /{self.dest}"
        if not re.fullmatch(r"[A-Za-z0-9_./+@%:,=-]+ [A-Za-z0-9_./+@%:,=-]+", paths):
            paths = json.dumps([self.src, "/" + self.dest])  # the JSON form: no word processing
        return f"{'ADD' if self.extract else 'COPY'} {chown}{paths}"


@dataclass
class LayerSpec:
    name: str
    copies: list[TreeCopy]
    opaque: list[str] = field(default_factory=list)  # "rm -fr dir/*" before this layer
    dirs: list[OwnedDir] = field(default_factory=list)
    component: str = ""  # what the shared-library check calls it (default: the name)
