"""Pure-logic units: references, env expansion, merge semantics, hostile entries, digests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ociassemble.engine.assemble import common_prefix
from ociassemble.engine.recipe import set_env
from ociassemble.errors import DigestMismatch, InvalidReference, OciAssembleError, UnsafeTarEntry
from ociassemble.layers.spool import Spool
from ociassemble.layers.tarscan import scan_layer
from ociassemble.layers.tree import Tree, resolve
from ociassemble.oci.changeset import DIR, FILE, Entry
from ociassemble.oci.digest import VerifyingReader, sha256_digest
from ociassemble.oci.reference import LayoutRef, RegistryRef, parse_output, parse_reference
from ociassemble.presets.dockerfile import expand, pairs


@pytest.mark.parametrize(("text", "want"), [
    ("ubuntu", RegistryRef("registry-1.docker.io", "library/ubuntu", "latest")),
    ("docker://ubuntu:22.04", RegistryRef("registry-1.docker.io", "library/ubuntu", "22.04")),
    ("docker.io/me/x", RegistryRef("registry-1.docker.io", "me/x", "latest")),
    ("nvcr.io/nvidia/tritonserver:24.05-py3", RegistryRef("nvcr.io", "nvidia/tritonserver", "24.05-py3")),
    ("localhost:5000/a/b@sha256:" + "a" * 64, RegistryRef("localhost:5000", "a/b", None, "sha256:" + "a" * 64)),
    ("oci:/tmp/x:tag", LayoutRef("/tmp/x", "tag")),
    ("oci:./rel", LayoutRef("./rel", None)),
])
def test_parse_reference(text: str, want: object) -> None:
    assert parse_reference(text) == want


def test_loopback_is_plain_http() -> None:
    assert parse_reference("127.0.0.1:5000/a").is_loopback  # type: ignore[union-attr]
    assert parse_reference("localhost:5000/a").is_loopback  # type: ignore[union-attr]
    assert not parse_reference("nvcr.io/a").is_loopback  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["", "UPPER/case", "a/b:bad tag", "x@sha256:zz", "host:5000/a:"])
def test_bad_references(bad: str) -> None:
    with pytest.raises(InvalidReference):
        parse_reference(bad)


def test_output_bare_name_is_local_layout() -> None:
    assert parse_output("tritonserver") == LayoutRef("./tritonserver", "latest")
    assert parse_output("tritonserver:custom") == LayoutRef("./tritonserver", "custom")
    assert isinstance(parse_output("registry.example.com/me/triton:24.05-onnx"), RegistryRef)


def test_env_expansion_like_dockerfile() -> None:
    from ociassemble.presets.build import Instruction

    env = {"PATH": "/usr/bin", "A": "1"}
    updates = []
    for line in ['PATH="/opt/bin:${PATH}"', "LD_LIBRARY_PATH=/x:$LD_LIBRARY_PATH", "A=2", "B=$A-${A}",
                 "C='$A'\\ \\$A\"\\$A\"", "D=${NOPE:-dflt}${A:+set}${NOPE:+x}"]:
        k, _, v = line.partition("=")
        for key, value in pairs(Instruction("ENV", 1, {}, [k, v], False, "ENV " + line), env, "Dockerfile"):
            env[key] = value
            updates.append((key, value))
    assert set_env(["PATH=/usr/bin", "A=1"], updates) == [
        "PATH=/opt/bin:/usr/bin", "A=2", "LD_LIBRARY_PATH=/x:", "B=2-2", "C=$A $A$A", "D=dfltset"]
    with pytest.raises(OciAssembleError, match="Dockerfile:1: ENV: unterminated"):
        expand('"open', {}, "Dockerfile:1: ENV")
    with pytest.raises(OciAssembleError, match="is not supported"):
        expand("${A/x/y}", env, "Dockerfile:1: ENV")


def test_common_prefix() -> None:
    assert common_prefix(["a", "b", "c"], ["a", "b", "x", "y"]) == 2
    assert common_prefix(["a"], ["b"]) == 0


def _e(path: str, kind: str = FILE, **kw: object) -> Entry:
    return Entry(path, kind, **kw)  # type: ignore[arg-type]


def test_whiteouts_apply_to_lower_layers_only_whatever_the_order() -> None:
    t = Tree()
    t.apply([_e("d", DIR), _e("d/a", content="x"), _e("d/b", content="y")])
    # the opaque marker comes after the new entry in the tar: the new entry must survive
    t.apply([_e("d/c", content="z"), _e("d/.wh..wh..opq"), _e("d/.wh.a")])
    d = t.get("d")
    assert d is not None and d.children is not None
    assert sorted(d.children) == ["c"]
    assert "d" in t.opaque


def test_dir_replaced_by_file_and_back() -> None:
    t = Tree()
    t.apply([_e("x", DIR), _e("x/inner", content="1")])
    t.apply([_e("x", content="2")])
    assert t.get("x").kind == FILE and t.get("x/inner") is None  # type: ignore[union-attr]
    t.apply([_e("x", DIR)])
    assert t.get("x").kind == DIR and t.get("x/inner") is None  # type: ignore[union-attr]


def test_same_path_twice_in_one_layer_last_wins() -> None:
    t = Tree()
    t.apply([_e("f", content="first"), _e("f", content="second")])
    assert t.get("f").inode.entry.content == "second"  # type: ignore[union-attr]


def test_hardlink_keeps_body_after_target_rewritten() -> None:
    t = Tree()
    t.apply([_e("a", content="old"), _e("b", "hardlink", linkname="a")])
    t.apply([_e("a", content="new")])
    assert t.get("b").inode.entry.content == "old"  # type: ignore[union-attr]
    assert t.get("a").inode.entry.content == "new"  # type: ignore[union-attr]


def test_entry_beneath_symlink_is_refused() -> None:
    t = Tree()
    t.apply([_e("etc", DIR), _e("link", "symlink", linkname="/etc")])
    with pytest.raises(UnsafeTarEntry, match="beneath 'link', which is a symlink"):
        t.apply([_e("link/passwd", content="evil")])


def test_resolve_like_copy() -> None:
    t = Tree()
    t.apply([_e("usr", DIR), _e("usr/lib", DIR), _e("usr/lib/libx.so.1.2", content="x"),
             _e("usr/lib/libx.so.1", "symlink", linkname="libx.so.1.2"),
             _e("lib", "symlink", linkname="usr/lib"),
             _e("abs", "symlink", linkname="/lib/../../../usr/lib/libx.so.1")])
    assert resolve(t, "lib/libx.so.1") == "usr/lib/libx.so.1.2"
    assert resolve(t, "abs") == "usr/lib/libx.so.1.2"
    assert resolve(t, "abs", follow_last=False) == "abs"
    assert resolve(t, "missing/x") is None


def _tar(entries: list[tarfile.TarInfo]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti in entries:
            tf.addfile(ti, io.BytesIO(b"x" * ti.size) if ti.size else None)
    buf.seek(0)
    return buf


def test_dotdot_entry_is_refused(tmp_path: Path) -> None:
    ti = tarfile.TarInfo("opt/../../etc/passwd")
    ti.size = 1
    with pytest.raises(UnsafeTarEntry, match="climbs out of the root"):
        scan_layer(_tar([ti]), lambda p: True, Spool(tmp_path))


def test_absolute_and_dot_names_are_normalised(tmp_path: Path) -> None:
    a, b = tarfile.TarInfo("/abs/file"), tarfile.TarInfo("./rel/file")
    a.size = b.size = 1
    entries = scan_layer(_tar([a, b]), lambda p: True, Spool(tmp_path))
    assert [e.path for e in entries] == ["abs/file", "rel/file"]
    assert all(e.content == sha256_digest(b"x") for e in entries)


def test_verifying_reader_catches_wrong_bytes_and_truncation() -> None:
    data = b"hello world"
    good = VerifyingReader(io.BytesIO(data), sha256_digest(data), len(data))
    assert good.read() == data and good.verified
    with pytest.raises(DigestMismatch, match="hash to"):
        VerifyingReader(io.BytesIO(b"hello there"), sha256_digest(data), len(data)).read()
    with pytest.raises(DigestMismatch, match="cut short"):
        VerifyingReader(io.BytesIO(data[:5]), sha256_digest(data), len(data)).read()
    with pytest.raises(DigestMismatch, match="longer than"):
        VerifyingReader(io.BytesIO(data + b"!"), sha256_digest(data), len(data)).read(100)


class _BigLayer:
    """A tar stream holding a 9 GiB file (zeros, produced on the fly) and then a small one."""

    SIZE = (9 << 30) + 3

    def __init__(self) -> None:
        ti = tarfile.TarInfo("opt/big.bin")
        ti.size = self.SIZE
        after = tarfile.TarInfo("opt/after")
        after.size = 5
        self._head = ti.tobuf(tarfile.PAX_FORMAT)
        self._tail = after.tobuf(tarfile.PAX_FORMAT) + b"hello".ljust(512, b"\0") + b"\0" * 1024
        self._zero = bytes(1 << 20)
        self._left = self.SIZE + (-self.SIZE) % 512
        self._stage = 0

    def read(self, n: int = -1) -> bytes:
        if self._stage == 0:
            self._stage = 1
            return self._head
        if self._left > 0:
            k = min(self._left, len(self._zero))
            self._left -= k
            return self._zero[:k]
        if self._stage == 1:
            self._stage = 2
            return self._tail
        return b""


def test_file_over_8gib_uses_pax_size_both_ways(tmp_path: Path) -> None:
    entries = scan_layer(_BigLayer(), lambda p: p == "opt/after", Spool(tmp_path))
    assert [(e.path, e.size) for e in entries] == [("opt/big.bin", _BigLayer.SIZE), ("opt/after", 5)]
    assert entries[1].content == sha256_digest(b"hello")
    from ociassemble.layers.write import _tarinfo

    header = _tarinfo(Entry("opt/big.bin", FILE, size=_BigLayer.SIZE, uid=3_000_000, gid=2_500_000)
                      ).tobuf(tarfile.PAX_FORMAT)
    assert b"size=9663676419" in header and b"uid=3000000" in header
    back = tarfile.TarInfo.frombuf(header[1024:1536], "utf-8", "surrogateescape")  # the ustar header itself
    assert back.size == 0  # ustar field left empty: readers must take the PAX record
    parsed = tarfile.open(fileobj=io.BytesIO(header + b"\0" * 1024), mode="r|")
    first = parsed.next()
    assert first is not None and first.size == _BigLayer.SIZE and first.uid == 3_000_000


def test_device_nodes_keep_their_numbers(tmp_path: Path) -> None:
    from ociassemble.layers.compression import CompressionSpec, open_decompressed
    from ociassemble.layers.tarscan import BLOCK, CHAR, FIFO
    from ociassemble.layers.write import OutEntry, write_layer

    spool = Spool(tmp_path / "spool")
    items = [OutEntry(Entry("dev/null", CHAR, mode=0o666, devmajor=1, devminor=3)),
             OutEntry(Entry("dev/sda", BLOCK, mode=0o660, gid=6, devmajor=8, devminor=0)),
             OutEntry(Entry("run/fifo", FIFO, mode=0o600))]
    written = write_layer(items, tmp_path / "layer.tar.gz", spool, CompressionSpec.parse("gzip"))
    with written.open() as f:
        back = scan_layer(open_decompressed(f), lambda p: True, spool)
    assert [(e.path, e.kind, e.mode, e.gid, e.devmajor, e.devminor) for e in back] == [
        ("dev/null", CHAR, 0o666, 0, 1, 3), ("dev/sda", BLOCK, 0o660, 6, 8, 0), ("run/fifo", FIFO, 0o600, 0, 0, 0)]


def test_spool_keeps_small_bodies_in_memory_up_to_its_cap(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", memory_cap=10_000)
    small = [bytes([i]) * 4000 for i in range(4)]  # 16 000 bytes: the first two fit under the cap
    digests = [spool.put(io.BytesIO(b), len(b)) for b in small]
    assert digests == [sha256_digest(b) for b in small]
    on_disk = sorted(p.name for p in (tmp_path / "spool").iterdir())
    assert on_disk == sorted(d[7:] for d in digests[2:])
    big = b"z" * (128 << 10)  # over the small-body size: always a file
    d = spool.put(io.BytesIO(big), len(big))
    assert (tmp_path / "spool" / d[7:]).is_file()
    for b, dg in zip([*small, big], [*digests, d], strict=True):
        with spool.open(dg) as f:
            assert f.read() == b
    with pytest.raises(OSError, match="ended before"):
        spool.put(io.BytesIO(b"short"), 10)


def test_public_api_names_resolve_lazily() -> None:
    """``__all__`` is the library API; every name resolves, and importing the package alone
    loads no engine module (the command's start-up stays light)."""
    import subprocess
    import sys

    code = ("import sys, ociassemble as o; assert 'ociassemble.presets.compose' not in sys.modules; "
            "[getattr(o, n) for n in o.__all__]; assert o.compose.__module__ == 'ociassemble.presets.compose'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_store_removes_what_killed_runs_left_in_every_folder_it_writes(tmp_path: Path) -> None:
    """A run killed while writing a library-check record or a layer index leaves a ``.part-*``
    file there; the next run's clean-up removes it (a live run's locked one stays)."""
    from ociassemble.transport.atomic import part_file
    from ociassemble.transport.store import Store

    store = Store(tmp_path / "store")
    stale = []
    for folder in ("libcheck", "lindex", "index", "memo"):
        (tmp_path / "store" / folder).mkdir(exist_ok=True)
        left = tmp_path / "store" / folder / ".part-killedrun"
        left.write_bytes(b"half")
        stale.append(left)
    with part_file(tmp_path / "store" / "libcheck") as (_fd, live):
        store.remove_stale()
        assert live.exists()
    assert not [p for p in stale if p.exists()]
