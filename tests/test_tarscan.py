"""The layer tar reader: the same entries and bodies as ``tarfile`` reads, whatever pieces
the decompressed stream arrives in, and one clear error for a broken or hostile stream."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
from pathlib import Path

import pytest

from ociassemble.errors import UnsafeTarEntry
from ociassemble.layers.spool import Spool
from ociassemble.layers.tarscan import scan_layer


class _Pieces:
    """A stream that hands out pieces of random sizes, as a decompressor may."""

    def __init__(self, data: bytes, seed: int = 0, most: int = 3000):
        self._data = memoryview(data)
        self._pos = 0
        self._rng = random.Random(seed)
        self._most = most

    def read(self, n: int = -1) -> bytes:
        k = min(n if n >= 0 else len(self._data), self._rng.randint(1, self._most))
        out = bytes(self._data[self._pos : self._pos + k])
        self._pos += len(out)
        return out


def _body(name: str, size: int) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // 32 + 1))[:size]


def _archive(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        def add(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, **kw: object) -> None:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.size = size if kind == tarfile.REGTYPE else 0
            for k, v in kw.items():
                setattr(ti, k, v)
            tf.addfile(ti, io.BytesIO(_body(name, size)) if ti.size else None)

        add("opt", tarfile.DIRTYPE, mode=0o755)
        add("opt/small", size=10)
        add("opt/empty")
        add("opt/crosses-pieces", size=70_000)
        add("opt/" + "long-directory-name/" * 8 + "file", size=513)  # ustar prefix / GNU long name / pax path
        add("opt/link", tarfile.SYMTYPE, linkname="../" + "x" * 150)  # GNU long link / pax linkpath
        add("opt/hard", tarfile.LNKTYPE, linkname="opt/small")
        add("opt/odd-ids", size=3, uid=70000, gid=70001, uname="builder", gname="staff")
        add("opt/fifo", tarfile.FIFOTYPE)
        add("opt/dev", tarfile.CHRTYPE, devmajor=1, devminor=3)
        if fmt == tarfile.PAX_FORMAT:
            add("opt/xattr", size=4, pax_headers={"SCHILY.xattr.security.capability": "\x01\x02",
                                                     "SCHILY.xattr.user.note": "é"})
            add("opt/ünïcödé", size=5)
        add("opt/last", size=512)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar", "gnu", "pax"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_entries_and_bodies_as_tarfile(tmp_path: Path, fmt: int, seed: int) -> None:
    if fmt == tarfile.USTAR_FORMAT:
        with pytest.raises(ValueError):  # ustar cannot hold the long link: leave it to the others
            _archive(fmt)
        return
    raw = _archive(fmt)
    spool = Spool(tmp_path / "spool", memory_cap=40_000, deflate_level=2 if seed else None)
    got = scan_layer(_Pieces(raw, seed), lambda p: "small" not in p, spool)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        want = [m for m in tf.getmembers()]
        assert [e.path for e in got] == [m.name for m in want]
        for e, m in zip(got, want, strict=True):
            assert (e.mode, e.uid, e.gid, e.uname, e.gname, e.mtime) == (m.mode, m.uid, m.gid, m.uname, m.gname,
                                                                      m.mtime)
            assert (e.devmajor, e.devminor) == (m.devmajor, m.devminor)
            if m.issym():
                assert e.linkname == m.linkname
            if m.isreg():
                assert e.size == m.size
                body = tf.extractfile(m).read()  # type: ignore[union-attr]
                if "small" in e.path:
                    assert e.content is None  # not wanted: not spooled
                else:
                    with spool.open(e.content) as f:  # type: ignore[arg-type]
                        assert f.read() == body
    xattr = next((e for e in got if e.path == "opt/xattr"), None)
    if fmt == tarfile.PAX_FORMAT:
        assert xattr is not None and xattr.pax["SCHILY.xattr.user.note"] == "é"


def test_spooled_gzip_member_does_not_depend_on_the_pieces(tmp_path: Path) -> None:
    """The compressor's output depends on how its input is cut; the spool re-cuts it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("opt/big")
        ti.size = (3 << 20) + 77
        tf.addfile(ti, io.BytesIO(_body("big", ti.size)))
    members = set()
    for seed, most in ((0, 3000), (1, 700_000), (2, 5 << 20)):
        spool = Spool(tmp_path / f"s{seed}", deflate_level=2, hash_bodies=False)
        (e,) = scan_layer(_Pieces(buf.getvalue(), seed, most), lambda p: True, spool)
        member = spool.member(e.content)  # type: ignore[arg-type]
        assert member is not None
        members.add(member[0].read_bytes())
    assert len(members) == 1


def _header(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.type = size, kind
    return ti.tobuf(tarfile.GNU_FORMAT)


@pytest.mark.parametrize(("raw", "message"), [
    (_header("a", 3) + b"abc".ljust(512, b"\0") + b"x" * 512, "corrupt tar header at offset 1024"),
    (_header("a", 5000) + b"y" * 600, "ends in the middle of entry 'a'"),
    (_header("a", 1) + b"z", "ends in the middle of entry 'a'"),
    (_header("a", 3)[:300], "corrupt tar header at offset 0"),
    (_header("././@LongLink", 100 << 20, tarfile.GNUTYPE_LONGNAME), "claims 104857600 bytes of metadata"),
], ids=["bad-checksum", "short-body", "no-padding", "short-header", "huge-long-name"])
def test_broken_and_hostile_streams_are_refused(tmp_path: Path, raw: bytes, message: str) -> None:
    with pytest.raises(UnsafeTarEntry, match=message):
        scan_layer(_Pieces(raw), lambda p: True, Spool(tmp_path))


def test_negative_size_is_refused(tmp_path: Path) -> None:
    block = bytearray(_header("a", 0))
    block[124:136] = b"\xff" * 12  # base-256 -1
    block[148:156] = b"        "
    block[148:155] = f"{sum(block):06o}\0".encode()
    with pytest.raises(UnsafeTarEntry, match="negative size"):
        scan_layer(_Pieces(bytes(block) + b"\0" * 1024), lambda p: True, Spool(tmp_path))


def test_empty_stream_and_missing_end_blocks(tmp_path: Path) -> None:
    assert scan_layer(_Pieces(b""), lambda p: True, Spool(tmp_path)) == []
    raw = _header("a", 3) + b"abc".ljust(512, b"\0")  # no end-of-archive blocks, as some writers do
    (e,) = scan_layer(_Pieces(raw), lambda p: True, Spool(tmp_path))
    assert e.path == "a" and e.size == 3


def test_a_sparse_file_claiming_huge_holes_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """1 KiB of layer claiming a 100 GB sparse file: its holes would be written out as zeros
    (found by fuzzing, when a run filled 17 GB of disk). Refused with one clear line."""
    body = b"1\n0\n512\n".ljust(512, b"\0") + b"x" * 512  # GNU sparse 1.0: the map, then one data block
    info = tarfile.TarInfo("GNUSparseFile.0/big")
    info.size = len(body)
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "big",
                        "GNU.sparse.realsize": str(100 << 30)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(body))
    spool = tmp_path / "spool"
    with pytest.raises(UnsafeTarEntry, match=r"sparse file of 107,374,182,400 bytes with only 512 stored"):
        scan_layer(io.BytesIO(buf.getvalue()), lambda _p: True, Spool(spool), "layer 0")
    assert not any(spool.iterdir())
