"""New gzip layers: bodies spliced in as the spool's gzip members, read back as one stream."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from ociassemble.layers.compression import GZIP_LEVEL, CompressionSpec, open_decompressed
from ociassemble.layers.spool import Spool
from ociassemble.layers.tarscan import scan_layer
from ociassemble.layers.write import OutEntry, _write_single, whiteout_entry, write_layer
from ociassemble.oci.changeset import DIR, FILE, HARDLINK, SYMLINK, Entry, sort_key
from ociassemble.transport.segments import Segment, SegmentReader

GZIP = CompressionSpec.parse("gzip")


def _body(n: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 64  # compressible, distinct per seed
    return (block * (n // len(block) + 1))[:n]


def _items(spool: Spool) -> list[OutEntry]:
    bodies = {"opt/t/big.so": _body(300_001, 1), "opt/t/lib/b.so": _body(2_000_000, 2),
              "opt/t/small.txt": b"hello\n", "opt/t/exact": _body(1024 * 100, 3)}
    out = [OutEntry(Entry("opt/t", DIR, mode=0o755, mtime=5)),
           OutEntry(Entry("opt/t/lib", DIR, mode=0o755, uid=1000, gid=1000, mtime=6)),
           OutEntry(Entry("opt/t/link", SYMLINK, linkname="big.so", mtime=7)),
           OutEntry(Entry("opt/t/empty", FILE, mode=0o600, mtime=8, content=spool.put(io.BytesIO(b""), 0))),
           whiteout_entry("opt/t/gone", 9)]
    for path, data in bodies.items():
        e = Entry(path, FILE, mode=0o755, size=len(data), mtime=10, pax={"user.x": "1"} if "big" in path else {})
        e.content = spool.put(io.BytesIO(data), len(data))
        out.append(OutEntry(e))
    first = next(o for o in out if o.path == "opt/t/big.so").entry
    out.append(OutEntry(Entry("opt/t/hard", HARDLINK, linkname=first.path, mtime=10)))
    return out


def _blob(segments: list[Segment]) -> bytes:
    with SegmentReader(segments) as r:
        return r.read()


def test_gzip_layer_is_the_same_tar_stream_with_bodies_spliced_in(tmp_path: Path) -> None:
    plain_spool = Spool(tmp_path / "plain")
    ordered = sorted(_items(plain_spool), key=lambda o: sort_key(o.path))
    reference = _write_single(ordered, tmp_path / "ref.tar.gz", plain_spool, GZIP)
    ref_tar = gzip.decompress(_blob(reference.segments))

    spool = Spool(tmp_path / "deflated", deflate_level=GZIP_LEVEL, hash_bodies=False)
    items = _items(spool)
    written = write_layer(items, tmp_path / "layer-0.tar", spool, GZIP)
    blob = _blob(written.segments)
    assert written.size == len(blob) and written.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    tar = gzip.decompress(blob)  # multi-member: gzip(1) semantics
    assert tar == ref_tar  # byte for byte what tarfile writes, so the diff_id is too
    assert written.diff_id == reference.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    # the members the spool compressed while "reading" are inside the blob unchanged
    members = [spool.member(o.entry.content) for o in items if o.entry.kind == FILE and o.entry.size > 64 << 10]
    assert len(members) == 3 and all(m is not None for m in members)
    for m in members:
        assert m is not None and m[0].read_bytes() in blob
    assert len(written.segments) == 2 * len(members) + 1  # runs between and after the spliced bodies
    back = scan_layer(open_decompressed(io.BytesIO(blob)), lambda p: True, Spool(tmp_path / "back"))
    assert [e.path for e in back] == sorted(o.path for o in items)
    # the same entries give the same blob
    again = write_layer(_items(spool), tmp_path / "layer-1.tar", spool, GZIP)
    assert again.digest == written.digest


def test_a_damaged_spooled_member_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", deflate_level=GZIP_LEVEL, hash_bodies=False)
    items = _items(spool)
    big = next(o.entry for o in items if o.path == "opt/t/lib/b.so")
    member = spool.member(big.content or "")
    assert member is not None
    data = member[0].read_bytes()
    member[0].write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"opt/t/lib/b\.so.*damaged"):
        write_layer(items, tmp_path / "layer.tar", spool, GZIP)


def test_spool_modes(tmp_path: Path) -> None:
    big = _body(200_000, 4)
    hashed = Spool(tmp_path / "h", deflate_level=GZIP_LEVEL)
    d = hashed.put(io.BytesIO(big), len(big))
    assert d == "sha256:" + hashlib.sha256(big).hexdigest()
    with hashed.open(d) as f:
        assert f.read() == big  # the member holds tar padding too; reading gives the body only
    m = hashed.member(d)
    assert m is not None and gzip.decompress(m[0].read_bytes()) == big + b"\0" * (-len(big) % 512)
    m[0].write_bytes(m[0].read_bytes()[:1000])
    with hashed.open(d) as f, pytest.raises(OSError, match="truncated"):
        f.read()
    numbered = Spool(tmp_path / "n", deflate_level=GZIP_LEVEL, hash_bodies=False)
    ids = [numbered.put(io.BytesIO(big), len(big)) for _ in range(2)]
    assert ids == ["spool:1", "spool:2"]
    small = numbered.put(io.BytesIO(b"tiny"), 4)  # in memory: still named by its sha256
    assert small == "sha256:" + hashlib.sha256(b"tiny").hexdigest()
    assert numbered.member(small) is None
    plain = Spool(tmp_path / "p")
    d = plain.put(io.BytesIO(big), len(big))
    assert plain.member(d) is None and plain.path(d).read_bytes() == big


def test_segment_reader_seeks_and_reads_across_pieces(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"0123456789")
    b.write_bytes(os.urandom(100))
    segs = [Segment(a, 2, 5), Segment(b, 0, 100), Segment(a, 0, 0), Segment(a, 9, 1)]
    want = b"23456" + b.read_bytes() + b"9"
    with SegmentReader(segs) as r:
        assert len(r) == len(want) and r.single_file is None
        assert r.read(3) == want[:3] and r.read(4) == want[3:7]
        r.seek(50)
        assert r.tell() == 50 and r.read() == want[50:]
        assert r.read(10) == b""
        r.seek(-2, 2)
        assert r.read() == want[-2:]
    with SegmentReader([Segment(b, 0, 100)]) as whole:
        assert whole.single_file == b
    b.write_bytes(b"short")
    with SegmentReader(segs) as r, pytest.raises(OSError, match="shorter"):
        r.read()


def test_zstd_layers_are_one_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    written = write_layer(_items(spool), tmp_path / "z.tar.zst", spool, CompressionSpec.parse("zstd"))
    assert written.segments == [Segment(tmp_path / "z.tar.zst", 0, (tmp_path / "z.tar.zst").stat().st_size)]
    with written.open() as f:
        names = sorted(m.name for m in tarfile.open(fileobj=io.BytesIO(_zstd(f.read())), mode="r:"))
    assert "opt/t/lib/b.so" in names


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
