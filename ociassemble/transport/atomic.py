"""Whole-file writes that readers see complete or not at all, and the locks that tell a
temporary file or scratch folder of a live process from one a killed process left behind.

A temporary file (``.part-*``) is created and then locked with ``flock`` for as long as it
is written, until it is renamed into place; a scratch folder (``ociassemble-*``) holds a
lock file locked for the whole run. The kernel drops those locks when the process ends,
however it ends, so whatever can be locked by someone else is a leftover: later runs
remove it (:func:`remove_stale_parts`, :func:`remove_stale_scratch`). There is no age
limit and no pid file; a process on another machine sharing the folder over NFS holds its
locks there too.

Between creating a file and locking it, a cleaner may take it for a leftover and delete
it: the creator checks, once it holds the lock, that the name still leads to its file, and
starts again if not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PART_PREFIX = ".part-"
SCRATCH_PREFIX = "ociassemble-"
SCRATCH_LOCK = ".ociassemble-scratch.lock"
_SCRATCH_NAME = re.compile(r"ociassemble-[a-z0-9_]{8}")  # what tempfile.mkdtemp makes, nothing else
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def flock(fd: int, op: int) -> bool:
    """``fcntl.flock``; False on a file system that has no locks (some FUSE and NFS set-ups):
    then nothing is held, and cleaners, unable to lock either, leave such files alone."""
    try:
        fcntl.flock(fd, op)
        return True
    except OSError as e:
        if e.errno in _NO_LOCKS:
            return False
        raise


@contextmanager
def name_write_errors(path: Path | str) -> Iterator[None]:
    """A full disk reports no file name: give such errors raised in the block ``path``."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno in _WRITE_ERRNOS:
            e.filename = str(path)
        raise


def _same_file(path: Path | str, fd: int) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


@contextmanager
def part_file(directory: Path) -> Iterator[tuple[int, Path]]:
    """A new ``.part-*`` file in ``directory``, locked while the block runs (an open
    descriptor and its path); removed at the end unless the block renamed it away."""
    while True:
        fd, name = tempfile.mkstemp(dir=directory, prefix=PART_PREFIX)
        flock(fd, fcntl.LOCK_EX)
        if _same_file(name, fd):
            break
        os.close(fd)  # removed as a leftover in the instant before the lock: take another
    try:
        with name_write_errors(name):
            yield fd, Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            if _same_file(name, fd):
                os.unlink(name)
        os.close(fd)


def write_atomically(path: Path, data: bytes, dir_mode: int = 0o777) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place.

    The file is private (0600, as ``mkstemp`` creates it): credentials rely on that.
    An error names ``path`` (not the temporary file).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
        with part_file(path.parent) as (fd, tmp):
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(data)
            os.replace(tmp, path)
    except OSError as e:
        if e.filename is None or os.path.basename(str(e.filename)).startswith(PART_PREFIX):
            e.filename = str(path)
        raise


def _lock_free(path: Path | str) -> tuple[int, bool] | None:
    """Open ``path`` and try its lock: (descriptor, whether it was free); None if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by a live process (EWOULDBLOCK), or a lock the file system refuses
        return fd, False
    return fd, True


def stale_parts(directory: Path, remove: bool = False) -> list[tuple[Path, int]]:
    """``.part-*`` files in ``directory`` that no live process holds, with their sizes;
    with ``remove``, those removed."""
    found: list[tuple[Path, int]] = []
    for p in _parts(directory):
        got = _lock_free(p)
        if got is None:
            continue
        fd, free = got
        try:
            if not free:
                continue
            if not remove:
                found.append((p, os.fstat(fd).st_size))
            elif _same_file(p, fd):  # still that file under that name, and ours to drop
                size = os.fstat(fd).st_size
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
                    found.append((p, size))
        finally:
            os.close(fd)
    return found


def remove_stale_parts(directory: Path) -> list[tuple[Path, int]]:
    """Remove the ``.part-*`` files in ``directory`` that no live process holds."""
    return stale_parts(directory, remove=True)


def _parts(directory: Path) -> list[Path]:
    try:
        with os.scandir(directory) as it:
            return [Path(e.path) for e in it
                    if e.name.startswith(PART_PREFIX) and e.is_file(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


@contextmanager
def scratch_dir(parent: Path) -> Iterator[Path]:
    """A new ``ociassemble-*`` folder in ``parent`` for this run, locked while the block
    runs and removed with everything in it at the end."""
    while True:
        d = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=parent))
        try:
            fd = os.open(d / SCRATCH_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            continue  # removed as a leftover in the instant before the lock: make another
        flock(fd, fcntl.LOCK_EX)
        if _same_file(d / SCRATCH_LOCK, fd):
            break
        os.close(fd)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
        os.close(fd)


def remove_stale_scratch(parent: Path) -> list[Path]:
    """Remove the scratch folders in ``parent`` that no live process holds.

    Only folders named exactly as :func:`scratch_dir` names them count, and only when
    their lock file is there and free, or when they are empty (a run killed before it
    made its lock): nothing else in the folder (by default the current directory) is
    touched.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for e in entries:
        if not _SCRATCH_NAME.fullmatch(e.name) or not e.is_dir(follow_symlinks=False):
            continue
        d = Path(e.path)
        got = _lock_free(d / SCRATCH_LOCK)
        if got is None:
            with contextlib.suppress(OSError):  # not empty: not ours to judge
                d.rmdir()
                removed.append(d)
            continue
        fd, free = got
        try:
            if free and _same_file(d / SCRATCH_LOCK, fd):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
        finally:
            os.close(fd)
    return removed


@contextmanager
def locked(path: Path, shared: bool = False) -> Iterator[int]:
    """An ``flock`` on the file ``path`` (created if missing) while the block runs."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)
