"""Whole-file writes that readers see complete or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, dir_mode: int = 0o777) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place.

    The file is private (0600, as ``mkstemp`` creates it): credentials rely on that.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
