"""The shared-library check: would the dynamic loader find every ``DT_NEEDED`` in the image?

Missing shared libraries are what users of hand-made Triton images hit most (libre2,
libucs, CUDA libraries on CPU-only images), and they show only when a backend is loaded.
This module answers the question without running anything: for every ELF file the checked
layers hold, each ``DT_NEEDED`` is looked up the way glibc's ``ld.so`` looks it up, in the
image's *merged* filesystem (later layers win, whiteouts and opaque directories honoured,
symlinks followed inside the image, never on the host):

1. a name with a ``/`` is a path (relative ones against the image's ``WorkingDir``);
2. ``DT_RPATH`` of the file, then of the executable that loads it, when the file has no
   ``DT_RUNPATH`` (glibc drops ``DT_RPATH`` wherever ``DT_RUNPATH`` is present);
3. the config's ``LD_LIBRARY_PATH``;
4. the file's own ``DT_RUNPATH``;
5. the directories of ``/etc/ld.so.conf`` and ``/etc/ld.so.conf.d/*.conf`` (``include``
   globs followed), read from the image's own files: this stands for ``ld.so.cache``,
   which ``ldconfig`` builds from them;
6. the default directories for the file's architecture.

``$ORIGIN``/``${ORIGIN}`` expand to the directory of the file, ``$LIB`` to Debian's
``lib/<triplet>``, ``$PLATFORM`` to the machine name; other ``$`` tokens stay literal (as
glibc leaves them) and are named in the report's notes. A candidate counts only if it is
a regular file after symlinks and, where its ELF header was read, of the needing file's
class, byte order and machine (the loader skips others and searches on). The loader's
own names (``ld-linux*``, ``linux-vdso``) are never missing; with an NVIDIA runtime
(``NVIDIA_VISIBLE_DEVICES`` or ``CUDA_VERSION`` in the config) the driver libraries the
container toolkit mounts at run time (``libcuda.so.1``...) are noted, not reported.

Executables and plugins: a library is loaded by some process. Checked files with
``PT_INTERP`` and no ``DT_SONAME`` are executables; their dependencies are walked
breadth-first as the loader does, with each object's ``DT_RPATH`` applying to what it
loads. A shared library is then fine when its need is found on its own search path, or is
a library one of those executables already loads (``ld.so`` matches loaded objects by
name before searching: Triton's backends need ``libtritonserver.so``, which
``tritonserver`` has loaded), or, when it has no ``DT_RUNPATH``, on such an executable's
``DT_RPATH``. This is lenient where it cannot know which process loads a plugin.

Where the facts come from: the checked layers are read whole (ELF bodies streamed into
temporary files only as far as their dynamic segments, see :mod:`ociassemble.layers.elf`). Every
other layer is needed for its file list only, plus the bodies of ``/etc/ld.so.conf*`` and
the ELF headers of its files; its list comes from the store's index (and those bodies and
headers from a small record this module keeps beside it, ``libcheck/<digest>.json``), or
the layer is read once, verified like every other read (blob digest and diff_id), and
both are kept for the next run.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fnmatch
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ociassemble.engine.assemble import NewLayer, biggest_first, layer_index_of, scan_layers
from ociassemble.errors import OciAssembleError, UsageError
from ociassemble.layers.compression import open_decompressed, read_exact
from ociassemble.layers.elf import ElfFacts, read_facts
from ociassemble.layers.layerindex import SPACING, LayerIndex, entries_copy, read_bodies
from ociassemble.layers.spool import Spool
from ociassemble.layers.tarscan import scan_layer
from ociassemble.layers.tree import Node, Tree, at_or_under, resolve
from ociassemble.layers.write import WrittenLayer
from ociassemble.oci import model
from ociassemble.oci.changeset import FILE, HARDLINK, Entry, normalise
from ociassemble.oci.model import Descriptor
from ociassemble.progress import CountingReader, NullProgress, Progress
from ociassemble.transport.atomic import write_atomically
from ociassemble.transport.source import ResolvedImage
from ociassemble.transport.store import Store

Log = Callable[[str], None]
MODES = ("warn", "error", "off")
EXIT_MISSING = 3  # check-libs, and compose --check-libs=error: a library is missing or an ELF file unreadable

CONF = "etc/ld.so.conf"
CONF_DIR = "etc/ld.so.conf.d"
CONF_MAX = 1 << 20  # a bigger "config" is not one; it is noted and not read
SIDECAR_VERSION = 1
MAX_CLOSURE = 4096  # objects walked per executable at most
WARN_LINES = 20

_BUILTIN = re.compile(r"(ld-linux[\w.-]*|ld64|ld|linux-vdso[\w.-]*|linux-gate)\.so(\.\d+)*")
# what the NVIDIA container toolkit mounts from the host driver when a container starts
DRIVER_LIBS = frozenset({
    "libcuda.so.1", "libcuda.so", "libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1", "libnvidia-nvvm.so.4",
    "libcudadebugger.so.1", "libnvidia-opencl.so.1", "libnvidia-cfg.so.1", "libnvidia-encode.so.1",
    "libnvcuvid.so.1", "libnvidia-fbc.so.1", "libnvidia-allocator.so.1", "libnvidia-gpucomp.so.1",
})
_DRIVER_ENV = ("NVIDIA_VISIBLE_DEVICES", "CUDA_VERSION")
# e_machine and class -> Debian multiarch triplet and $PLATFORM
_ARCH = {
    ("EM_X86_64", 64): ("x86_64-linux-gnu", "x86_64"),
    ("EM_AARCH64", 64): ("aarch64-linux-gnu", "aarch64"),
    ("EM_386", 32): ("i386-linux-gnu", "i686"),
    ("EM_ARM", 32): ("arm-linux-gnueabihf", "armv7l"),
    ("EM_PPC64", 64): ("powerpc64le-linux-gnu", "ppc64le"),
    ("EM_S390", 64): ("s390x-linux-gnu", "s390x"),
    ("EM_RISCV", 64): ("riscv64-linux-gnu", "riscv64"),
}
_DST = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?=/|$))")


class LibrariesMissing(OciAssembleError):
    """The image would fail to load some of its own ELF files."""

    exit_code = EXIT_MISSING


def shown(text: str) -> str:
    """Image content (names, paths) for a terminal: quoted and escaped like ``repr``, so a
    control character in a file name cannot rewrite the user's screen or log."""
    return repr(text)


def _label(text: str) -> str:
    return text if text.isprintable() else repr(text)


def _under_any(path: str, tops: Iterable[str]) -> bool:
    return any(at_or_under(path, t) for t in tops)


def is_conf(path: str) -> bool:
    return path == CONF or path.startswith(CONF_DIR + "/")


def _skipped(path: str) -> bool:
    """Separate debug files keep the program headers of the stripped file they belong to
    but not its segments: read as libraries they would all look corrupt."""
    return path.startswith("usr/lib/debug/") or path.endswith(".debug")


# -- reading layers ------------------------------------------------------------------------

@dataclass
class LayerInput:
    """One layer of the image being checked, in stack order.

    A source layer (``image`` and ``index``) is read through its source, which verifies
    the blob; a new layer of compose (``written``) is read from the scratch directory it was
    just written to. ``checked`` are the path prefixes whose ELF files are checked (and so
    read whole; ``""`` = every file); ``component`` names the layer in the report."""

    label: str
    size: int
    image: ResolvedImage | None = None
    index: int = -1
    written: WrittenLayer | None = None
    checked: tuple[str, ...] = ()
    component: str = ""

    @property
    def digest(self) -> str:
        if self.image is not None:
            return self.image.manifest.layers[self.index].digest
        assert self.written is not None
        return self.written.digest


@dataclass
class LayerFacts:
    entries: list[Entry]
    elf: dict[str, ElfFacts]  # path in the layer -> what was read of it
    conf: dict[str, bytes]  # ld.so.conf bodies
    how: str  # read | index | index+record | layer index | foreign
    notes: list[str] = field(default_factory=list)
    # a layer with a full layer index: the files not read yet (path -> entry position), each
    # read through the index once the loader looks it up (see :func:`analyse_reading`)
    pending: dict[str, int] = field(default_factory=dict)
    index: LayerIndex | None = None
    layer: LayerInput | None = None


class _Probe(Spool):
    """What :func:`~ociassemble.layers.tarscan.scan_layer` hands bodies to, in place of a spool.

    Nothing is kept: ``put`` reads what the check needs from the body as it streams by
    (a config's text, an ELF file's loader facts) and the reader skips the rest. ``want``
    is the scan's predicate and notes which entry the next ``put`` belongs to; each layer
    has its own probe, read by one thread."""

    def __init__(self, tmp: Path, checked: tuple[str, ...]):
        super().__init__(tmp)
        self.checked = checked
        self.elf: dict[str, ElfFacts] = {}
        self.conf: dict[str, bytes] = {}
        self.notes: list[str] = []
        self._path = ""

    def want(self, path: str) -> bool:
        self._path = path
        return True

    def put(self, src: Any, size: int) -> str:
        path = self._path
        if is_conf(path):
            if size <= CONF_MAX:
                self.conf[path] = bytes(read_exact(src, size))
            else:
                self.notes.append(f"{shown('/' + path)} is {size} bytes, too large for a loader config; not read")
        elif size >= 4 and not _skipped(path):
            facts = read_facts(src, size, self.root, full=_under_any(path, self.checked))
            if facts is not None:
                self.elf[path] = facts
        return "libcheck"


def _sidecar(store: Store, digest: str) -> Path:
    return store.root / "libcheck" / (digest.split(":", 1)[1] + ".json")


def _load_record(store: Store, digest: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(_sidecar(store, digest).read_bytes().decode("utf-8", "surrogateescape"))
    except (FileNotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("version") == SIDECAR_VERSION else None


def _save_record(store: Store, digest: str, probe: _Probe) -> None:
    doc = {"version": SIDECAR_VERSION, "digest": digest, "full": list(probe.checked),
           "elf": {p: f.to_json() for p, f in probe.elf.items()},
           "conf": {p: base64.b64encode(b).decode() for p, b in probe.conf.items()}, "notes": probe.notes}
    path = _sidecar(store, digest)
    path.parent.mkdir(exist_ok=True)
    write_atomically(path, json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
                     .encode("utf-8", "surrogateescape"))


def _from_record(entries: list[Entry], doc: dict[str, Any], checked: tuple[str, ...]) -> LayerFacts | None:
    """The layer's facts from its record, if the record read every file now checked whole."""
    full = tuple(doc.get("full") or ())
    if any(e.kind == FILE and e.size and _under_any(e.path, checked) and not _under_any(e.path, full)
           for e in entries):
        return None
    try:
        elf = {p: ElfFacts.from_json(v) for p, v in doc["elf"].items()}
        conf = {p: base64.b64decode(v) for p, v in doc["conf"].items()}
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return LayerFacts(entries, elf, conf, "index+record", list(doc.get("notes") or []))


def gather(layers: list[LayerInput], store: Store | None, tmp: Path, jobs: int, log: Log,
           progress: Progress | None = None) -> list[LayerFacts]:
    """Each layer's entries, ELF facts and loader configs: from the store when it holds
    enough, else read (concurrently, largest first)."""
    show: Progress = progress or NullProgress()
    tmp.mkdir(parents=True, exist_ok=True)
    out: list[LayerFacts | None] = [None] * len(layers)
    to_read: list[int] = []
    by_index: dict[int, LayerIndex] = {}  # layers read through their full layer index
    for k, layer in enumerate(layers):
        if layer.image is not None:
            desc = layer.image.manifest.layers[layer.index]
            if desc.media_type in model.FOREIGN_LAYER_TYPES:
                out[k] = LayerFacts([], {}, {}, "foreign", [
                    f"{layer.label} is a foreign layer, not fetched: its files are not known"])
                continue
            indexed = store.index(desc.digest) if store is not None and layer.written is None else None
            if indexed is not None and store is not None:
                record = _load_record(store, desc.digest)
                known = _from_record(indexed, record, layer.checked) if record is not None else None
                if known is None and not any(e.kind == FILE and e.size and (
                        is_conf(e.path) or _under_any(e.path, layer.checked)) for e in indexed):
                    known = LayerFacts(indexed, {}, {}, "index")
                if known is not None:
                    log(f"libcheck: {layer.label}: file list from the store ({known.how}), not read")
                    show.finish(layer.label, "file list from the store: not read")
                    out[k] = known
                    continue
            if layer.written is None:
                index = layer_index_of(layer.image, layer.index)
                if index is not None:
                    by_index[k] = index
        to_read.append(k)

    def read(k: int) -> LayerFacts:
        layer = layers[k]
        if k in by_index:
            facts = _through_index(layer, by_index[k], tmp, log)
            show.finish(layer.label, f"file list from its {by_index[k].what}")
            return facts
        probe = _Probe(tmp, layer.checked)
        if layer.written is not None:
            entries = _read_written(layer.written, layer.label, probe, show)
        else:
            assert layer.image is not None
            entries = scan_layers(layer.image, [layer.index], probe.want, probe, 1, log, progress)[0].entries
            if store is not None:
                _save_record(store, layer.digest, probe)
        log(f"libcheck: read {layer.label}: {len(entries)} entries, {len(probe.elf)} ELF files")
        return LayerFacts(entries, probe.elf, probe.conf, "read", probe.notes)

    for k, facts in zip(to_read, biggest_first(to_read, lambda k: layers[k].size, read, jobs), strict=True):
        out[k] = facts
    return [f for f in out if f is not None]


def _through_index(layer: LayerInput, index: LayerIndex, tmp: Path, log: Log) -> LayerFacts:
    """A source layer with a full layer index: its file list is the index's; only its loader
    configs and the files checked are read now (through the index, each body checked against
    the sha256 it records), any other file once the loader looks it up."""
    entries = entries_copy(index)
    now = [k for k, e in enumerate(entries) if e.kind == FILE and e.size and (is_conf(e.path) or
                                                                              _under_any(e.path, layer.checked))]
    later = {e.path: k for k, e in enumerate(entries) if e.kind == FILE and e.size >= 4 and not _skipped(e.path)
             and not is_conf(e.path) and not _under_any(e.path, layer.checked)}
    facts = LayerFacts(entries, {}, {}, "layer index", pending=later, index=index, layer=layer)
    _read_pending(facts, now, tmp)
    log(f"libcheck: {layer.label}: file list from its {index.what}, {len(now)} file(s) read through it")
    return facts


def _read_pending(facts: LayerFacts, ks: list[int], tmp: Path) -> None:
    """Read entries ``ks`` of an index-backed layer, in the layer's order, into its facts."""
    if not ks:
        return
    index, layer = facts.index, facts.layer
    assert index is not None and layer is not None and layer.image is not None
    probe = _Probe(tmp, layer.checked)
    desc = layer.image.manifest.layers[layer.index]
    with contextlib.closing(layer.image.source.open_range(desc)) as raw:
        for _ in read_bodies(index, raw, ks, probe, layer.label, lambda k: probe.want(index.entries[k].path)):
            pass
    facts.elf.update(probe.elf)
    facts.conf.update(probe.conf)
    facts.notes += probe.notes
    for k in ks:
        facts.pending.pop(index.entries[k].path, None)


def analyse_reading(facts: list[LayerFacts], config: dict[str, Any], checked: Callable[[], Iterable[tuple[Node, str]]],
                    tree: Tree, tmp: Path, log: Log) -> LibReport:
    """:func:`analyse`, and again while it looked up files that layer indexes can still give
    (read then, through the index, a layer's at once): each round reads only what the loader
    reached, which ends when it reaches nothing new (each round leaves fewer unread)."""
    rounds = files = 0
    while True:
        wanted: dict[int, set[str]] = {}
        report = analyse(facts, config, checked(), tree, wanted)
        if not wanted:
            if rounds:
                log(f"libcheck: {files} file(s) read through layer indexes as the loader looked them up, "
                    f"in {rounds} round(s)")
            return report
        rounds += 1
        for pos, paths in wanted.items():
            lf = facts[pos]
            ks = [lf.pending[p] for p in paths if p in lf.pending]
            if lf.index is not None and not lf.index.seekable and lf.index.offsets and \
                    lf.index.offsets[-1] > 4 * SPACING:
                ks = list(lf.pending.values())  # a big layer read from its start: once, not once a round
            files += len(ks)
            _read_pending(lf, ks, tmp)


def _read_written(written: WrittenLayer, label: str, probe: _Probe, show: Progress) -> list[Entry]:
    """A new layer, from the files it was just written to (not through a registry)."""
    show.start(label, label, written.size)
    with written.open() as blob:
        entries = scan_layer(open_decompressed(CountingReader(blob, show, label)), probe.want, probe, label)
    show.finish(label)
    return entries


# -- the loader ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Obj:
    """A loaded (or checked) object: the path it is known by, and its facts."""

    path: str
    facts: ElfFacts

    @property
    def origin(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""


@dataclass(frozen=True)
class Hit:
    path: str  # as searched (ld.so's l_name: $ORIGIN of what it loads is its directory)
    real: str  # after symlinks
    facts: ElfFacts | None  # None where the header was not read


class Loader:
    """glibc's search for ``DT_NEEDED`` names, over the merged tree of one image."""

    def __init__(self, tree: Tree, facts: list[LayerFacts], config: dict[str, Any],
                 wanted: dict[int, set[str]] | None = None):
        self.tree = tree
        self._facts = facts
        self.wanted = wanted if wanted is not None else {}  # files looked at that a layer index can give
        inner = config.get("config") or {}
        env = [str(e) for e in inner.get("Env") or []]
        self.workdir = normalise(str(inner.get("WorkingDir") or "/"), "WorkingDir")
        values = dict(e.partition("=")[::2] for e in env)
        llp = values.get("LD_LIBRARY_PATH", "")
        self.ld_library_path = re.split(r"[:;]", llp) if llp else []  # glibc ignores an empty one
        self.driver = any(k in values for k in _DRIVER_ENV)
        self.notes: set[str] = set()
        self._lookups: dict[str, Hit | None] = {}
        self.conf_dirs = self._conf_dirs()

    # -- files ------------------------------------------------------------------------------
    def facts_of(self, node: Node) -> ElfFacts | None:
        ino = node.inode
        if ino is None:
            return None
        lf = self._facts[ino.layer]
        found = lf.elf.get(ino.entry.path)
        if found is None and ino.entry.path in lf.pending:
            self.wanted.setdefault(ino.layer, set()).add(ino.entry.path)
        return found

    def lookup(self, path: str) -> Hit | None:
        """The regular file at ``path`` (relative to the root), symlinks followed."""
        path = _lexical(path)
        if path in self._lookups:
            return self._lookups[path]
        real = resolve(self.tree, path)
        node = self.tree.get(real) if real is not None else None
        hit = None
        if real is not None and node is not None and node.inode is not None:
            hit = Hit(path, real, self.facts_of(node))
        self._lookups[path] = hit
        return hit

    # -- ld.so.conf -------------------------------------------------------------------------
    def _conf_body(self, path: str) -> bytes | None:
        """The text of a loader config in the image; None if there is none, or if it was not
        read (a file outside /etc/ld.so.conf.d that an ``include`` names: noted)."""
        real = resolve(self.tree, path)
        node = self.tree.get(real) if real is not None else None
        if node is None or node.inode is None:
            return None
        if not node.inode.entry.size:
            return b""
        body = self._facts[node.inode.layer].conf.get(node.inode.entry.path)
        if body is None:
            self.notes.add(f"loader config {shown('/' + path)} lies outside /etc/ld.so.conf.d and was not read; "
                           "its directories are not searched")
        return body

    def _conf_dirs(self) -> list[str]:
        dirs: list[str] = []
        self._parse_conf(CONF, dirs, set())
        return list(dict.fromkeys(dirs))

    def _parse_conf(self, path: str, dirs: list[str], seen: set[str]) -> None:
        if path in seen or len(seen) > 256:
            return
        seen.add(path)
        body = self._conf_body(path)
        if body is None:
            return
        for raw in body.decode("utf-8", "surrogateescape").splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            word, rest = [*re.split(r"\s+", line, maxsplit=1), ""][:2]
            if word == "include" and rest.strip():
                base = path.rsplit("/", 1)[0]
                for pattern in rest.split():
                    full = pattern.lstrip("/") if pattern.startswith("/") else f"{base}/{pattern}"
                    for match in self.glob(full):
                        self._parse_conf(match, dirs, seen)
            elif word == "hwcap":
                continue
            else:
                for d in re.split(r"[\s:,]+", line):
                    d = d.split("=", 1)[0]
                    if d.startswith("/"):
                        dirs.append(d)

    def glob(self, pattern: str) -> list[str]:
        """``glob(3)`` inside the image: sorted, hidden names only for patterns asking."""
        found = [""]
        for part in [p for p in pattern.split("/") if p]:
            nxt: list[str] = []
            for base in found:
                if not any(c in part for c in "*?["):
                    nxt.append(f"{base}/{part}" if base else part)
                    continue
                real = resolve(self.tree, base) if base else ""
                node = self.tree.get(real) if real is not None else None
                if node is None or node.children is None:
                    continue
                names = [n for n in node.children if not n.startswith(".") or part.startswith(".")]
                nxt += [f"{base}/{n}" if base else n for n in sorted(fnmatch.filter(names, part))]
            found = nxt
        return [p for p in found if resolve(self.tree, p) is not None]

    # -- search -----------------------------------------------------------------------------
    def expand(self, entries: Iterable[str], obj: Obj) -> list[str]:
        """Search path entries with dynamic string tokens expanded, relative to the root."""
        triplet, platform = _ARCH.get((obj.facts.machine, obj.facts.elfclass), ("", ""))

        def token(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(2)
            if name == "ORIGIN":
                return "/" + obj.origin
            if name == "LIB":
                return f"lib/{triplet}" if triplet else "lib"
            return platform

        out = []
        for entry in entries:
            if entry == "":
                out.append(self.workdir)  # an empty entry is the current directory
                continue
            value = _DST.sub(token, entry)
            if "$" in value:
                self.notes.add(f"search path entry {shown(entry)} of {shown('/' + obj.path)} holds a token the "
                               "loader does not expand; it is taken literally")
            if not value.startswith("/"):
                self.notes.add(f"search path entry {shown(entry)} of {shown('/' + obj.path)} is relative: taken from "
                               f"the working directory /{self.workdir}")
                value = f"{self.workdir}/{value}"
            out.append(_lexical(value))
        return out

    def default_dirs(self, facts: ElfFacts) -> list[str]:
        triplet, _ = _ARCH.get((facts.machine, facts.elfclass), ("", ""))
        bits = "64" if facts.elfclass == 64 else "32"
        multi = [f"lib/{triplet}", f"usr/lib/{triplet}"] if triplet else []
        return [*multi, f"lib{bits}", f"usr/lib{bits}", "lib", "usr/lib"]

    def search_path(self, obj: Obj, chain: list[Obj]) -> list[str]:
        dirs: list[str] = []
        if obj.facts.runpath is None:
            for o in chain:
                if o.facts.rpath:
                    dirs += self.expand(o.facts.rpath, o)
        dirs += self.expand(self.ld_library_path, chain[-1])
        if obj.facts.runpath is not None:
            dirs += self.expand(obj.facts.runpath, obj)
        dirs += [d.lstrip("/") for d in self.conf_dirs]
        dirs += self.default_dirs(obj.facts)
        return list(dict.fromkeys(dirs))

    def find(self, name: str, obj: Obj, dirs: list[str], rejected: list[Hit]) -> Hit | None:
        if "/" in name:
            candidates = [name.lstrip("/") if name.startswith("/") else f"{self.workdir}/{name}"]
        else:
            candidates = [f"{d}/{name}" if d else name for d in dirs]
        for c in candidates:
            hit = self.lookup(c)
            if hit is None:
                continue
            if hit.facts is not None and not hit.facts.error and not obj.facts.fits(hit.facts):
                rejected.append(hit)  # the loader skips a library of another class or machine
                continue
            return hit
        return None

    def start(self, exe: Obj) -> Process:
        """The loader starting ``exe``: its dependencies breadth-first, each searched with
        the path of the object that needs it (and the RPATHs of those that loaded it), a
        name already loaded matching without a search. Objects are descended into where
        their dynamic section was read (the checked layers)."""
        proc = Process()
        proc.reached.add(exe.path)
        # (name, the object needing it, its loader chain, that object's real path)
        queue = deque((n, exe, [exe], exe.path) for n in exe.facts.needed)
        while queue and len(proc.reached) < MAX_CLOSURE:
            name, obj, chain, real = queue.popleft()
            if name in proc.names or builtin(name):
                continue
            hit = self.find(name, obj, self.search_path(obj, chain), [])
            if hit is None:
                proc.failed.setdefault(real, []).append(name)
                continue
            proc.names.add(name)
            if hit.facts is not None and hit.facts.soname:
                proc.names.add(hit.facts.soname)
            if hit.facts is not None and hit.facts.parsed and hit.real not in proc.reached:
                proc.reached.add(hit.real)
                # glibc takes a library's $ORIGIN from the path it opened, symlinks unresolved
                dep = Obj(hit.path, hit.facts)
                queue.extend((n, dep, [dep, *chain], hit.real) for n in hit.facts.needed)
        return proc


@dataclass
class Process:
    """What starting one executable loads: the names matched, the objects reached (by
    real path), and the needs the loader would fail on, by the real path of the needing object."""

    names: set[str] = field(default_factory=set)
    reached: set[str] = field(default_factory=set)
    failed: dict[str, list[str]] = field(default_factory=dict)


def builtin(name: str) -> bool:
    """The loader itself and the kernel's vDSO: present in every process, whatever the files."""
    return _BUILTIN.fullmatch(name) is not None


def _lexical(path: str) -> str:
    parts: list[str] = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return "/".join(parts)


# -- the report ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    """One problem: ``soname`` is what ``file`` needs and the image lacks; an empty soname
    means ``file`` itself could not be read as ELF (``detail`` says why)."""

    component: str
    file: str  # absolute path in the image
    soname: str = ""
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass
class LibReport:
    findings: list[Finding]
    files_checked: int
    notes: list[str] = field(default_factory=list)
    layers: dict[str, int] = field(default_factory=dict)  # how the layers' file lists were had
    seconds: float = 0.0
    scope: list[str] = field(default_factory=list)  # what was checked (components or prefixes)

    @property
    def failed(self) -> bool:
        return bool(self.findings)

    @property
    def missing(self) -> list[Finding]:
        return [f for f in self.findings if f.soname]

    @property
    def malformed(self) -> list[Finding]:
        return [f for f in self.findings if not f.soname]

    def lines(self) -> list[str]:
        """One line per missing soname per component, then one per unreadable file."""
        groups: dict[tuple[str, str], list[Finding]] = {}
        for f in self.missing:
            groups.setdefault((f.component, f.soname), []).append(f)
        out = []
        for (component, soname), fs in sorted(groups.items()):
            more = f" (and {len(fs) - 1} more file{'s' if len(fs) > 2 else ''})" if len(fs) > 1 else ""
            detail = f"; {fs[0].detail}" if fs[0].detail else ""
            out.append(f"{_label(component)}: {shown(soname)} not found, needed by {shown(fs[0].file)}{more}{detail}")
        for f in sorted(self.malformed, key=lambda f: (f.component, f.file)):
            out.append(f"{_label(f.component)}: {shown(f.file)} is not a readable ELF file ({f.detail})")
        return out

    def summary(self) -> str:
        how = ", ".join(f"{n} {k}" for k, n in sorted(self.layers.items()))
        return (f"shared libraries: {self.files_checked} ELF files checked, {len(self.missing)} missing "
                f"dependencies, {len(self.malformed)} unreadable ELF files; layers: {how}; {self.seconds:.2f} s")

    def warning_lines(self, limit: int = WARN_LINES) -> list[str]:
        lines = self.lines()
        if len(lines) > limit:
            lines = [*lines[:limit], f"… and {len(lines) - limit} more"]
        return lines

    def error_message(self) -> str:
        lines = self.lines()
        head = "; ".join(lines[:3]) + (f"; and {len(lines) - 3} more" if len(lines) > 3 else "")
        return f"the image would lack shared libraries: {head}"

    def to_json(self) -> dict[str, Any]:
        return {"ok": not self.failed, "files_checked": self.files_checked,
                "missing": [f.to_json() for f in self.missing],
                "malformed": [{k: v for k, v in f.to_json().items() if k != "soname"} for f in self.malformed],
                "notes": self.notes, "layers": self.layers, "seconds": round(self.seconds, 3), "scope": self.scope}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LibReport:
        findings = [Finding(**f) for f in doc.get("missing", [])]
        findings += [Finding(f["component"], f["file"], "", f.get("detail", "")) for f in doc.get("malformed", [])]
        return cls(findings, int(doc.get("files_checked", 0)), list(doc.get("notes", [])),
                   dict(doc.get("layers", {})), float(doc.get("seconds", 0.0)), list(doc.get("scope", [])))


def analyse(facts: list[LayerFacts], config: dict[str, Any],
            checked: Iterable[tuple[Node, str]], tree: Tree, wanted: dict[int, set[str]] | None = None) -> LibReport:
    """Resolve every need of the checked files (``(node, component)`` pairs) in ``tree``;
    ``wanted`` gathers the files looked at whose facts a layer index can still give."""
    loader = Loader(tree, facts, config, wanted)
    objs: list[tuple[Obj, str]] = []
    findings: list[Finding] = []
    for node, component in checked:
        f = loader.facts_of(node)
        if f is None:
            continue
        if f.error:
            findings.append(Finding(component, "/" + node.path, "", f.error))
        elif f.parsed:
            objs.append((Obj(node.path, f), component))
    # executables are started as the loader would; a library one of them loads is judged by
    # those starts (a need unmet in any of them stops that executable), any other library
    # (a plugin for dlopen, or unused) by its own search path, helped by what the
    # executables load and, without DT_RUNPATH, by their DT_RPATH
    hosts = [o for o, _ in objs if o.facts.executable and not o.facts.soname]
    procs = [loader.start(exe) for exe in hosts]
    loaded = set().union(*(p.names for p in procs))
    host_paths = {tuple(loader.expand(h.facts.rpath, h)) for h in hosts if h.facts.rpath}
    driver_provided = 0
    for obj, component in objs:
        own = loader.search_path(obj, [obj])
        started = [p for p in procs if obj.path in p.reached]
        if started:
            unmet = list(dict.fromkeys(n for p in started for n in p.failed.get(obj.path, [])))
        else:
            unmet = []
            for name in obj.facts.needed:
                if builtin(name) or loader.find(name, obj, own, []) is not None or name in loaded:
                    continue
                if obj.facts.runpath is None and any(
                        loader.find(name, obj, list(dirs), []) is not None for dirs in host_paths):
                    continue
                unmet.append(name)
        for name in unmet:
            if loader.driver and name in DRIVER_LIBS:
                driver_provided += 1
                continue
            rejected: list[Hit] = []
            loader.find(name, obj, own, rejected)
            detail = ""
            if rejected:
                r = rejected[0]
                detail = f"{shown('/' + r.path)} is {r.facts.kind if r.facts else '?'}, not {obj.facts.kind}"
            findings.append(Finding(component, "/" + obj.path, name, detail))
    notes = sorted(loader.notes)
    if driver_provided:
        notes.append(f"{driver_provided} needs of NVIDIA driver libraries (libcuda.so.1, ...) left to the container "
                     "runtime, which mounts them from the host")
    findings.sort(key=lambda f: (f.component, f.soname, f.file))
    return LibReport(findings, len(objs) + sum(1 for f in findings if not f.soname), notes)


def merged(facts: list[LayerFacts], labels: list[str]) -> Tree:
    tree = Tree()
    for lf, label in zip(facts, labels, strict=True):
        tree.apply(lf.entries, label)
    tree.complete = True
    return tree


def tally(facts: list[LayerFacts]) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in facts:
        out[f.how] = out.get(f.how, 0) + 1
    return out


def layer_notes(facts: list[LayerFacts]) -> list[str]:
    return [n for f in facts for n in f.notes]


# -- compose: the new layers -----------------------------------------------------------------

def _index_of(desc: Descriptor, image: ResolvedImage) -> int:
    for i, d in enumerate(image.manifest.layers):
        if d.digest == desc.digest:
            return i
    raise OciAssembleError(f"internal: layer {desc.digest} is not one of {image.name}'s layers")


def check_new_layers(mode: str, base: list[tuple[Descriptor, ResolvedImage]], new: list[NewLayer],
                     config: dict[str, Any], scratch: Path, store: Store | None, jobs: int,
                     log: Log, progress: Progress | None = None,
                     rewritten: dict[str, WrittenLayer] | None = None) -> LibReport | None:
    """compose's check: the ELF files of the ``new`` layers against the final layer list
    (the ``base`` layers, each with the image it comes from, then ``new``; a new layer
    passed through is read from the image it belongs to), with the final ``config``'s environment.
    Raises :class:`LibrariesMissing` for ``error``, before anything is tagged."""
    if mode not in MODES:
        raise UsageError(f"--check-libs must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "off":
        return None
    started = time.monotonic()
    layers: list[LayerInput] = []
    for d, img in base:
        if rewritten and d.digest in rewritten:  # a part of a carried layer --split-reused rewrote
            layers.append(LayerInput(f"rewritten layer ({d.digest[:19]})", d.size, written=rewritten[d.digest]))
            continue
        i = _index_of(d, img)
        layers.append(LayerInput(f"{img.role} layer {i} ({d.digest[:19]})", d.size, img, i))
    first_new = len(layers)
    for n in new:
        component = n.spec.component or n.spec.name
        if n.source is not None and n.origin is not None:
            i = _index_of(n.source, n.origin)
            layers.append(LayerInput(f"{n.origin.role} layer {i} ({n.source.digest[:19]})", n.source.size, n.origin,
                                     i, checked=("",), component=component))
        else:
            layers.append(LayerInput(f"new layer '{n.spec.name}'", n.written.size, written=n.written,
                                     checked=("",), component=component))
    facts = gather(layers, store, scratch / "libcheck", jobs, log, progress)
    tree = merged(facts, [x.label for x in layers])

    def checked() -> Iterator[tuple[Node, str]]:
        for pos in range(first_new, len(layers)):
            for e in facts[pos].entries:
                node = tree.get(e.path)
                if node is not None and node.inode is not None and node.inode.layer == pos and \
                        e.kind in (FILE, HARDLINK):
                    yield node, layers[pos].component

    report = analyse_reading(facts, config, checked, tree, scratch / "libcheck", log)
    report.notes = layer_notes(facts) + report.notes
    report.layers = tally(facts)
    report.scope = list(dict.fromkeys(n.spec.component or n.spec.name for n in new))
    report.seconds = time.monotonic() - started
    log(report.summary())
    if mode == "error" and report.failed:
        raise LibrariesMissing(report.error_message() + "; nothing was tagged (--check-libs=warn publishes anyway)")
    return report


def remember_report(store: Store, key: str, report: LibReport) -> None:
    """Kept beside compose's memo, so that an unchanged re-run repeats the warnings."""
    store.put_memo(f"{key}-libs", report.to_json())


def recall_report(store: Store, key: str, mode: str) -> LibReport | None:
    """The report of the run a memo remembers (None: none kept, so compose runs again);
    for ``error``, a remembered failure fails this run too, before anything is tagged."""
    if mode == "off":
        return None
    doc = store.memo(f"{key}-libs")
    if not doc:
        return None
    report = LibReport.from_json(doc)
    if mode == "error" and report.failed:
        raise LibrariesMissing(report.error_message() + "; nothing was tagged (--check-libs=warn publishes anyway)")
    return report


__all__ = ["EXIT_MISSING", "MODES", "Finding", "LibReport", "LibrariesMissing", "analyse_reading",
           "check_new_layers", "recall_report", "remember_report"]
