"""Fuzzing the parsers that take untrusted bytes (issue 13).

Layer tars (ustar/GNU/pax headers, pax records, GNU sparse maps), gzip and zstd framing,
manifests, indexes and image configs, ``WWW-Authenticate`` challenges (and what the client
does with them), auth files, image references and digests: whatever bytes arrive, the
outcome is a result or one of the tool's own errors (:class:`OciAssembleError`), never
another exception, and it comes within bounded time (hypothesis' ``deadline``, explicit
timings for the big claims) and bounded memory (a child process under ``RLIMIT_AS``).

Each family has structured strategies that reach past the first check (valid-looking
headers with one field mutated and the checksum fixed, pax records with wrong lengths,
gzip members with a broken CRC, zstd frames cut short, JSON documents with a wrong type
at one key) and plain random bytes. Inputs that crashed a parser once are kept below as
named regression tests.

CI runs a bounded, derandomised pass (200 examples per test); a longer run:
``OCIASSEMBLE_FUZZ_EXAMPLES=20000 python3 -m pytest tests/test_fuzz.py -p no:cacheprovider
--hypothesis-show-statistics`` (random seeds, so each run tries new inputs).
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import io
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ociassemble.errors import OciAssembleError
from ociassemble.layers.compression import CompressionSpec, open_decompressed
from ociassemble.layers.spool import Spool
from ociassemble.layers.tarscan import scan_layer
from ociassemble.layers.write import tar_header
from ociassemble.oci import model, reference
from ociassemble.oci.changeset import FILE, HARDLINK, Entry
from ociassemble.oci.digest import VerifyingReader, check_digest, sha256_digest, verify_bytes
from ociassemble.transport.registry import credentials
from ociassemble.transport.registry.auth import parse_challenge
from ociassemble.transport.registry.client import ClientOptions, RegistryClient

ROOT = Path(__file__).resolve().parent.parent
LONG = int(os.environ.get("OCIASSEMBLE_FUZZ_EXAMPLES") or 0)
FUZZ = settings(
    max_examples=LONG or 200,
    derandomize=not LONG,  # CI: the same inputs every run; a long run: new ones each time
    database=None,
    deadline=timedelta(seconds=10 if LONG else 3),  # generous for a shared 2-core machine; a ReDoS takes minutes
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.large_base_example],
    print_blob=True,
)
pytestmark = [pytest.mark.timeout(0)] if LONG else []  # a long run takes longer than pytest-timeout's 300 s


def clean(fn: Callable[[], Any]) -> Any:
    """Run ``fn``: a result, or None when it raised the tool's own error. Anything else
    (TypeError, IndexError, requests' exceptions, RecursionError...) fails the test."""
    try:
        return fn()
    except OciAssembleError as e:
        assert str(e), "an error must say what is wrong"
        return None


class Pieces:
    """A stream handing out ``data`` in the piece sizes given (cycled), as a decompressor
    or a socket may: headers and records then straddle every boundary."""

    def __init__(self, data: bytes, sizes: list[int] | None = None):
        self._data = data
        self._pos = 0
        self._sizes = sizes or [1 << 20]
        self._i = 0

    def read(self, n: int = -1) -> bytes:
        k = self._sizes[self._i % len(self._sizes)]
        self._i += 1
        if n is not None and n >= 0:
            k = min(k, n)
        out = self._data[self._pos : self._pos + k]
        self._pos += len(out)
        return out


piece_sizes = st.lists(st.integers(1, 5000), min_size=1, max_size=6)


def rarely(draw: st.DrawFn, one_in: int) -> bool:
    """True once in ``one_in`` draws (hypothesis favours the first choice, False)."""
    return draw(st.sampled_from([False] * (one_in - 1) + [True]))


# ----------------------------------------------------------------------------------------
# tar: headers with mutated fields, pax records, GNU long names and sparse maps


def _octal(n: int, width: int) -> bytes:
    return (b"%0*o" % (width - 1, n))[-(width - 1):] + b"\0"


def _base256(n: int, width: int) -> bytes:
    return bytes([0xFF if n < 0 else 0x80]) + (n % (256 ** (width - 1))).to_bytes(width - 1, "big")


_FIELDS = {  # name: (offset, width) in a ustar header
    "name": (0, 100), "mode": (100, 8), "uid": (108, 8), "gid": (116, 8), "size": (124, 12),
    "mtime": (136, 12), "typeflag": (156, 1), "linkname": (157, 100), "magic": (257, 6),
    "version": (263, 2), "uname": (265, 32), "gname": (297, 32), "devmajor": (329, 8),
    "devminor": (337, 8), "prefix": (345, 155),
}
_NUMERIC = ("mode", "uid", "gid", "size", "mtime", "devmajor", "devminor")


def with_checksum(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % (sum(block) & 0o777777)
    return bytes(block)


def header(name: bytes = b"f", typeflag: bytes = b"0", size: int = 0, linkname: bytes = b"",
           magic: bytes = b"ustar\x0000", **fields: bytes) -> bytearray:
    """One valid ustar header block (checksum left for :func:`with_checksum`)."""
    b = bytearray(512)
    b[0:100] = name[:100].ljust(100, b"\0")
    b[100:108] = _octal(0o644, 8)
    b[108:116] = _octal(0, 8)
    b[116:124] = _octal(0, 8)
    b[124:136] = _octal(size, 12) if 0 <= size < 8**11 else _base256(size, 12)
    b[136:148] = _octal(0, 12)
    b[156:157] = typeflag[:1]
    b[157:257] = linkname[:100].ljust(100, b"\0")
    b[257:265] = magic[:8].ljust(8, b"\0")
    for k, v in fields.items():
        off, width = _FIELDS[k]
        b[off : off + width] = v[:width].ljust(width, b"\0")
    return b


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def _filler(draw: st.DrawFn, size: int) -> bytes:
    """``size`` bytes of a drawn pattern."""
    chunk = draw(st.binary(min_size=1, max_size=64))
    return (chunk * (size // len(chunk) + 1))[:size]


def _rec(key: str, value: str) -> bytes:
    """One pax record with its right length."""
    body = f" {key}={value}\n".encode()
    n = len(body) + len(str(len(body)))
    n = len(body) + len(str(n))
    return b"%d" % n + body


names = st.one_of(
    st.sampled_from([b"f", b"./a/b", b"/abs", b"a/../../etc/passwd", b"..", b".", b"", b"a//b/", b"./",
                     b".wh.x", b"d/.wh..wh..opq", b"\xff\xfe", b"e\nrror: x\x1b[31m", b"a" * 100]),
    st.binary(min_size=0, max_size=100),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 8**11 - 1, 8**11, 2**63, 10 * 2**30, 2**33, -(2**63)]),
)


@st.composite
def field_value(draw: st.DrawFn, field: str) -> bytes:
    _, width = _FIELDS[field]
    if field in _NUMERIC and not rarely(draw, 4):
        n = draw(numbers)
        enc = draw(st.sampled_from(["octal", "octal", "base256", "spaces", "text"]))
        if enc == "octal" and n >= 0:
            return _octal(n, width)
        if enc == "spaces":
            return b" " * (width - 1) + b"\0"
        if enc == "text":
            return str(n).encode()[:width]
        return _base256(n, width)
    return draw(st.binary(max_size=width))


@st.composite
def mutated_header(draw: st.DrawFn, typeflag: bytes, size: int, name: bytes | None = None,
                   linkname: bytes = b"") -> bytes:
    b = header(name if name is not None else draw(names), typeflag, size, linkname,
               magic=draw(st.sampled_from([b"ustar\x0000", b"ustar  \x00", b"\0" * 8])))
    mutations = draw(st.lists(st.sampled_from(sorted(_FIELDS)), min_size=1, max_size=2)) if rarely(draw, 3) else []
    for field in mutations:
        off, width = _FIELDS[field]
        b[off : off + width] = draw(field_value(field)).ljust(width, b"\0")
    if rarely(draw, 20):
        b[148:156] = draw(st.binary(min_size=8, max_size=8))  # a wrong checksum, now and then
        return bytes(b)
    return with_checksum(b)


_COMMON_TYPES = [b"0"] * 8 + [b"5"] * 3 + [b"2"] * 2 + [b"1"] * 2 + [b"3", b"4", b"6", b"7", b"\0"]
_ODD_TYPES = st.one_of(st.sampled_from(list(b"xgLKSVMNDI")).map(lambda c: bytes([c])),
                       st.binary(min_size=1, max_size=1))
# mostly the types layers hold, so that most entries get past the type check
typeflags = st.integers(0, 9).flatmap(lambda i: st.sampled_from(_COMMON_TYPES) if i < 8 else _ODD_TYPES)


@st.composite
def plain_member(draw: st.DrawFn) -> bytes:
    """An entry of any type whose header may be mutated, with a body that may not fit."""
    tf = draw(typeflags)
    # links, directories and devices have no body (tarfile skips none for them)
    size = draw(st.integers(0, 2000)) if tf in (b"0", b"\0", b"7") or rarely(draw, 8) else 0
    link = draw(names) if tf in (b"1", b"2") else b""
    head = draw(mutated_header(tf, size, linkname=link))
    body = _filler(draw, size + 512)
    return head + padded(body[: draw(st.sampled_from([size] * 6 + [max(0, size - 10), size + 512]))])


PAX_KEYS = ["path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime", "atime", "ctime",
            "hdrcharset", "comment", "charset", "SCHILY.xattr.security.capability", "SCHILY.xattr.user.x",
            "LIBARCHIVE.xattr.user.y", "GNU.sparse.size", "GNU.sparse.offset", "GNU.sparse.numbytes",
            "GNU.sparse.map", "GNU.sparse.major", "GNU.sparse.minor", "GNU.sparse.name",
            "GNU.sparse.realsize", "GNU.sparse.numblocks"]
pax_values = st.one_of(
    st.sampled_from([b"", b"0", b"-1", b"1e400", b"nan", b"inf", b"-0.5", b"BINARY", b"1.0",
                     b"99999999999999999999999", b"10737418240", b"0,0", b"1,2,3", b",,", b"1,-5",
                     b"../../etc", b"a\nb", b"\xff\xfe", b"1" * 300]),
    st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
    st.floats(allow_nan=True).map(lambda f: repr(f).encode()),
    st.binary(max_size=40),
)


@st.composite
def pax_record(draw: st.DrawFn) -> bytes:
    key = draw(st.one_of(st.sampled_from(PAX_KEYS), st.text(max_size=12))).encode("utf-8", "surrogatepass")
    value = draw(pax_values)
    body = b" " + key + b"=" + value + b"\n"
    n = len(body)
    right = n + len(str(n + len(str(n))))
    right = n + len(str(right))
    how = draw(st.sampled_from(["right"] * 24 + ["delta", "zero", "huge", "junk", "nospace", "noeq"]))
    if how == "delta":
        return b"%d" % (right + draw(st.integers(-20, 20))) + body
    if how == "zero":
        return b"0" + body
    if how == "huge":
        return b"10737418240" + body  # a record claiming 10 GB
    if how == "junk":
        return draw(st.binary(max_size=8)) + body
    if how == "nospace":
        return b"%d" % right + body[1:]
    if how == "noeq":
        return b"%d " % right + key + value + b"\n"
    return b"%d" % right + body


@st.composite
def pax_member(draw: st.DrawFn) -> bytes:
    """A pax extended (or global) header, then the entry it describes."""
    records = b"".join(draw(st.lists(pax_record(), min_size=1, max_size=6)))
    kind = draw(st.sampled_from([b"x", b"x", b"g", b"X"]))
    claim = draw(st.sampled_from([len(records)] * 10 + [len(records) + 1, max(0, len(records) - 3), 10 * 2**30,
                                                         -512, 0]))
    head = draw(mutated_header(kind, claim, name=b"PaxHeaders/f")) if draw(st.booleans()) else \
        with_checksum(header(b"PaxHeaders/f", kind, claim))
    nxt = draw(plain_member()) if draw(st.booleans()) else with_checksum(header(b"f", b"0", 0))
    return head + padded(records) + nxt


@st.composite
def gnulong_member(draw: st.DrawFn) -> bytes:
    """A GNU long name ('L') or long link ('K') record, then its entry."""
    data = draw(st.one_of(names, st.binary(max_size=600)))
    claim = draw(st.sampled_from([len(data)] * 8 + [len(data) + 1000, 10 * 2**30, -1024]))
    head = with_checksum(header(b"././@LongLink", draw(st.sampled_from([b"L", b"K"])), claim,
                                magic=b"ustar  \x00"))
    return head + padded(data) + draw(plain_member())


@st.composite
def sparse_maps(draw: st.DrawFn) -> tuple[list[tuple[int, int]], int, int]:
    """(data runs, bytes stored, real size): mostly a consistent map, now and then one with
    a run out of order, negative or past the end, or a real size that does not fit."""
    runs, at = [], 0
    for gap, n in draw(st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 1500)), max_size=6)):
        runs.append((at + gap, n))
        at += gap + n
    realsize = at + draw(st.integers(0, 600))
    if rarely(draw, 4):
        runs.insert(draw(st.integers(0, len(runs))), draw(st.tuples(st.integers(-10, 5000), st.integers(-10, 3000))))
    if rarely(draw, 6):
        realsize = draw(st.integers(-5, 1 << 16))
    return runs, sum(n for _, n in runs if n > 0), realsize


def _num12(n: int) -> bytes:
    return _octal(n, 12) if 0 <= n < 8**11 else _base256(n, 12)


def _sparse_structs(pairs: list[tuple[int, int]], count: int) -> bytes:
    return b"".join(_num12(off) + _num12(n) for off, n in (pairs + [(0, 0)] * count)[:count])


def _stored(draw: st.DrawFn, size: int) -> bytes:
    """A body of ``size`` bytes, padded; now and then cut short."""
    body = padded(_filler(draw, size))
    return body[: draw(st.integers(0, len(body)))] if rarely(draw, 6) else body


@st.composite
def old_sparse_member(draw: st.DrawFn) -> bytes:
    """An old GNU sparse entry ('S'): four map slots in the header, more in extension blocks."""
    runs, stored, realsize = draw(sparse_maps())
    b = header(draw(names), b"S", stored, magic=b"ustar  \x00")
    b[386:482] = _sparse_structs(runs[:4], 4)
    ext = [runs[i : i + 21] for i in range(4, len(runs), 21)]
    b[482] = 1 if ext or rarely(draw, 8) else 0  # an extension block announced but missing, now and then
    b[483:495] = _num12(realsize)
    out = with_checksum(b)
    for i, more in enumerate(ext):
        out += _sparse_structs(more, 21) + bytes([i < len(ext) - 1]) + bytes(7)
    return out + _stored(draw, stored)


@st.composite
def pax_sparse_member(draw: st.DrawFn) -> bytes:
    """GNU pax sparse formats 0.0 (offset/numbytes records), 0.1 (one map record) and 1.0
    (a map of decimal lines at the start of the body)."""
    version = draw(st.sampled_from(["0.0", "0.1", "1.0"]))
    runs, stored, realsize = draw(sparse_maps())
    recs = [("GNU.sparse.realsize", str(realsize)), ("GNU.sparse.name", "s")]
    body = b""
    if version == "0.0":
        recs.append(("GNU.sparse.size", str(realsize)))
        for off, n in runs:
            recs += [("GNU.sparse.offset", str(off)), ("GNU.sparse.numbytes", str(n))]
    elif version == "0.1":
        tail = draw(st.sampled_from(["", "", "", ",", ",7"]))
        recs.append(("GNU.sparse.map", ",".join(str(x) for p in runs for x in p) + tail))
    else:
        recs += [("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0")]
        count = draw(st.sampled_from([len(runs)] * 12 + [len(runs) + 1, 10**9, -1]))
        lines = [str(count)] + [str(x) for p in runs for x in p]
        body = ("\n".join(lines) + "\n").encode()
        body = padded(draw(st.sampled_from([body] * 8 + [body.rstrip(b"\n"), body + b"x"])))
    records = b"".join(_rec(k, v) for k, v in recs)
    return (with_checksum(header(b"PaxHeaders/s", b"x", len(records))) + padded(records)
            + with_checksum(header(b"GNUSparseFile.0/s", b"0", len(body) + stored)) + body + _stored(draw, stored))


_MEMBERS = {"plain": plain_member(), "pax": pax_member(), "gnulong": gnulong_member(),
            "old sparse": old_sparse_member(), "pax sparse": pax_sparse_member(),
            "random block": st.binary(min_size=512, max_size=512), "zero block": st.just(bytes(512))}
members = st.sampled_from(["plain"] * 4 + ["pax"] * 3 + ["gnulong"] * 2 + ["old sparse", "pax sparse"] * 2
                          + ["random block", "zero block"]).flatmap(_MEMBERS.__getitem__)


@st.composite
def tar_streams(draw: st.DrawFn) -> bytes:
    data = b"".join(draw(st.lists(members, min_size=1, max_size=5)))
    ending = draw(st.sampled_from(["end", "end", "none", "cut", "short"]))
    if ending == "end":
        return data + bytes(1024)
    if ending == "cut":
        return data[: draw(st.integers(0, len(data)))]
    if ending == "short":
        return data + bytes(draw(st.integers(1, 511)))
    return data


def scan(data: bytes, tmp: Path, sizes: list[int] | None = None) -> list[Entry] | None:
    spool = Spool(tmp, memory_cap=1 << 20)
    entries = clean(lambda: scan_layer(Pieces(data, sizes), lambda p: True, spool, "fuzz layer"))
    for e in entries or []:
        parts = e.path.split("/")
        assert e.path and ".." not in parts and "" not in parts and "." not in parts, e.path
        if e.kind == HARDLINK:
            assert ".." not in e.linkname.split("/"), e.linkname
        assert e.size >= 0
        if e.kind == FILE:
            assert e.content is not None
        # what the scanner accepts, the layer writer writes, and it reads back the same
        head = tar_header(dataclasses.replace(e, size=0, content=None))
        back = scan_layer(io.BytesIO(head + bytes(1024)), lambda p: False, spool, "rewritten")
        fields = ("path", "kind", "linkname", "mode", "uid", "gid", "uname", "gname", "devmajor", "devminor", "pax")
        assert [tuple(getattr(b, f) for f in fields) for b in back] == [tuple(getattr(e, f) for f in fields)]
    return entries


@pytest.fixture(scope="module")
def spool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-spool")


@FUZZ
@given(data=tar_streams(), sizes=piece_sizes)
def test_tar_structured(data: bytes, sizes: list[int], spool_dir: Path) -> None:
    scan(data, spool_dir, sizes)


@FUZZ
@given(data=st.binary(max_size=3000), sizes=piece_sizes)
def test_tar_random_bytes(data: bytes, sizes: list[int], spool_dir: Path) -> None:
    scan(data, spool_dir, sizes)


# ----------------------------------------------------------------------------------------
# gzip and zstd framing


def drain(blob: bytes, sizes: list[int] | None = None, limit: int = 64 << 20) -> tuple[bytes, bool]:
    """Everything the decompressor hands out (up to ``limit``), and whether it ended cleanly."""
    out: list[bytes] = []
    got = 0

    def run() -> bool:
        nonlocal got
        r = open_decompressed(Pieces(blob, sizes))
        while got < limit:
            d = r.read(1 << 16)
            if not d:
                return True
            assert len(d) <= 1 << 16, "a read hands out at most what was asked"
            out.append(bytes(d))
            got += len(d)
        return True

    ok = clean(run)
    return b"".join(out), bool(ok)


payloads = st.one_of(st.binary(max_size=3000), st.binary(min_size=1, max_size=8).map(lambda b: b * 4000))


@st.composite
def gzip_blobs(draw: st.DrawFn) -> tuple[bytes, bytes, str]:
    """(blob, what it holds, what was done to it): members with flags and fields, then one
    corruption of CRC, length, header, deflate data or the end (or none)."""
    parts = draw(st.lists(payloads, min_size=1, max_size=3))
    blob = b""
    for p in parts:
        flags = draw(st.sampled_from([0, 0, 2, 4, 8, 16, 28, 30]))
        head = b"\x1f\x8b\x08" + bytes([flags]) + b"\0\0\0\0\x00\x03"
        if flags & 4:
            extra = draw(st.binary(max_size=20))
            head += struct.pack("<H", len(extra)) + extra
        if flags & 8:
            head += draw(st.binary(max_size=20)).replace(b"\0", b"") + b"\0"
        if flags & 16:
            head += draw(st.binary(max_size=20)).replace(b"\0", b"") + b"\0"
        if flags & 2:
            head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
        c = zlib.compressobj(draw(st.integers(0, 9)), zlib.DEFLATED, -15)
        blob += head + c.compress(p) + c.flush() + struct.pack("<II", zlib.crc32(p), len(p) & 0xFFFFFFFF)
    whole = b"".join(parts)
    how = draw(st.sampled_from(["intact", "crc", "length", "truncate", "flip", "garbage", "zeros", "method",
                                "flags"]))
    if how == "intact":
        return blob, whole, how
    if how == "zeros":
        return blob + bytes(draw(st.integers(1, 600))), whole, "intact"  # gzip(1) allows zero padding
    b = bytearray(blob)
    if how == "crc":
        b[-8] ^= draw(st.integers(1, 255))
    elif how == "length":
        b[-4:] = struct.pack("<I", draw(st.integers(0, 2**32 - 1)))
    elif how == "truncate":
        del b[draw(st.integers(2, len(b) - 1)):]
    elif how == "flip":
        b[draw(st.integers(2, len(b) - 1))] ^= draw(st.integers(1, 255))
    elif how == "garbage":
        b += draw(st.binary(min_size=1, max_size=30)).lstrip(b"\0") or b"x"
    elif how == "method":
        b[2] = draw(st.integers(0, 255))
    else:
        b[3] = draw(st.integers(0, 255))
    return bytes(b), whole, how if bytes(b) != blob else "intact"


@FUZZ
@given(blob=gzip_blobs(), sizes=piece_sizes)
@example(blob=(gzip.compress(b"x" * 1000)[:-1], b"x" * 1000, "truncate"), sizes=[7])
def test_gzip_framing(blob: tuple[bytes, bytes, str], sizes: list[int]) -> None:
    raw, whole, how = blob
    out, ok = drain(raw, sizes)
    if how == "intact":
        assert ok and out == whole
    elif how in ("crc", "length"):
        assert not ok, "a gzip member whose CRC or length is wrong was read without an error"
    elif how == "truncate" and ok:
        assert whole.startswith(out), "a gzip stream cut inside a member was read without an error"
    # other corruptions the format cannot see (a flipped bit in a stored block, a header
    # field nobody checks) may pass: the layer's digest and diff_id still catch them


@st.composite
def zstd_blobs(draw: st.DrawFn) -> tuple[bytes, bytes, str]:
    parts = draw(st.lists(payloads, min_size=1, max_size=3))
    blob = b""
    for p in parts:
        if rarely(draw, 5):  # a skippable frame before it
            skip = draw(st.binary(max_size=20))
            blob += struct.pack("<II", 0x184D2A50 + draw(st.integers(0, 15)), len(skip)) + skip
        c = zstandard.ZstdCompressor(level=draw(st.integers(1, 5)), write_checksum=draw(st.booleans()),
                                     write_content_size=draw(st.booleans()))
        blob += c.compress(p)
    whole = b"".join(parts)
    how = draw(st.sampled_from(["intact", "truncate", "truncate", "flip", "garbage", "window"]))
    if how == "intact":
        return blob, whole, how
    b = bytearray(blob)
    if how == "truncate":
        del b[draw(st.integers(4, len(b) - 1)):]
    elif how == "flip":
        b[draw(st.integers(4, len(b) - 1))] ^= draw(st.integers(1, 255))
    elif how == "garbage":
        b += draw(st.binary(min_size=1, max_size=30))
    else:  # the frame header's window descriptor, which says how much memory to take
        if b[4] & 0x20 == 0:
            b[5] = draw(st.integers(0, 255))
    return bytes(b), whole, how


@FUZZ
@given(blob=zstd_blobs(), sizes=piece_sizes)
def test_zstd_framing(blob: tuple[bytes, bytes, str], sizes: list[int]) -> None:
    raw, whole, how = blob
    out, ok = drain(raw, sizes)
    if how == "intact":
        assert ok and out == whole
    elif how == "truncate" and ok:
        # python-zstandard's reader ends quietly on a cut frame; only a cut between two
        # frames (a shorter valid stream, which the layer's digests catch) may pass
        assert whole.startswith(out), "a zstd stream cut inside a frame was read without an error"


@FUZZ
@given(head=st.sampled_from([b"\x1f\x8b", b"\x1f\x8b\x08\x00", b"\x28\xb5\x2f\xfd", b"", b"\x28\xb5"]),
       data=st.binary(max_size=2000), sizes=piece_sizes)
def test_decompress_random_bytes(head: bytes, data: bytes, sizes: list[int]) -> None:
    drain(head + data, sizes)


# ----------------------------------------------------------------------------------------
# manifests, indexes, image configs

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
D = "sha256:" + "a" * 64


def _desc(mt: str, **kw: Any) -> dict[str, Any]:
    return {"mediaType": mt, "digest": D, "size": 3, **kw}


TEMPLATES = {
    "oci manifest": {"schemaVersion": 2, "mediaType": model.OCI_MANIFEST, "config": _desc(model.OCI_CONFIG),
                     "layers": [_desc(model.OCI_LAYER_GZIP, annotations={"a": "b"}),
                                _desc(model.OCI_LAYER_ND_GZIP, urls=["https://x/y"])],
                     "annotations": {"org.opencontainers.image.base.name": "x"}},
    "docker manifest": {"schemaVersion": 2, "mediaType": model.DOCKER_MANIFEST,
                        "config": _desc(model.DOCKER_CONFIG), "layers": [_desc(model.DOCKER_LAYER_GZIP)]},
    "index": {"schemaVersion": 2, "mediaType": model.OCI_INDEX, "manifests": [
        _desc(model.OCI_MANIFEST, platform={"os": "linux", "architecture": "amd64"},
              annotations={model.ANNOTATION_REF_NAME: "latest"}),
        _desc(model.OCI_MANIFEST, platform={"os": "linux", "architecture": "arm64", "variant": "v8"})]},
    "config": {"architecture": "amd64", "os": "linux", "variant": "", "created": "2024-01-01T00:00:00Z",
               "config": {"Env": ["PATH=/bin", "A=b"], "Labels": {"com.nvidia.build.id": "1"},
                          "Entrypoint": ["/bin/sh"], "WorkingDir": "/"},
               "rootfs": {"type": "layers", "diff_ids": [D, D]},
               "history": [{"created_by": "a"}, {"created_by": "b", "empty_layer": True}, {"created_by": "c"}]},
}


def _paths(doc: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*at, i))
    return out


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """A valid manifest, index or config with a wrong value (of any type) at a few keys,
    a key deleted or added; sometimes cut short, nested deeply, or not JSON at all."""
    shape = draw(st.sampled_from(["template"] * 6 + ["json", "bytes", "deep", "bigint"]))
    if shape == "json":
        return json.dumps(draw(json_values)).encode()
    if shape == "bytes":
        return draw(st.binary(max_size=200))
    if shape == "deep":
        n = draw(st.integers(100, 100_000))
        return b'{"manifests":' + b"[" * n + b"]" * n + b"}"
    if shape == "bigint":
        return b'{"schemaVersion": 2, "layers": [], "config": {"size": ' + b"9" * 5000 + b"}}"
    doc = json.loads(json.dumps(TEMPLATES[draw(st.sampled_from(sorted(TEMPLATES)))]))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            continue
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        what = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if what == "replace":
            parent[path[-1]] = draw(json_values)
        elif what == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    raw = json.dumps(doc).encode()
    if rarely(draw, 10):
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


def _check_config(cfg: model.ImageConfig) -> None:
    """What the rest of the tool reads from a config must have the types it expects."""
    assert all(isinstance(d, str) for d in cfg.diff_ids)
    assert all(isinstance(e, str) for e in cfg.env)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in cfg.labels.items())
    cfg.env_value("PATH")
    p = cfg.platform
    assert isinstance(p.os, str) and isinstance(p.architecture, str) and isinstance(p.variant, str)
    hist = cfg.layer_history()
    assert len(hist) == len(cfg.diff_ids) and all(h is None or isinstance(h, dict) for h in hist)
    inner = cfg.data.get("config")
    assert inner is None or isinstance(inner, dict)


def _check_descriptor(d: model.Descriptor) -> None:
    assert isinstance(d.media_type, str) and isinstance(d.size, int)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in d.annotations.items())
    assert all(isinstance(u, str) for u in d.urls)
    json.dumps(d.to_json())
    str(d.platform)


@FUZZ
@given(raw=documents(), content_type=st.sampled_from([None, model.OCI_MANIFEST, model.OCI_INDEX, "text/html; x", ""]))
@example(raw=b'{"schemaVersion": 2, "manifests": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", content_type=None)
def test_manifests_indexes_configs(raw: bytes, content_type: str | None) -> None:
    mt = clean(lambda: model.sniff_media_type(raw, content_type))
    assert mt is None or isinstance(mt, str)
    for media_type in (None, model.OCI_MANIFEST, model.DOCKER_MANIFEST):
        m = clean(lambda mt=media_type: model.Manifest.parse(raw, mt))
        if m is not None:
            _check_descriptor(m.config)
            for d in m.layers:
                _check_descriptor(d)
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in m.annotations.items())
            assert m.digest == sha256_digest(raw)
    idx = clean(lambda: model.Index.parse(raw))
    if idx is not None:
        for d in idx.manifests:
            _check_descriptor(d)
        idx.platforms()
        clean(lambda: idx.select(model.Platform("linux", "arm64", "v8")))
    cfg = clean(lambda: model.ImageConfig.parse(raw))
    if cfg is not None:
        _check_config(cfg)


@FUZZ
@given(text=st.text(max_size=40))
def test_platform_and_compression_flags(text: str) -> None:
    p = clean(lambda: model.Platform.parse(text))
    if p is not None:
        assert p.os and p.architecture
    clean(lambda: CompressionSpec.parse(text))


# ----------------------------------------------------------------------------------------
# WWW-Authenticate, and what the client does with a challenge

_params = st.sampled_from(["realm", "service", "scope", "error", "Realm", "x-y", "_", "1bad"])
_values = st.one_of(
    st.sampled_from(["https://auth.test/token", "http://auth.test/t?a=b", "ftp://auth.test/", "auth.test/token",
                     "", "http://", "https://[::1", "https://auth.test:99999/", "//auth.test/t", "file:///etc/passwd",
                     "repository:x:pull", "repository:x:pull,push repository:y:pull", "https://\u00e9.test/",
                     "javascript:alert(1)", "http://auth.test/\x00", "https:// space.test/"]),
    st.text(max_size=30),
)


@st.composite
def challenges(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["Bearer", "bearer", "BASIC", "Basic", "Negotiate", "", "Bearer,"]))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        key, value = draw(_params), draw(_values)
        quote = draw(st.sampled_from(["plain", "quoted", "escaped", "open", "single", "spaces"]))
        if quote == "quoted":
            parts.append(f'{key}="{value}"')
        elif quote == "escaped":
            parts.append(f'{key}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif quote == "open":
            parts.append(f'{key}="{value}')
        elif quote == "single":
            parts.append(f"{key}='{value}'")
        elif quote == "spaces":
            parts.append(f' {key} = "{value}" ')
        else:
            parts.append(f"{key}={value}")
    sep = draw(st.sampled_from([",", ", ", " ", ",,", ";"]))
    return scheme + draw(st.sampled_from([" ", "  ", "\t", ""])) + sep.join(parts)


header_text = st.one_of(challenges(), st.text(max_size=80))


@FUZZ
@given(text=header_text)
@example(text='Bearer realm="a\\')
@example(text="Bearer " + "a=" * 2000)
def test_www_authenticate_parse(text: str) -> None:
    ch = clean(lambda: parse_challenge(text))
    if ch is not None:
        assert isinstance(ch.scheme, str)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in ch.params.items())


class _Raw(io.BytesIO):
    def read(self, n: int | None = -1, decode_content: bool = False) -> bytes:  # urllib3's signature
        return super().read(n)


class _Canned(requests.adapters.BaseAdapter):
    """A registry that challenges with ``header`` and a token service at whatever realm it
    names (any host), answering ``token_body``; no network."""

    def __init__(self, header: str, token_body: bytes, location: str | None):
        super().__init__()
        self.header, self.token_body, self.location = header, token_body, location

    def send(self, request: requests.PreparedRequest, **kw: Any) -> requests.Response:
        resp = requests.Response()
        resp.request = request
        resp.url = request.url or ""
        body = b"{}"
        if (request.url or "").startswith("https://reg.test/v2/"):
            if "Authorization" not in request.headers:
                resp.status_code = 401
                resp.headers["WWW-Authenticate"] = self.header
            elif self.location is not None and "redirected" not in (request.url or ""):
                resp.status_code = 307
                resp.headers["Location"] = self.location
            else:
                resp.status_code = 200
        else:
            resp.status_code = 200
            body = self.token_body
        resp.raw = _Raw(body)
        return resp

    def close(self) -> None:
        pass


token_bodies = st.one_of(
    st.sampled_from([b'{"token": "t"}', b'{"access_token": "t", "expires_in": 300}', b"{}", b"[]", b"null",
                     b'{"token": 5}', b'{"token": "t", "expires_in": "soon"}', b'{"token": "t", "expires_in": 1e400}',
                     b'{"token": "t", "expires_in": -1}', b"<html>", b"[" * 100_000, b'{"token": "a\\nb"}',
                     b'{"token": "t", "expires_in": 1' + b"0" * 400 + b"}", b'{"token": {"a": 1}}']),
    json_values.map(lambda v: json.dumps(v).encode()),
)
locations = st.one_of(st.none(), st.sampled_from(["/v2/redirected", "https://reg.test/v2/redirected", "ftp://x/",
                                                  "http://[::1", "//other.test/v2/redirected", ""]),
                      st.text(max_size=20))


def _canned_client(challenge: str, token_body: bytes, location: str | None) -> RegistryClient:
    """A registry client whose every request is answered by :class:`_Canned`."""
    client = RegistryClient("reg.test", options=ClientOptions(attempts=1))
    session = requests.Session()
    adapter = _Canned(challenge, token_body, location)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    client._local.session = session
    return client


@FUZZ
@given(challenge=header_text, token_body=token_bodies, location=locations)
def test_www_authenticate_client(challenge: str, token_body: bytes, location: str | None) -> None:
    """A registry's challenge (realm, service, scope) and token answer, and its redirects,
    through the client's own request loop: only the tool's errors come out."""
    client = _canned_client(challenge, token_body, location)
    resp = clean(lambda: client.request("GET", "/v2/x/manifests/latest", ("repository:x:pull",), what="manifest x"))
    if resp is not None:
        resp.close()


# ----------------------------------------------------------------------------------------
# auth files (docker config.json, containers auth.json)

_hosts = ["reg.test", "registry-1.docker.io", "nvcr.io"]
b64 = st.one_of(st.text(max_size=20).map(lambda s: base64.b64encode(s.encode("utf-8", "surrogatepass")).decode()),
                st.sampled_from(["", "=", "dXNlcg==", "dXNlcjpwYXNz", "!!!", "dXNl cjpw\nYXNz", "w4g=", "/w==",
                                 "dXNlcjpwYXNz" * 1000]),
                st.text(max_size=12))
auth_entry = st.one_of(
    st.fixed_dictionaries({}, optional={"auth": st.one_of(b64, json_values), "username": st.one_of(st.text(max_size=8),
                           json_values), "password": st.one_of(st.text(max_size=8), json_values),
                           "identitytoken": st.one_of(st.text(max_size=8), json_values), "email": json_values}),
    json_values,
)
helper_names = st.one_of(st.sampled_from(["", "nonexistent-fuzz", "a/b", "../../bin/true", "x\x00y", "-", "a" * 5000,
                                          "\udcff", "secretservice"]),
                         st.text(max_size=12), json_values)
_keys = st.one_of(st.sampled_from(["reg.test", "https://reg.test/v1/", "reg.test/x", "http://reg.test", "docker.io",
                                   "https://index.docker.io/v1/", "nvcr.io", "", "/", "REG.TEST"]),
                  st.text(max_size=12))


@st.composite
def auth_files(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["file"] * 6 + ["json", "bytes", "deep"]))
    if shape == "json":
        return json.dumps(draw(json_values)).encode()
    if shape == "bytes":
        return draw(st.binary(max_size=100))
    if shape == "deep":
        return b'{"auths": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["auths"] = draw(st.one_of(st.dictionaries(_keys, auth_entry, max_size=3), json_values))
    if draw(st.booleans()):
        doc["credHelpers"] = draw(st.one_of(st.dictionaries(_keys, helper_names, max_size=3), json_values))
    if rarely(draw, 4):
        doc["credsStore"] = draw(helper_names)
    return json.dumps(doc).encode()


@pytest.fixture(scope="module")
def no_helpers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty PATH: a helper an auth file names is never found (and never run)."""
    return tmp_path_factory.mktemp("empty-path")


@FUZZ
@given(raw=auth_files(), host=st.sampled_from(_hosts), repo=st.sampled_from(["", "x", "ns/x", "a//b"]))
@example(raw=b'{"auths": {"reg.test": {"auth": 12345}}}', host="reg.test", repo="x")
def test_auth_files(raw: bytes, host: str, repo: str, no_helpers: Path) -> None:
    path = no_helpers.parent / "fuzz-auth.json"
    path.write_bytes(raw)
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = str(no_helpers)
    try:
        cred = clean(lambda: credentials.find_credential(host, repo, credentials.CredentialOptions(
            authfile=str(path))))
    finally:
        os.environ["PATH"] = old
    if cred is not None:
        assert isinstance(cred.username, str) and isinstance(cred.password, str)
        assert "redacted" in repr(cred)


# ----------------------------------------------------------------------------------------
# image references and output names, digests

ref_text = st.one_of(
    st.text(max_size=60),
    st.from_regex(r"\A(docker://|oci:)?[a-zA-Z0-9.:\[\]@/_-]{0,50}\Z"),
    st.builds(lambda a, b, c: a + b + c, st.sampled_from(["", "docker://", "oci:", "dir:", "user:S3cr3t@", "docker://u:S3cr3t@"]),
              st.sampled_from(["reg.test:5000/", "[::1]:5000/", "localhost/", "docker.io/", "[::1/", "x@y/", ""]),
              st.sampled_from(["a/b:t", "a@" + D, "a:t@" + D, "A/B", "a:", "@", "a@sha256:zz", "a:" + "t" * 200,
                               "./p:t", "/p@" + D, "p:t:u", "\udcff", "a\nb"])),
)


@FUZZ
@given(text=ref_text)
@example(text="user:S3cr3t@host:5000/o:x")
@example(text="foo@not-a-digest!!")
def test_references(text: str) -> None:
    for parse in (reference.parse_reference, reference.parse_output):
        try:
            ref = parse(text)
        except OciAssembleError as e:
            # a password before the host is never repeated in a message
            assert "S3cr3t" not in str(e) or reference._userinfo_end(text) < 0, str(e)
            continue
        if isinstance(ref, reference.RegistryRef):
            str(ref), ref.reference, ref.hostname, ref.is_loopback
            assert reference.parse_registry_ref(str(ref)) == ref
        else:
            assert isinstance(ref, reference.LayoutRef) and ref.path
    clean(lambda: credentials.parse_creds(text))


@FUZZ
@given(value=st.one_of(st.none(), st.integers(), st.text(max_size=80),
                       st.text("0123456789abcdefA", min_size=62, max_size=66).map(lambda h: "sha256:" + h)),
       data=st.binary(max_size=300),
       size=st.one_of(st.none(), st.integers(-1, 400)), sizes=piece_sizes)
def test_digests(value: Any, data: bytes, size: int | None, sizes: list[int]) -> None:
    d = clean(lambda: check_digest(value))
    digest = d or sha256_digest(data)
    clean(lambda: verify_bytes(data, digest, size, "blob"))
    r = VerifyingReader(Pieces(data, sizes), digest, size)
    if clean(lambda: (r.drain(), r.verified)[1]):
        assert digest == sha256_digest(data) and size in (None, len(data))


# ----------------------------------------------------------------------------------------
# big claims: bounded time and memory

_CHILD = textwrap.dedent("""
    import io, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]) << 20,) * 2)
    from ociassemble.errors import OciAssembleError
    from ociassemble.layers.compression import open_decompressed
    from ociassemble.layers.tarscan import scan_layer
    from ociassemble.layers.spool import Spool
    import pathlib, tempfile
    data = sys.stdin.buffer.read()
    t = time.monotonic()
    try:
        if sys.argv[3] == "tar":
            scan_layer(io.BytesIO(data), lambda p: True, Spool(pathlib.Path(tempfile.mkdtemp())), "big")
        else:
            r = open_decompressed(io.BytesIO(data))
            while r.read(1 << 20):
                pass
        outcome = "ok"
    except OciAssembleError as e:
        outcome = "error: " + str(e)[:200]
    print(outcome)
    print(time.monotonic() - t)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10)
""")


def bounded(data: bytes, kind: str, limit_mb: int = 1024) -> tuple[str, float, int]:
    """Feed ``data`` to the tar scanner (or a decompressor) in a child under RLIMIT_AS:
    (outcome, seconds, peak RSS in MB). A MemoryError there is a crash, like any other."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), str(limit_mb), kind], input=data,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    outcome, secs, rss = proc.stdout.decode().splitlines()
    return outcome, float(secs), int(rss)


def _pax(records: bytes, then: bytes | None = None) -> bytes:
    return (with_checksum(header(b"PaxHeaders/f", b"x", len(records))) + padded(records)
            + (then or with_checksum(header(b"f", b"0", 0))) + bytes(1024))


def _pax_global(records: int) -> bytes:
    body = b"".join(_rec(f"k{i}", "") for i in range(records))
    return with_checksum(header(b"G", b"g", len(body))) + padded(body)


def _old_sparse_chain(blocks: int) -> bytes:
    head = header(b"s", b"S", 0, magic=b"ustar  \0")
    head[482] = 1  # an extension block follows...
    ext = _sparse_structs([(1, 1)] * 21, 21) + b"\x01" + bytes(7)  # ...and each says another follows
    return with_checksum(head) + ext * blocks


BIG_CLAIMS: dict[str, tuple[Callable[[], bytes], str, str]] = {
    # CPython < 3.11.10 (CVE-2024-6232) parses pax records with regexes that backtrack:
    # 1 MB of digits took hours
    "pax of 1 MB of digits": (lambda: _pax(b"1" * (1 << 20)), "tar", r"corrupt tar header"),
    "pax value of 1 MB of digits": (lambda: _pax(_rec("comment", "1" * ((1 << 20) - 600))), "tar", "ok"),
    "pax sparse 0.0 of digits": (lambda: _pax(_rec("GNU.sparse.size", "10") + b"1" * ((1 << 20) - 600)), "tar",
                                 r"corrupt tar header"),
    "pax record claiming 10 GB": (lambda: _pax(b"10737418240 path=x\n"), "tar", r"corrupt tar header"),
    "pax header claiming 10 GB": (lambda: with_checksum(header(b"P", b"x", 10 * 2**30)) + bytes(1024), "tar",
                                  r"metadata|corrupt"),
    "long name claiming 10 GB": (lambda: with_checksum(header(b"././@LongLink", b"L", 10 * 2**30,
                                                              magic=b"ustar  \0")), "tar", r"metadata|corrupt"),
    "file claiming 2**80 bytes": (lambda: with_checksum(header(b"f", b"0", 2**80)) + bytes(4096), "tar",
                                  r"truncated"),
    # a sparse 1.0 map of 8 M numbers (16 MB): the map is metadata too
    "sparse 1.0 map of 8 M numbers": (
        lambda: _pax(_rec("GNU.sparse.major", "1") + _rec("GNU.sparse.minor", "0")
                     + _rec("GNU.sparse.realsize", "1000"),
                     with_checksum(header(b"s", b"0", (16 << 20) + 8)) + b"4194304\n" + b"0\n" * (8 << 20)),
        "tar", r"sparse|metadata"),
    "old GNU sparse, 64 K extension blocks": (lambda: _old_sparse_chain(65536), "tar", r"sparse|metadata"),
    "old GNU sparse, extension block missing": (lambda: _old_sparse_chain(0) + bytes(100), "tar",
                                                r"truncated|corrupt"),
    # global records are applied to every later entry: 20 K of them over 2,000 entries took
    # 56 s and 818 MB from a 58 KB gzip blob
    "global pax header of 20 K records": (
        lambda: _pax_global(20_000) + b"".join(with_checksum(header(b"f%d" % i, b"0", 0)) for i in range(2000)),
        "tar", r"global pax headers"),
    "gzip bomb, 256 MB of zeros": (lambda: gzip.compress(bytes(256 << 20), 9), "gzip", "ok"),
    "zstd bomb, 256 MB of zeros": (lambda: zstandard.ZstdCompressor(level=3).compress(bytes(256 << 20)), "zstd",
                                   "ok"),
    # a frame header asking for a 2 GB window: refused, not allocated
    "zstd 2 GB window": (lambda: b"\x28\xb5\x2f\xfd\x00" + bytes([(31 - 10) << 3]) + bytes(16), "zstd",
                         r"zstd layer is corrupt"),
}


@pytest.mark.parametrize("case", sorted(BIG_CLAIMS))
def test_big_claims_bounded(case: str) -> None:
    make, kind, expect = BIG_CLAIMS[case]
    outcome, secs, rss = bounded(make(), kind)
    assert re.search(expect, outcome), outcome
    assert secs < 10, f"{case}: {secs:.1f} s"
    assert rss < 400, f"{case}: peak RSS {rss} MB"


# ----------------------------------------------------------------------------------------
# regressions: the smallest inputs that crashed a parser (or passed where they must not), kept


def _scan_error(data: bytes, tmp: Path) -> str:
    try:
        scan_layer(io.BytesIO(data), lambda p: True, Spool(tmp), "layer 0")
    except OciAssembleError as e:
        return str(e)
    return ""


def test_regression_pax_record_of_digits_is_linear(tmp_path: Path) -> None:
    """CPython 3.11.7's tarfile: 40 KB of digits in a pax header took 13 s (quadratic)."""
    start = time.monotonic()
    assert "corrupt tar header" in _scan_error(_pax(b"1" * 40_000), tmp_path)
    assert bounded(_pax(_rec("comment", "1" * 40_000)), "tar")[0] == "ok"
    assert time.monotonic() - start < 5


def test_regression_old_gnu_sparse_extension_block_missing(tmp_path: Path) -> None:
    """IndexError in tarfile's _proc_sparse when the stream ends before an extension block."""
    assert "ends inside a GNU sparse header" in _scan_error(_old_sparse_chain(0) + bytes(100), tmp_path)


@pytest.mark.parametrize("kind", [b"x", b"L"])
def test_regression_chain_of_extension_headers(tmp_path: Path, kind: bytes) -> None:
    """RecursionError: tarfile follows each pax or GNU long-name header by recursion."""
    body = b"ab" if kind == b"L" else b""
    one = with_checksum(header(b"././@LongLink", kind, len(body), magic=b"ustar  \0")) + padded(body)
    data = one * 400 + with_checksum(header(b"f", b"0", 0)) + bytes(1024)
    assert "more than 64 extension headers" in _scan_error(data, tmp_path)


@pytest.mark.parametrize("records, expect", [
    # accepted, then OverflowError / ValueError / UnicodeEncodeError in the layer writer
    (_rec("mtime", "1e400"), "modification time inf"),
    (_rec("mtime", "nan"), "modification time nan"),
    (b"25 SCHILY.xattr.user.\xff=v\n", "keyword is not UTF-8"),
    # accepted and written to the new layer, which Go's archive/tar (docker) then refuses
    (_rec("path", "a\0b"), "holds a NUL byte"),
])
def test_regression_pax_values_the_writer_cannot_write(tmp_path: Path, records: bytes, expect: str) -> None:
    assert expect in _scan_error(_pax(records), tmp_path)


def test_regression_zstd_stream_cut_inside_a_frame() -> None:
    """python-zstandard's reader ended quietly with what it had: a cut layer read as whole."""
    blob = zstandard.ZstdCompressor(write_checksum=True).compress(bytes(range(256)) * 400)
    for cut in (5, len(blob) // 2, len(blob) - 1):
        assert not drain(blob[:cut])[1], cut
    assert drain(blob) == (bytes(range(256)) * 400, True)


def test_regression_zstd_stream_starting_with_a_skippable_frame() -> None:
    """Taken for an uncompressed layer: only the zstd frame magic was recognised."""
    data = b"hello" * 100
    blob = struct.pack("<II", 0x184D2A5A, 3) + b"abc" + zstandard.ZstdCompressor().compress(data)
    assert drain(blob) == (data, True)


@pytest.mark.parametrize("raw", [
    b'{"manifests": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # RecursionError
    b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": [], '
    b'"config": {"digest": "' + D.encode() + b'", "size": 1, "annotations": [1]}}',  # TypeError
    b'{"manifests": [{"digest": "' + D.encode() + b'", "size": 1, "platform": ["linux"]}]}',  # AttributeError
    b'{"manifests": [{"digest": "' + D.encode() + b'", "size": 1, "urls": 5}]}',  # TypeError
    b'{"rootfs": {"diff_ids": []}, "config": {"Env": "PATH=/bin"}}',  # env: a list of characters
    b'{"rootfs": {"diff_ids": []}, "config": {"Labels": ["a"]}}',  # ValueError in .labels
    b'{"rootfs": {"diff_ids": []}, "config": []}',  # AttributeError in .env
    b'{"rootfs": {"diff_ids": []}, "history": 5}',  # TypeError in layer_history()
])
def test_regression_documents_of_the_wrong_shape(raw: bytes) -> None:
    for parse in (model.Manifest.parse, model.Index.parse, model.ImageConfig.parse):
        doc = clean(lambda parse=parse: parse(raw))
        if isinstance(doc, model.ImageConfig):
            _check_config(doc)
        elif isinstance(doc, model.Index):
            for d in doc.manifests:
                _check_descriptor(d)
        elif doc is not None:
            for d in (doc.config, *doc.layers):
                _check_descriptor(d)
    assert model.ImageConfig.parse(b'{"rootfs": {"diff_ids": []}, "config": {"Env": null, "Labels": null}}').env == []


@pytest.mark.parametrize("name", ["x\x00y", "../../bin/sh", "a" * 5000])
def test_regression_credential_helper_names(tmp_path: Path, name: str) -> None:
    """ValueError (embedded null byte) or OSError (name too long) from subprocess; a path
    would run a program the name points to."""
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"credsStore": name}))
    with pytest.raises(OciAssembleError, match=r"not a helper's name|cannot run"):
        credentials.find_credential("reg.test", "x", credentials.CredentialOptions(authfile=str(path)))


@pytest.mark.parametrize("challenge, token_body, location, expect", [
    ('Bearer realm="auth.test/token"', b'{"token": "t"}', None, "not an http"),  # MissingSchema
    ('Bearer realm="ftp://auth.test/"', b'{"token": "t"}', None, "not an http"),  # InvalidSchema
    ('Bearer realm="https://auth.test:99999/"', b'{"token": "t"}', None, "not an http"),  # InvalidURL
    ('Bearer realm="https://auth.test/t"', b'{"token": "a\\nb"}', None, "not printable"),  # InvalidHeader
    ('Bearer realm="https://auth.test/t"', b'{"token": "t", "expires_in": 1' + b"0" * 400 + b"}", None,
     "without a token"),  # OverflowError
    ('Bearer realm="https://auth.test/t"', b"[" * 100_000, None, "without a token"),  # RecursionError (long run)
    ('Bearer realm="https://auth.test/t"', b'{"token": "t"}', "ftp://x/", "not an http"),  # InvalidSchema
    ('Bearer realm="https://auth.test/t"', b'{"token": "t"}', "http://[::1", "not an http"),  # ValueError
])
def test_regression_registry_answers(challenge: str, token_body: bytes, location: str | None, expect: str) -> None:
    client = _canned_client(challenge, token_body, location)
    with pytest.raises(OciAssembleError, match=expect) as e:
        client.request("GET", "/v2/x/manifests/latest", ("repository:x:pull",), what="manifest x")
    assert "a\nb" not in str(e.value)
