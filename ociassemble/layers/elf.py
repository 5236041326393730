"""What the dynamic loader needs to know about one ELF file, read from a forward-only stream.

Layer bodies arrive once, front to back, inside a tar stream; an ELF file's loader facts
(class, machine, ``PT_INTERP``, and from ``PT_DYNAMIC``: ``DT_NEEDED``, ``DT_SONAME``,
``DT_RPATH``, ``DT_RUNPATH``) sit at offsets the file itself names. :class:`_OnDemand`
gives pyelftools a seekable file whose bytes are pulled from the stream into a temporary
file only as far as the parser reads, so a 1 GB library costs the bytes up to its dynamic
segment on disk (never in memory) and the rest of its body is skipped unread.

Only the program headers are used, as the loader does: section headers sit at the end of
the file and are often stripped. pyelftools supplies the structure definitions and the
parsing (``ELFStructs``, ``struct_parse``); strings are decoded with ``surrogateescape``
because image content need not be UTF-8. A file that starts like ELF but cannot be read
this way is returned as facts with ``error`` set: a finding for the report, never an
exception.
"""

from __future__ import annotations

import io
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.common.utils import struct_parse
from elftools.elf.enums import ENUM_E_MACHINE
from elftools.elf.structs import ELFStructs

from ociassemble.oci.digest import ViewReadable

MAGIC = b"\x7fELF"
HEAD = 64  # the ELF header of both classes fits
MAX_PHDRS = 4096  # the loader itself refuses absurd counts; a file claiming more is corrupt
MAX_DYN = 1 << 16  # dynamic entries read at most
MAX_STRING = 4096  # a longer DT_NEEDED/RPATH string is treated as corrupt
SPILL = 1 << 20  # bytes pulled into memory before the temporary file moves to disk
CHUNK = 1 << 20

_MACHINES = {v: k for k, v in ENUM_E_MACHINE.items() if isinstance(v, int)}



@dataclass(frozen=True, slots=True)
class ElfFacts:
    """Loader facts of one ELF file. ``parsed`` is False when only the header was read
    (enough to tell class and machine); then the dynamic fields are empty."""

    elfclass: int  # 32 or 64
    little_endian: bool
    machine: str  # pyelftools' name, e.g. EM_X86_64 (EM_<number> for unknown ones)
    parsed: bool = False
    executable: bool = False  # has PT_INTERP: the kernel starts it through the loader
    interp: str = ""
    soname: str = ""
    needed: tuple[str, ...] = ()
    rpath: tuple[str, ...] | None = None  # None: no DT_RPATH (also when DT_RUNPATH overrides it)
    runpath: tuple[str, ...] | None = None
    error: str = ""  # why the file could not be read as ELF (a finding)

    def fits(self, other: ElfFacts) -> bool:
        """Whether the loader would accept ``other`` as a dependency of this file."""
        return (self.elfclass, self.little_endian, self.machine) == (other.elfclass, other.little_endian,
                                                                     other.machine)

    @property
    def kind(self) -> str:
        bits = f"{self.elfclass}-bit"
        return f"{bits} {self.machine.removeprefix('EM_')}" if self.machine else bits

    def to_json(self) -> list[Any]:
        return [self.elfclass, self.little_endian, self.machine, self.parsed, self.executable, self.interp,
                self.soname, list(self.needed), None if self.rpath is None else list(self.rpath),
                None if self.runpath is None else list(self.runpath), self.error]

    @classmethod
    def from_json(cls, v: list[Any]) -> ElfFacts:
        return cls(int(v[0]), bool(v[1]), str(v[2]), bool(v[3]), bool(v[4]), str(v[5]), str(v[6]),
                   tuple(v[7]), None if v[8] is None else tuple(v[8]), None if v[9] is None else tuple(v[9]),
                   str(v[10]))


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def header_facts(head: bytes) -> ElfFacts | None:
    """Class, byte order and machine from the first bytes of a file; None if not ELF.

    This is all a library found in a layer that is not checked needs: whether it can
    satisfy a dependency of the checked file. A header too short or with an unknown class
    or byte order is reported as malformed."""
    if not head.startswith(MAGIC):
        return None
    if len(head) < 20:
        return ElfFacts(0, True, "", error="the file ends inside its ELF header")
    cls = {1: 32, 2: 64}.get(head[4])
    order = {1: True, 2: False}.get(head[5])
    if cls is None or order is None:
        return ElfFacts(0, True, "", error=f"unknown ELF class {head[4]} or byte order {head[5]}")
    number = int.from_bytes(head[18:20], "little" if order else "big")
    return ElfFacts(cls, order, _MACHINES.get(number, f"EM_{number}"))


class _OnDemand(io.RawIOBase):
    """A seekable file of ``size`` bytes over a forward-only body: bytes are copied from
    the body into a temporary file only when a read reaches them."""

    def __init__(self, src: ViewReadable, size: int, head: bytes, tmpdir: Path | None):
        super().__init__()
        self._src = src
        self._size = size
        self._file = tempfile.SpooledTemporaryFile(max_size=SPILL, dir=tmpdir)
        self._file.write(head)
        self._have = len(head)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def _fill(self, end: int) -> None:
        self._file.seek(self._have)
        while self._have < end:
            piece = self._src.read(min(CHUNK, end - self._have))
            if not piece:
                raise ELFError("the layer holds fewer bytes of the file than its header says")
            self._file.write(piece)
            self._have += len(piece)

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        if end <= self._pos:
            return b""
        if end > self._have:
            self._fill(end)
        self._file.seek(self._pos)
        data = self._file.read(end - self._pos)
        self._pos += len(data)
        return data

    @property
    def pulled(self) -> int:
        return self._have

    def close(self) -> None:
        self._file.close()
        super().close()


_local = threading.local()


def _structs(little_endian: bool, elfclass: int, e_type: str | None, machine: str | None,
             osabi: str | None) -> ELFStructs:
    """pyelftools' structure set for this kind of file; building one costs ~2 ms, so they
    are kept (per thread, as layers are read concurrently)."""
    cache: dict[tuple[object, ...], ELFStructs] = _local.__dict__.setdefault("cache", {})
    key = (little_endian, elfclass, e_type, machine, osabi)
    s = cache.get(key)
    if s is None:
        s = ELFStructs(little_endian=little_endian, elfclass=elfclass)
        s.create_basic_structs()
        if e_type is not None:
            s.create_advanced_structs(e_type, machine, osabi)
        cache[key] = s
    return s


def _cstring(f: _OnDemand, offset: int, limit: int) -> bytes:
    f.seek(offset)
    raw = f.read(min(limit, MAX_STRING))
    end = raw.find(b"\0")
    if end < 0:
        raise ELFError(f"a dynamic string at offset {offset} is not terminated")
    return raw[:end]


def _paths(value: str) -> tuple[str, ...]:
    return tuple(value.split(":"))


def read_facts(src: ViewReadable, size: int, tmpdir: Path | None = None, full: bool = True) -> ElfFacts | None:
    """Loader facts of a file whose body ``src`` streams (exactly ``size`` bytes); None if
    the file is not ELF. With ``full`` false only the header is read."""
    head = bytes(src.read(min(size, HEAD)))
    while len(head) < min(size, HEAD):
        more = src.read(min(size, HEAD) - len(head))
        if not more:
            break
        head += bytes(more)
    basic = header_facts(head)
    if basic is None or basic.error or not full:
        return basic
    f = _OnDemand(src, size, head, tmpdir)
    try:
        return _parse(f, basic)
    except (ELFError, ValueError, KeyError, OverflowError) as e:
        return ElfFacts(basic.elfclass, basic.little_endian, basic.machine, error=str(e) or type(e).__name__)
    finally:
        f.close()


def _parse(f: _OnDemand, basic: ElfFacts) -> ElfFacts:
    le, cls = basic.little_endian, basic.elfclass
    ehdr = struct_parse(_structs(le, cls, None, None, None).Elf_Ehdr, f, stream_pos=0)
    e_type = ehdr["e_type"]
    if e_type not in ("ET_EXEC", "ET_DYN"):
        # relocatable objects, core files: nothing the loader maps
        return ElfFacts(cls, le, basic.machine, parsed=True)
    s = _structs(le, cls, e_type, ehdr["e_machine"], ehdr["e_ident"]["EI_OSABI"])
    phnum, phentsize, phoff = ehdr["e_phnum"], ehdr["e_phentsize"], ehdr["e_phoff"]
    if phnum >= 0xFFFF or phnum > MAX_PHDRS:
        raise ELFError(f"the file claims {phnum} program headers")
    if phnum and phentsize < s.Elf_Phdr.sizeof():
        raise ELFError(f"program header entries of {phentsize} bytes are too small")
    phdrs = [struct_parse(s.Elf_Phdr, f, stream_pos=phoff + i * phentsize) for i in range(phnum)]
    interp = ""
    for p in phdrs:
        if p["p_type"] == "PT_INTERP":
            interp = _decode(_cstring(f, p["p_offset"], p["p_filesz"]))
    dyn = next((p for p in phdrs if p["p_type"] == "PT_DYNAMIC"), None)
    if dyn is None or dyn["p_filesz"] == 0:  # static: the loader is not involved
        return ElfFacts(cls, le, basic.machine, parsed=True, executable=bool(interp), interp=interp)
    if dyn["p_offset"] + dyn["p_filesz"] > f.seek(0, io.SEEK_END):
        raise ELFError("the dynamic segment lies beyond the end of the file")
    entsize = s.Elf_Dyn.sizeof()
    tags: list[tuple[str, int]] = []
    for n in range(min(dyn["p_filesz"] // entsize, MAX_DYN)):
        d = struct_parse(s.Elf_Dyn, f, stream_pos=dyn["p_offset"] + n * entsize)
        tag = d["d_tag"]
        if tag == "DT_NULL":
            break
        if tag in ("DT_NEEDED", "DT_SONAME", "DT_RPATH", "DT_RUNPATH", "DT_STRTAB", "DT_STRSZ"):
            tags.append((tag, d["d_val"]))
    strings = [(t, v) for t, v in tags if t in ("DT_NEEDED", "DT_SONAME", "DT_RPATH", "DT_RUNPATH")]
    values: dict[str, list[str]] = {}
    if strings:
        strtab = next((v for t, v in tags if t == "DT_STRTAB"), None)
        strsz = next((v for t, v in tags if t == "DT_STRSZ"), None)
        if strtab is None:
            raise ELFError("the dynamic segment names strings but has no DT_STRTAB")
        base = next((strtab - p["p_vaddr"] + p["p_offset"] for p in phdrs if p["p_type"] == "PT_LOAD"
                     and p["p_vaddr"] <= strtab < p["p_vaddr"] + p["p_filesz"]), None)
        if base is None:
            raise ELFError(f"DT_STRTAB {strtab:#x} lies in no loaded segment")
        for tag, off in strings:
            if strsz is not None and off >= strsz:
                raise ELFError(f"{tag} points past the end of the string table")
            limit = strsz - off if strsz is not None else MAX_STRING
            values.setdefault(tag, []).append(_decode(_cstring(f, base + off, limit)))
    runpath = values.get("DT_RUNPATH")
    rpath = values.get("DT_RPATH")
    return ElfFacts(
        cls, le, basic.machine, parsed=True, executable=bool(interp), interp=interp,
        soname=(values.get("DT_SONAME") or [""])[0], needed=tuple(values.get("DT_NEEDED", [])),
        # glibc: "if both DT_RUNPATH and DT_RPATH are present, DT_RPATH is ignored"
        rpath=None if runpath is not None or rpath is None else _paths(":".join(rpath)),
        runpath=None if runpath is None else _paths(":".join(runpath)),
    )
