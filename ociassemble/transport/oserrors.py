"""The operating system's refusals (a full disk, a read-only file system, a file where a
folder should be) as one line that names the place, what failed and what to do.

:func:`local_error` is the one translation: the library's boundary (``compose``) and the
CLI's call it with the places of the run (output layout, work dir, store, auth file), so
that an ``OSError`` never reaches the user as a traceback. Errors of the network
(``ConnectionError``, TLS) are not the file system's and are left alone.
"""

from __future__ import annotations

import errno
import os
import re
import ssl
from pathlib import Path

from ociassemble.errors import OciAssembleError


class LocalFileError(OciAssembleError):
    """A local file or folder the run needs cannot be written or read."""


# what failed, as the user would say it
_PROBLEM = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "is not a directory",
    errno.EISDIR: "is a directory, not a file",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EEXIST: "already exists",
    errno.ENOENT: "does not exist",
    errno.EIO: "input/output error (a failing disk?)",
    errno.ENAMETOOLONG: "file name too long",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files in the system",
    errno.ENOTEMPTY: "directory not empty",
    errno.EXDEV: "crosses file systems",
    errno.ESTALE: "stale file handle (a network file system?)",
    errno.ENOLCK: "no locks available (a network file system without its lock service?)",
}
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


# role -> (what the place is called, how to choose another one, what else there is)
ROLES = {
    "output": ("output layout", "choose another --output-name", ""),
    "work": ("work dir", "pass another --work-dir", ""),
    "store": ("store", "pass another --store-dir", " (or --no-store)"),
    "store-dir": ("store", "pass another --store-dir", ""),  # the store commands: no --no-store there
    "authfile": ("auth file", "pass another --authfile", ""),
}
_TEMPORARY = re.compile(r"\.part-.*|ociassemble-[a-z0-9_]{8}")  # names that say nothing to the user


def is_local(e: BaseException) -> bool:
    """An ``OSError`` of the file system (not of the network, not one without an errno)."""
    if not isinstance(e, OSError) or isinstance(e, (ssl.SSLError, ConnectionError, TimeoutError)):
        return False
    if type(e).__module__.split(".")[0] in ("requests", "urllib3", "socket"):
        return False
    return e.errno in _PROBLEM


def _show(path: object) -> str:
    s = str(path)
    return s if s.isprintable() else s.encode("unicode_escape", "backslashreplace").decode("ascii")


def _within(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` ("" for root itself), or None when outside it."""
    for p, r in ((os.path.abspath(path), os.path.abspath(root)), (os.path.realpath(path), os.path.realpath(root))):
        if p == r:
            return ""
        if p.startswith(r.rstrip("/") + "/"):
            return p[len(r.rstrip("/")) + 1:]
    return None


def _file_in_the_way(path: str) -> str | None:
    """The first ancestor of ``path`` (or itself) that exists and is not a directory."""
    p = Path(os.path.abspath(path))
    for a in [*reversed(p.parents), p]:
        if os.path.lexists(a) and not a.is_dir():
            return str(a)
    return None


def local_error(e: OSError, places: dict[str, Path | str | None] | None = None,
                fallback: str | None = None) -> LocalFileError:
    """``e`` as one line. ``places`` maps roles (see :data:`ROLES`) to their paths: the error's
    path is named as part of the place that holds it, with that place's remedy. An error
    without a path is put at ``fallback`` (a role) when it is a full disk (writes report no
    file name)."""
    places = {k: v for k, v in (places or {}).items() if v is not None}
    problem = _PROBLEM.get(e.errno or 0) or (e.strerror or str(e)).lower()
    filename = e.filename if e.filename is not None else None
    if filename is not None and _TEMPORARY.fullmatch(os.path.basename(str(filename))):
        filename = os.path.dirname(str(filename))  # a temporary file's name says nothing: its folder does
    role, rel = None, None
    if filename is not None:
        # the most specific place holding the path (the output may lie inside the work dir)
        best = -1
        for r, root in places.items():
            within = _within(str(filename), str(root))
            if within is not None and len(str(root)) > best:
                role, rel, best = r, within, len(str(root))
    elif fallback in places and e.errno in _FULL:
        role, rel = fallback, None
    blocker = (_file_in_the_way(str(filename))
               if e.errno in (errno.ENOTDIR, errno.EEXIST) and filename is not None else None)
    if blocker is not None:
        problem = f"{_show(blocker)} is a file, not a directory"
    if role is not None:
        label, other, extra = ROLES[role]
        where = f"{label} {_show(places[role])}"
        if blocker is not None:
            detail = ""
        elif rel:
            detail = f" (at {_show(rel)})"
        elif rel is None and filename is None:
            detail = " (writing its temporary files)"
        else:
            detail = ""
    else:
        where = _show(filename) if filename is not None else "a local file"
        other, extra, detail = "choose another location", "", ""
    if e.errno in _FULL:
        remedy = f"free space there or {other}{extra}"
    elif e.errno == errno.EROFS:
        remedy = f"{other} on a writable file system{extra}" if role else "choose a writable location"
    elif e.errno in (errno.EACCES, errno.EPERM):
        remedy = f"fix its permissions or {other}{extra}"
    elif e.errno in (errno.EMFILE, errno.ENFILE):
        remedy = "raise the open-file limit (ulimit -n) or lower --jobs"
    elif e.errno == errno.EIO:
        remedy = f"check the disk (dmesg), or {other}{extra}"
    else:
        remedy = f"{other}{extra}"
    return LocalFileError(f"{where}: {problem}{detail}; {remedy}")


def check_writable_dir(path: Path, places: dict[str, Path | str | None]) -> None:
    """Fail now, before any work, when ``path`` (a folder, created later if missing) could
    not be written: a file in the way, a read-only file system, no permission. Touches nothing."""
    p = Path(os.path.abspath(path))
    for a in [p, *p.parents]:
        if not os.path.lexists(a):
            continue
        if not a.is_dir():
            raise local_error(NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)), places)
        try:
            ro = bool(os.statvfs(a).f_flag & os.ST_RDONLY)
        except OSError:
            ro = False
        if ro:
            raise local_error(OSError(errno.EROFS, os.strerror(errno.EROFS), str(path)), places)
        if not os.access(a, os.W_OK | os.X_OK):
            raise local_error(PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path)), places)
        return
