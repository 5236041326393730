"""Local content as a source: ``compose --add SRC:DEST`` (the seed's custom backends).

A directory, a file or a tar file on this machine becomes a merged tree like the ones read
from images, so the engine copies it into a layer of its own with everything it already
does for image trees (entry order, hardlink groups, deterministic tar, records for
``--verify``). What makes it reproducible on any machine: entries sorted by name, every
mtime set to the image's ``created`` time (a checkout's mtimes are the time of the checkout),
and owner 0:0 unless ``--add-chown`` says otherwise, so that the same content gives the
same layer digest wherever it is composed.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import posixpath
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ociassemble.errors import UsageError
from ociassemble.layers.compression import open_decompressed
from ociassemble.layers.spec import LocalAdd
from ociassemble.layers.spool import Spool
from ociassemble.layers.tarscan import scan_layer
from ociassemble.layers.tree import Tree
from ociassemble.oci.changeset import DIR, FILE, HARDLINK, SYMLINK, Entry
from ociassemble.oci.digest import HashingReader
from ociassemble.text import printable

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd", ".tar.bz2", ".tar.xz")
READ = 1 << 20


def parse_adds(specs: list[str], chown: str | None) -> list[LocalAdd]:
    """``SRC:DEST`` items (DEST absolute; the last ``:/`` splits them, so SRC may hold ``:``)."""
    owner = (0, 0)
    if chown is not None:
        uid, sep, gid = chown.partition(":")
        if not uid.isdigit() or (sep and not gid.isdigit()):
            raise UsageError(f"--add-chown {printable(chown)!s} must be UID[:GID] in numbers, e.g. 1000:1000")
        owner = (int(uid), int(gid) if sep else int(uid))
    adds = []
    for k, item in enumerate(specs):
        at = item.rfind(":/")
        if at <= 0:
            raise UsageError(f"--add {printable(item)} must be SRC:DEST with DEST an absolute path in the image, "
                             "e.g. ./mybackend:/opt/tritonserver/backends/mybackend")
        src, dest = item[:at], item[at + 1:]
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in item):
            raise UsageError(f"--add {printable(item)} holds a control character; Dockerfile.compose cannot name it")
        parts = [p for p in dest.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise UsageError(f"--add destination {printable(dest)} must name a path below / without . or ..")
        path = Path(src)
        if not path.exists():
            raise UsageError(f"--add source {printable(src)} does not exist")
        if not (path.is_dir() or path.is_file()):
            raise UsageError(f"--add source {printable(src)} is neither a directory nor a file")
        into = "/".join(parts)
        if path.is_file() and not src.endswith(TAR_SUFFIXES) and dest.endswith("/"):
            into = f"{into}/{path.name}"
        adds.append(LocalAdd(key=f"add{k}", src=src, dest=into, uid=owner[0], gid=owner[1],
                             chown=chown is not None, extract=path.is_file() and src.endswith(TAR_SUFFIXES)))
    return adds


def _walk(root: Path) -> list[tuple[str, os.stat_result]]:
    """Every path below ``root`` (relative) with its lstat, parents before children, names
    compared as bytes; an explicit stack, as for image trees, so depth costs no recursion."""
    found: list[tuple[str, os.stat_result]] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        for name in os.listdir(root / rel if rel else root):
            child = f"{rel}/{name}" if rel else name
            st = os.lstat(root / child)
            found.append((child, st))
            if stat.S_ISDIR(st.st_mode):
                stack.append(child)
    return sorted(found, key=lambda item: item[0].encode("utf-8", "surrogateescape").split(b"/"))


def _under(dest: str, rel: str) -> str:
    return f"{dest}/{rel}" if dest else rel


def _is_tar(add: LocalAdd) -> bool:
    return add.extract and Path(add.src).is_file()


def _kept(add: LocalAdd) -> Callable[[str], bool]:
    """Whether a path below ``add.src`` (relative to it) is part of the build context."""
    if not add.ignore:
        return lambda _rel: True
    rules = Ignore.parse(add.ignore)
    base = os.path.relpath(os.path.realpath(add.src), os.path.realpath(add.context)).replace(os.sep, "/")
    prefix = "" if base == "." else base + "/"
    return lambda rel: not rules.excluded(prefix + rel)


def _entries(add: LocalAdd, mtime: int, spool: Spool | None, digests: list[str]) -> list[Entry]:
    """The entries a directory or file ``add`` puts into the image, at their image paths.
    With ``spool`` the bodies are kept there; ``digests`` collects each body's sha256."""
    src = Path(add.src)
    out: list[Entry] = []
    if src.is_file():  # a symlink to a file as the source itself: its target, as COPY does
        out.append(_entry(add, add.dest, src, os.stat(src), mtime, spool, digests))
        return out
    if add.dest:  # into / : the root is not an entry
        out.append(_entry(add, add.dest, src, os.stat(src), mtime, spool, digests))
    kept = _kept(add)
    for rel, st in _walk(src):
        if kept(rel):
            out.append(_entry(add, _under(add.dest, rel), src / rel, st, mtime, spool, digests))
    return out


def _entry(add: LocalAdd, path: str, real: Path, st: os.stat_result, mtime: int, spool: Spool | None,
           digests: list[str]) -> Entry:
    mode = stat.S_IMODE(st.st_mode)
    e = Entry(path, DIR, mode=mode, uid=add.uid, gid=add.gid, mtime=mtime)
    if stat.S_ISDIR(st.st_mode):
        return e
    if stat.S_ISLNK(st.st_mode):
        e.kind, e.mode, e.linkname = SYMLINK, 0o777, os.readlink(real)
        digests.append(f"link:{e.linkname}")
        return e
    if not stat.S_ISREG(st.st_mode):
        if spool is None:  # fingerprinting: named by its type
            digests.append(f"special:{stat.S_IFMT(st.st_mode):o}")
            return e
        raise UsageError(f"{printable(str(real))} is not a file, directory or symlink; an image layer from local "
                         "content holds only those")
    e.kind, e.size = FILE, st.st_size
    with open(real, "rb") as f:
        reader = HashingReader(f)
        if spool is not None:
            e.content = spool.put(reader, st.st_size)
        else:
            while reader.read(READ):
                pass
    if reader.size != st.st_size:
        raise UsageError(f"--add source {printable(str(real))} changed while it was read; run again")
    digests.append(reader.hash.hexdigest())
    return e


def _tar_entries(add: LocalAdd, mtime: int, spool: Spool) -> list[Entry]:
    """A local tar file is extracted into DEST, as Dockerfile's ADD does, its entries read
    by the same reader as image layers (hostile names refused)."""
    label = f"tar file {printable(add.src)}"
    with open(add.src, "rb") as raw:
        head = raw.read(6)
        raw.seek(0)
        # gzip, zstd and plain as layers are; bzip2 and xz too, as ADD extracts them
        stream = (bz2.BZ2File(raw) if head.startswith(b"BZh") else
                  lzma.LZMAFile(raw) if head.startswith(b"\xfd7zXZ\x00") else open_decompressed(raw))
        entries = scan_layer(stream, lambda _p: True, spool, label)
    out = [Entry(add.dest, DIR, mode=0o755, uid=add.uid, gid=add.gid, mtime=mtime)] if add.dest else []
    for e in entries:
        if e.is_whiteout:
            raise UsageError(f"{label} holds a whiteout {printable(e.path)}; a tar to extract cannot delete")
        e.path = _under(add.dest, e.path)
        if e.kind == HARDLINK:
            e.linkname = _under(add.dest, e.linkname)
        e.uid, e.gid, e.uname, e.gname, e.mtime = add.uid, add.gid, "", "", mtime
        out.append(e)
    return out


def fingerprint(adds: list[LocalAdd]) -> list[str]:
    """What the memo must know of the local content: every entry's name, type, mode, link
    and body sha256 (mtimes and owners are fixed by the options); a tar file, its bytes."""
    out = []
    for add in adds:
        h = hashlib.sha256(f"{add.dest}\n{add.uid}:{add.gid}\n{add.extract}\n".encode("utf-8", "surrogateescape"))
        if _is_tar(add):
            with open(add.src, "rb") as f:
                while data := f.read(READ):
                    h.update(data)
        else:
            digests: list[str] = []
            for e in _entries(add, 0, None, digests):
                h.update(f"{e.path}:{e.kind}:{e.mode:o}:{e.size}:{e.linkname}\n".encode("utf-8", "surrogateescape"))
            h.update("\n".join(digests).encode("utf-8", "surrogateescape"))
        out.append(h.hexdigest())
    return out


def local_tree(add: LocalAdd, mtime: int, spool: Spool) -> Tree:
    """The content of one ``--add`` as a complete merged tree, bodies in the spool."""
    tree = Tree()
    entries = _tar_entries(add, mtime, spool) if _is_tar(add) else _entries(add, mtime, spool, [])
    tree.apply(entries, f"--add {printable(add.src)}")
    tree.complete = True
    return tree


# -- .dockerignore ----------------------------------------------------------------------------------

@dataclass
class Ignore:
    """``.dockerignore`` rules (moby's patternmatcher): Go ``filepath.Match`` patterns with
    ``**``, relative to the context root, matching a path or any of its parents; a later
    ``!pattern`` re-includes what an earlier one excluded."""

    rules: list[tuple[bool, re.Pattern[str]]] = field(default_factory=list)
    lines: tuple[str, ...] = ()

    @classmethod
    def read(cls, context: Path) -> Ignore:
        f = context / ".dockerignore"
        if not f.is_file():
            return cls()
        return cls.parse(tuple(f.read_text(encoding="utf-8", errors="surrogateescape").splitlines()))

    @classmethod
    def parse(cls, lines: tuple[str, ...]) -> Ignore:
        rules = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = posixpath.normpath(line[1:].strip() if negate else line).lstrip("/")
            if pattern in ("", "."):
                continue
            rules.append((negate, re.compile(_translate(pattern))))
        return cls(rules, tuple(lines))

    def excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        out = False
        for negate, rx in self.rules:
            if any(rx.fullmatch("/".join(parts[:k])) for k in range(1, len(parts) + 1)):
                out = not negate
        return out


def _translate(pattern: str) -> str:
    """A ``.dockerignore`` pattern as a regular expression over slash-separated paths:
    ``**`` any number of components, the rest Go's ``filepath.Match`` per component."""
    out = []
    for k, part in enumerate(pattern.split("/")):
        sep = "/" if k else ""
        if part == "**":
            out.append(f"(?:{sep}.*)?" if k else "(?:.*)?")
            continue
        out.append(sep + _component(part))
    return "".join(out).replace("(?:.*)?/", "(?:.*/)?")


def _component(part: str) -> str:
    """Go's filepath.Match syntax: ``*`` and ``?`` never match ``/``, ``[^...]`` negates a
    class, a backslash makes the next character literal."""
    out: list[str] = []
    i = 0
    while i < len(part):
        c = part[i]
        if c == "\\" and i + 1 < len(part):
            out.append(re.escape(part[i + 1]))
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := part.find("]", i + 2)) > 0:
            body = part[i + 1:end]
            neg = body.startswith("^")
            body = body[1:] if neg else body
            out.append("[" + ("^/" if neg else "") + body.replace("\\", "\\\\").replace("[", "\\[") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)
