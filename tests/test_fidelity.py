"""Issue 3's named cases: each a stack composed and checked against umoci's unpack of full.

Layers come from our fixture writer (Python tarfile, PAX) and, where a format detail
matters, from GNU tar itself (GNU long names, base-256 ids, sparse files, raw bytes).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from fixtures.stacks import ROOT, F, LayerDef
from tests import fidelity
from tests.conftest import run_cli
from tests.consumers import rootless_owner

A, B, C = (f"{ROOT}/backends/{x}" for x in "abc")
LIB = f"{ROOT}/lib"


def compose_ok(tmp: Path, stack: list[LayerDef], backends: list[str], **kw: object) -> fidelity.Outcome:
    o = fidelity.run(tmp, stack, backends, **kw)  # type: ignore[arg-type]
    fidelity.check(o)
    assert o.result is not None
    return o


def L(*files: F) -> LayerDef:
    return LayerDef(list(files), "test layer")


def tree_of(o: fidelity.Outcome, path: str) -> dict[str, tuple]:  # type: ignore[type-arg]
    assert o.out_root is not None
    from tests.consumers import fingerprint

    return fingerprint(o.out_root, path)


# -- whiteouts, opaque directories, replacement ------------------------------------------

def test_whiteout_and_opaque_in_later_layers(tmp_path: Path) -> None:
    stack = [L(F(f"{A}/keep", data=b"k"), F(f"{A}/gone", data=b"g"), F(f"{A}/sub", "dir"),
               F(f"{A}/sub/old", data=b"o")),
             L(F(f"{A}/gone", "whiteout"), F(f"{A}/sub", "dir"), F(f"{A}/sub", "opaque"),
               F(f"{A}/sub/new", data=b"n")),
             L(F(f"{A}/libtriton_a.so", "whiteout"))]
    o = compose_ok(tmp_path, stack, ["a"])
    got = tree_of(o, A)
    assert f"{A}/keep" in got and f"{A}/sub/new" in got
    assert not {f"{A}/gone", f"{A}/sub/old", f"{A}/libtriton_a.so"} & set(got)


def test_dir_replaced_by_file_and_back(tmp_path: Path) -> None:
    stack = [L(F(f"{A}/d", "dir"), F(f"{A}/d/inner", data=b"1"), F(f"{B}/f", data=b"file")),
             L(F(f"{A}/d", data=b"now a file"), F(f"{B}/f", "dir"), F(f"{B}/f/child", data=b"c")),
             L(F(f"{A}/d", "dir", mode=0o750), F(f"{A}/d/again", data=b"2"))]
    o = compose_ok(tmp_path, stack, ["a", "b"])
    assert tree_of(o, f"{A}/d")[f"{A}/d"][:2] == ("dir", 0o750)
    assert f"{A}/d/inner" not in tree_of(o, A)
    assert tree_of(o, f"{B}/f")[f"{B}/f"][0] == "dir"


def test_deleted_then_recreated(tmp_path: Path) -> None:
    stack = [L(F(f"{A}/x", data=b"first")), L(F(f"{A}/x", "whiteout")), L(F(f"{A}/x", data=b"second", mode=0o600)),
             L(F(f"{B}/x", "whiteout"), F(f"{B}/x", data=b"same layer"))]
    o = compose_ok(tmp_path, stack, ["a", "b"])
    assert (o.out_root / A / "x").read_bytes() == b"second"  # type: ignore[operator]


def test_same_path_twice_in_one_layer_last_wins(tmp_path: Path) -> None:
    stack = [L(F(f"{A}/x", data=b"one"), F(f"{A}/x", data=b"two", mode=0o755))]
    o = compose_ok(tmp_path, stack, ["a"])
    assert (o.out_root / A / "x").read_bytes() == b"two"  # type: ignore[operator]


# -- hardlinks ---------------------------------------------------------------------------

def _inode(o: fidelity.Outcome, path: str) -> int:
    return os.lstat(o.out_root / path).st_ino  # type: ignore[operator]


def test_hardlinks_both_ends_selected(tmp_path: Path) -> None:
    stack = [L(F(f"{A}/lib.so.1", data=b"body", mode=0o755), F(f"{A}/lib.so", "hardlink", target=f"{A}/lib.so.1"),
               F(f"{A}/sub", "dir"), F(f"{A}/sub/third", "hardlink", target=f"{A}/lib.so.1"))]
    o = compose_ok(tmp_path, stack, ["a"])
    assert _inode(o, f"{A}/lib.so") == _inode(o, f"{A}/lib.so.1") == _inode(o, f"{A}/sub/third")


def test_hardlink_target_outside_selection_becomes_file_rest_stays_linked(tmp_path: Path) -> None:
    stack = [L(F(f"{ROOT}/shared", "dir"), F(f"{ROOT}/shared/blob", data=b"shared body", mode=0o750, uid=1000)),
             L(F(f"{A}/one", "hardlink", target=f"{ROOT}/shared/blob"),
               F(f"{A}/two", "hardlink", target=f"{ROOT}/shared/blob"))]
    o = compose_ok(tmp_path, stack, ["a"])
    assert (o.out_root / A / "one").read_bytes() == b"shared body"  # type: ignore[operator]
    assert _inode(o, f"{A}/one") == _inode(o, f"{A}/two")
    assert not (o.out_root / ROOT / "shared").exists()  # type: ignore[operator]


def test_hardlink_to_file_in_a_layer_shared_with_min(tmp_path: Path) -> None:
    """The body lies in min's own layer, which compose otherwise never reads."""
    stack = [L(F(f"{A}/sh", "hardlink", target="usr/bin/sh"))]
    o = compose_ok(tmp_path, stack, ["a"])
    assert (o.out_root / A / "sh").read_bytes() == b"#!sh\n"  # type: ignore[operator]
    assert os.stat(o.out_root / A / "sh").st_mode & 0o777 == 0o755  # type: ignore[operator]


def test_hardlinks_across_selected_trees_in_different_layers(tmp_path: Path) -> None:
    stack = [L(F(f"{A}/x", data=b"cross", mode=0o755), F(f"{B}/y", "hardlink", target=f"{A}/x"),
               F(f"{B}/z", "hardlink", target=f"{A}/x"))]
    o = compose_ok(tmp_path, stack, ["a", "b"])
    assert (o.out_root / B / "y").read_bytes() == b"cross"  # type: ignore[operator]
    assert _inode(o, f"{B}/y") == _inode(o, f"{B}/z")  # one group per new layer, as COPY gives


# -- symlinks ----------------------------------------------------------------------------

def test_symlink_chains_and_verbatim_targets(tmp_path: Path) -> None:
    stack = [L(F(f"{A}/libx.so.1.2", data=b"x", mode=0o755), F(f"{A}/libx.so.1", "symlink", target="libx.so.1.2"),
               F(f"{A}/libx.so", "symlink", target="libx.so.1"),
               F(f"{A}/abs", "symlink", target="/etc/os-release"), F(f"{A}/up", "symlink", target="../../../../etc"),
               F(f"{A}/dangling", "symlink", target="nowhere"))]
    o = compose_ok(tmp_path, stack, ["a"])
    got = tree_of(o, A)
    assert got[f"{A}/libx.so"][:2] == ("symlink", "libx.so.1")
    assert got[f"{A}/abs"][:2] == ("symlink", "/etc/os-release")
    assert got[f"{A}/up"][:2] == ("symlink", "../../../../etc")


@pytest.mark.parametrize("target", ["b", "/opt/tritonserver/backends/b", "../backends/b"])
def test_selected_backend_that_is_a_symlink_is_copied_like_copy(tmp_path: Path, target: str) -> None:
    stack = [L(F(f"{B}/only_in_b", data=b"b!")), L(F(A, "whiteout")), L(F(A, "symlink", target=target))]
    o = compose_ok(tmp_path, stack, ["a"])
    assert (o.out_root / A).is_dir() and not (o.out_root / A).is_symlink()  # type: ignore[operator]
    assert (o.out_root / A / "only_in_b").read_bytes() == b"b!"  # type: ignore[operator]


def test_selected_path_through_a_symlinked_directory(tmp_path: Path) -> None:
    """/opt/tritonserver/lib is a symlink to a real directory elsewhere: COPY follows it."""
    stack = [L(F("opt/real-lib", "dir"), F("opt/real-lib/libtritonserver.so", data=b"moved", mode=0o755),
               F(LIB, "whiteout")),
             L(F(LIB, "symlink", target="../real-lib"))]
    o = compose_ok(tmp_path, stack, [])
    assert (o.out_root / LIB / "libtritonserver.so").read_bytes() == b"moved"  # type: ignore[operator]


def test_dangling_selected_symlink_fails_clearly(tmp_path: Path) -> None:
    o = fidelity.run(tmp_path, [L(F(A, "whiteout")), L(F(A, "symlink", target="missing"))], ["a"])
    fidelity.check(o)
    assert o.result is None and "backends/a" in o.error


# -- names -------------------------------------------------------------------------------

LONG = "n" * 120
VERY_LONG_DIR = "/".join(["d" * 60] * 5)  # a 304-byte path: beyond ustar's 255


def test_long_and_non_utf8_names_via_pax(tmp_path: Path) -> None:
    weird = "caf\udce9-latin1"  # the byte 0xE9 alone: not UTF-8
    stack = [L(F(f"{A}/{LONG}", data=b"long"), F(f"{A}/{VERY_LONG_DIR}", "dir"),
               F(f"{A}/{VERY_LONG_DIR}/f", data=b"deep"), F(f"{A}/{weird}", data=b"bytes"),
               F(f"{A}/link-{LONG}", "symlink", target=f"{LONG}/../{LONG}"),
               F(f"{A}/hard-{LONG}", "hardlink", target=f"{A}/{LONG}"))]
    o = compose_ok(tmp_path, stack, ["a"])
    assert os.path.exists(os.fsencode(str(o.out_root / A)) + b"/caf\xe9-latin1")  # type: ignore[operator]


def _gnu_tar(tmp: Path, build: str, fmt: str, members: list[str], extra: tuple[str, ...] = ()) -> bytes:
    """A layer made by GNU tar from a directory tree the caller wrote under tmp/build."""
    out = subprocess.run(["tar", f"--format={fmt}", "--numeric-owner", "--mtime=@1716163200", "--sort=name",
                          *extra, "-C", str(tmp / build), "-cf", "-", *members], check=True, capture_output=True)
    return out.stdout


@pytest.mark.parametrize("fmt,prefix", [("gnu", "./"), ("gnu", ""), ("pax", "./"), ("oldgnu", "")])
def test_gnu_tar_layers_long_names_links_prefixes(tmp_path: Path, fmt: str, prefix: str) -> None:
    src = tmp_path / "tree"
    d = src / A
    d.mkdir(parents=True)
    long_dir = d / ("L" * 90) / ("M" * 90)
    long_dir.mkdir(parents=True)
    (long_dir / "f").write_bytes(b"gnu long name")
    os.symlink("L" * 90 + "/" + "M" * 90 + "/f", d / ("s" * 110))  # GNU long link header
    os.link(long_dir / "f", d / "hard")
    if fmt != "pax":
        (d / "c\xe9".encode("latin-1").decode("utf-8", "surrogateescape")).write_bytes(b"non-utf8")
    members = [prefix + str(Path(ROOT) / "backends" / "a")]
    raw = _gnu_tar(tmp_path, "tree", fmt, members)
    with tarfile.open(fileobj=io.BytesIO(raw), encoding="utf-8", errors="surrogateescape") as tf:
        assert all(m.name.startswith(prefix + "opt") for m in tf.getmembers())
    o = compose_ok(tmp_path / "run", [LayerDef([], "GNU tar", raw=raw)], ["a"])
    assert (o.out_root / A / ("s" * 110)).is_symlink()  # type: ignore[operator]


def _big_and_sparse(tmp: Path) -> Path:
    d = tmp / "tree" / A
    d.mkdir(parents=True)
    big = d / "big-owner"
    big.write_bytes(b"owned by a big uid")
    os.chown(big, 3_000_000, 2_500_000)  # over 2^21: base-256 in GNU headers, PAX records in pax
    sparse = d / "sparse.bin"
    with open(sparse, "wb") as f:
        f.seek(5 << 20)
        f.write(b"data after a hole")
        f.seek(9 << 20)
        f.write(b"tail")
    return sparse


def _check_big_and_sparse(o: fidelity.Outcome, sparse: Path) -> None:
    assert rootless_owner(o.out_root / A / "big-owner") == (3_000_000, 2_500_000)  # type: ignore[operator]
    assert (o.out_root / A / "sparse.bin").read_bytes() == sparse.read_bytes()  # type: ignore[operator]


def test_big_ids_and_pax_sparse_files(tmp_path: Path) -> None:
    sparse = _big_and_sparse(tmp_path)
    raw = _gnu_tar(tmp_path, "tree", "pax", [f"./{A}"], ("--sparse",))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        assert any("GNU.sparse.major" in m.pax_headers for m in tf.getmembers())
    o = compose_ok(tmp_path / "run", [LayerDef([], "GNU tar pax", raw=raw)], ["a"])
    _check_big_and_sparse(o, sparse)


def test_old_gnu_sparse_and_base256_ids_become_plain_entries(tmp_path: Path) -> None:
    """GNU sparse entries (type 'S') are expanded to regular files: runtimes built on Go's
    archive/tar (umoci, containerd, moby) refuse type 'S', so the oracle here is the file
    GNU tar read, and umoci unpacking our output."""
    sparse = _big_and_sparse(tmp_path)
    raw = _gnu_tar(tmp_path, "tree", "gnu", [f"./{A}"], ("--sparse",))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        assert tf.getmember(f"./{A}/sparse.bin").type == tarfile.GNUTYPE_SPARSE
        assert tf.getmember(f"./{A}/big-owner").uid == 3_000_000
    layout = tmp_path / "in"
    from fixtures.stacks import write_pair

    write_pair(layout, [LayerDef([], "GNU tar gnu", raw=raw)])
    out = tmp_path / "out"
    res = run_cli("compose", "--image", f"min,oci:{layout}:min", "--image", f"full,oci:{layout}:full",
                  "--backend", "a", "--no-enable-gpu", "--output-name", f"oci:{out}:img", "--work-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    root = fidelity.umoci_unpack(out, "img", tmp_path / "composed")
    assert (root / A / "sparse.bin").read_bytes() == sparse.read_bytes()
    assert rootless_owner(root / A / "big-owner") == (3_000_000, 2_500_000)


def test_security_capability_xattr_and_setuid_survive(tmp_path: Path) -> None:
    cap = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    stack = [L(F(f"{A}/ping", data=b"ping", mode=0o4755, xattrs={"security.capability": cap}),
               F(f"{A}/sgid", "dir", mode=0o2775), F(f"{A}/sticky", "dir", mode=0o1777))]
    o = compose_ok(tmp_path, stack, ["a"])
    layout = tmp_path / "out"
    idx = json.loads((layout / "index.json").read_text())
    assert idx["manifests"]  # and the new layer carries the xattr as a PAX record:
    manifest = json.loads((layout / "blobs/sha256" / idx["manifests"][0]["digest"][7:]).read_bytes())
    found = False
    for d in manifest["layers"]:
        with tarfile.open(layout / "blobs/sha256" / d["digest"][7:]) as tf:
            for m in tf.getmembers():
                if m.name == f"{A}/ping":
                    found = m.pax_headers.get("SCHILY.xattr.security.capability") == cap and m.mode == 0o4755
    assert found
    assert tree_of(o, f"{A}/sticky")[f"{A}/sticky"][1] == 0o1777


# -- hostile entries ---------------------------------------------------------------------

def _hostile(tmp: Path, layer: LayerDef) -> tuple[str, Path]:
    from fixtures.stacks import write_pair

    layout = tmp / "in"
    write_pair(layout, [layer])
    out = tmp / "out"
    res = run_cli("compose", "--image", f"min,oci:{layout}:min", "--image", f"full,oci:{layout}:full",
                  "--backend", "a", "--no-enable-gpu", "--output-name", f"oci:{out}:img", "--work-dir", str(tmp))
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr
    return lines[0], out


def _raw(*infos: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, body in infos:
            ti.size = len(body)
            tf.addfile(ti, io.BytesIO(body))
    return buf.getvalue()


def _ti(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = kind, link, 0o644
    return ti


@pytest.mark.parametrize("entries,expect", [
    ([(_ti(f"{A}/../../../../../etc/shadow"), b"x")], "climbs out of the root"),
    ([(_ti(f"{A}/evil", tarfile.SYMTYPE, "/etc"), b""), (_ti(f"{A}/evil/passwd"), b"x")], "beneath"),
    ([(_ti(f"{A}/h", tarfile.LNKTYPE, "../../../../etc/passwd"), b"")], "climbs out of the root"),
    ([(_ti(f"{A}/.wh.."), b"")], "malformed whiteout"),
])
def test_hostile_entries_refused_with_one_line(tmp_path: Path, entries: list, expect: str) -> None:  # type: ignore[type-arg]
    line, out = _hostile(tmp_path, LayerDef([], "hostile", raw=_raw(*entries)))
    assert expect in line
    assert not out.exists()


def test_absolute_names_are_normalised(tmp_path: Path) -> None:
    raw = _raw((_ti(f"/{A}/abs"), b"absolute"), (_ti(f"./{A}/dot"), b"dot"))
    o = compose_ok(tmp_path, [LayerDef([], "absolute names", raw=raw)], ["a"])
    assert (o.out_root / A / "abs").read_bytes() == b"absolute"  # type: ignore[operator]


# -- compression and media types ---------------------------------------------------------

@pytest.mark.parametrize("codec", ["gzip-multi", "zstd", "zstd-multi", "none"])
@pytest.mark.parametrize("docker", [False, True])
def test_layer_codecs_and_media_types(tmp_path: Path, codec: str, docker: bool) -> None:
    files = [F(f"{A}/f{i}", data=bytes([i]) * (3000 + i)) for i in range(20)]
    o = compose_ok(tmp_path, [LayerDef(files, "codec", codec=codec)], ["a"], docker=docker)
    assert len(tree_of(o, A)) == 22


def test_foreign_layer_is_refused_clearly(tmp_path: Path) -> None:
    from fixtures.stacks import write_pair

    layout = tmp_path / "in"
    write_pair(layout, [L(F(f"{A}/x", data=b"x"))], docker=True)
    idx = json.loads((layout / "index.json").read_text())
    full = next(m for m in idx["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "full")
    mpath = layout / "blobs/sha256" / full["digest"][7:]
    manifest = json.loads(mpath.read_bytes())
    last = manifest["layers"][-1]
    last["mediaType"] = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    last["urls"] = ["https://example.invalid/layer.tar.gz"]
    from ociassemble.oci.digest import sha256_digest
    from ociassemble.oci.model import canonical_json

    raw = canonical_json(manifest)
    digest = sha256_digest(raw)
    (layout / "blobs/sha256" / digest[7:]).write_bytes(raw)
    full.update(digest=digest, size=len(raw))
    (layout / "index.json").write_text(json.dumps(idx))
    out = tmp_path / "out"
    res = run_cli("compose", "--image", f"min,oci:{layout}:min", "--image", f"full,oci:{layout}:full",
                  "--backend", "a", "--no-enable-gpu", "--output-name", f"oci:{out}:img", "--work-dir", str(tmp_path))
    assert res.returncode != 0 and "non-distributable (foreign)" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()


def test_layer_that_does_not_match_its_config_diff_id_is_refused(tmp_path: Path) -> None:
    """The blob digest matches its manifest, but the config names another uncompressed
    digest: an inconsistent image, refused with one line and nothing written."""
    from fixtures.stacks import write_pair
    from ociassemble.oci.digest import sha256_digest
    from ociassemble.oci.model import canonical_json

    layout = tmp_path / "in"
    write_pair(layout, [L(F(f"{A}/x", data=b"x"))])
    idx = json.loads((layout / "index.json").read_text())
    full = next(m for m in idx["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "full")
    mpath = layout / "blobs/sha256" / full["digest"][7:]
    manifest = json.loads(mpath.read_bytes())
    config = json.loads((layout / "blobs/sha256" / manifest["config"]["digest"][7:]).read_bytes())
    config["rootfs"]["diff_ids"][-1] = "sha256:" + "0" * 64
    craw = canonical_json(config)
    (layout / "blobs/sha256" / sha256_digest(craw)[7:]).write_bytes(craw)
    manifest["config"].update(digest=sha256_digest(craw), size=len(craw))
    raw = canonical_json(manifest)
    (layout / "blobs/sha256" / sha256_digest(raw)[7:]).write_bytes(raw)
    full.update(digest=sha256_digest(raw), size=len(raw))
    (layout / "index.json").write_text(json.dumps(idx))
    out = tmp_path / "out"
    res = run_cli("compose", "--image", f"min,oci:{layout}:min", "--image", f"full,oci:{layout}:full",
                  "--backend", "a", "--no-enable-gpu", "--output-name", f"oci:{out}:img", "--work-dir", str(tmp_path))
    assert res.returncode != 0, res.stderr
    assert "but the image config says sha256:" + "0" * 64 in res.stderr and "corrupt" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()


# -- --verify ----------------------------------------------------------------------------



def test_verify_rereads_new_layers_and_passes(tmp_path: Path) -> None:
    o = compose_ok(tmp_path, [L(F(f"{A}/x", data=b"payload" * 100))], ["a"])
    assert o.result is not None
    manifest = json.loads((tmp_path / "out/blobs/sha256" / o.result.manifest_digest[7:]).read_bytes())
    new_sizes = sum(layer["size"] for layer in o.result.layers)
    assert o.result.stats["verified_layers"] == len(manifest["layers"])
    assert o.result.stats["verified_bytes"] == new_sizes


def test_verify_catches_a_layer_that_differs_from_what_was_recorded(tmp_path: Path) -> None:
    """A writer bug (entry written differently from the recorded source state) is caught."""
    import dataclasses

    from fixtures.stacks import write_pair
    from ociassemble.engine import run as engine
    from ociassemble.engine.verify import VerifyError
    from ociassemble.presets import compose as compose_mod

    layout = tmp_path / "in"
    write_pair(layout, [L(F(f"{A}/x", data=b"payload"))])
    real = engine.write_layers

    def tampered(*args, **kwargs):  # type: ignore[no-untyped-def]
        layers = real(*args, **kwargs)
        w = layers[-1].written
        rec = list(w.records[-1])
        rec[2] = 0o777  # the record says one mode, the blob holds another
        layers[-1].written = dataclasses.replace(w, records=[*w.records[:-1], tuple(rec)])
        return layers

    engine.write_layers = tampered  # type: ignore[assignment]
    try:
        with pytest.raises(VerifyError, match="differs from what was written"):
            compose_mod.compose(compose_mod.ComposeOptions(
                backends=["a"], images=[f"min,oci:{layout}:min", f"full,oci:{layout}:full"],
                output_name=f"oci:{tmp_path / 'out'}:img", work_dir=str(tmp_path), enable_gpu=False, verify=True))
    finally:
        engine.write_layers = real  # type: ignore[assignment]
    assert not (tmp_path / "out").exists()  # a layout this run created is removed again


def test_verify_catches_a_corrupted_blob_at_the_destination(tmp_path: Path) -> None:
    from ociassemble.engine.assemble import NewLayer
    from ociassemble.engine.verify import VerifyError, verify_output
    from ociassemble.layers.spec import LayerSpec
    from ociassemble.layers.write import WrittenLayer
    from ociassemble.oci.reference import LayoutRef
    from ociassemble.transport.sink import LayoutSink

    o = compose_ok(tmp_path, [L(F(f"{A}/x", data=b"payload" * 1000))], ["a"])
    assert o.result is not None
    out = tmp_path / "out"
    manifest_raw = (out / "blobs/sha256" / o.result.manifest_digest[7:]).read_bytes()
    config_raw = (out / "blobs/sha256" / o.result.config_digest[7:]).read_bytes()
    layer = o.result.layers[1]
    blob = out / "blobs/sha256" / str(layer["digest"])[7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    new = [NewLayer(LayerSpec(str(layer["name"]), []), WrittenLayer(blob, str(layer["digest"]), int(layer["size"]),
                                                                     str(layer["diff_id"]), 0, 0))]
    with pytest.raises(VerifyError, match="cannot be read back intact"):
        verify_output(LayoutSink(LayoutRef(str(out), "img")), manifest_raw, config_raw, new, lambda _m: None)


def test_whiteouts_never_land_below_a_missing_or_non_directory_parent(tmp_path: Path) -> None:
    stack = [L(F(f"{A}/x", "dir"), F(f"{A}/x/y", data=b"y"), F(f"{A}/c", "dir"), F(f"{A}/c/y", data=b"y")),
             L(F(f"{A}/x/y", "whiteout"), F(f"{A}/x", "symlink", target="elsewhere"), F(f"{A}/c/y", "whiteout")),
             L(F(f"{A}/c", "whiteout"))]
    o = compose_ok(tmp_path, stack, ["a"])
    assert o.result is not None
    layer = next(x for x in o.result.layers if x["name"] == "backend a")
    with tarfile.open(tmp_path / "out/blobs/sha256" / str(layer["digest"])[7:]) as tf:
        names = tf.getnames()
    # the first core layer's opaque /opt/tritonserver already hides whatever lies below: a
    # whiteout for c (deleted in full) would change nothing, so none is written
    assert f"{A}/.wh.c" not in names
    assert not [n for n in names if n.startswith((f"{A}/x/", f"{A}/c/"))]


# -- issue 13: deep paths, a real-world tar corpus ----------------------------------------

def test_path_a_thousand_directories_deep(tmp_path: Path) -> None:
    """A selected tree holding a path 1,000 directories deep (a RecursionError once): composed
    and verified. Checked from the new layer's tar, not by unpacking (three umoci unpacks of
    such a tree took two minutes)."""
    from fixtures.stacks import write_pair

    deep = "/".join(["d"] * 1000)
    write_pair(tmp_path / "in", [L(F(f"{A}/{deep}/leaf", data=b"deep body"))])
    res = run_cli("compose", "--no-enable-gpu", "--backend", "a", "--verify", "--image", f"min,oci:{tmp_path}/in:min",
                  "--image", f"full,oci:{tmp_path}/in:full", "--output-name", f"oci:{tmp_path}/out:t",
                  "--work-dir", str(tmp_path), "--json")
    assert res.returncode == 0, res.stderr
    layer = next(x for x in json.loads(res.stdout)["layers"] if x["name"] == "backend a")
    with tarfile.open(tmp_path / "out/blobs/sha256" / str(layer["digest"])[7:]) as tf:
        leaf = tf.extractfile(f"{A}/{deep}/leaf")
        assert leaf is not None and leaf.read() == b"deep body"
        assert f"{A}/{deep}" in tf.getnames()


def cpython_testtar() -> Path:
    """CPython's own tar corpus (ustar, GNU, PAX, v7, star, suntar, sparse variants, long
    names and links, devices, bad PAX headers), from the interpreter's test package."""
    import sysconfig

    path = Path(sysconfig.get_paths()["stdlib"]) / "test" / "testtar.tar"
    if not path.is_file():
        pytest.fail(f"{path} is missing: this test needs CPython's test package (Debian: libpython3.11-testsuite)")
    return path


CORPUS_TOPS = ("ustar", "gnu", "pax", "misc")


def _corpus_pair(layout: Path, below: bool) -> None:
    """full = OS, the corpus as a layer (below or above the install layer), backends that
    are symlinks to its top directories; min = the OS layer."""
    from fixtures.ngc import Store, image
    from fixtures.stacks import ENV, LABELS, base_layer, install_layer

    corpus = LayerDef([], "ADD testtar.tar /", raw=cpython_testtar().read_bytes())
    links = L(*(F(f"{ROOT}/backends/{t}", "symlink", target=f"/{t}") for t in CORPUS_TOPS))
    base = base_layer()
    stack = [base, corpus, install_layer(), links] if below else [base, install_layer(), corpus, links]
    store = Store(layout)
    store.refs["min"] = image(store, [base], ENV[:1], {}, "amd64", False)
    store.refs["full"] = image(store, stack, ENV, LABELS, "amd64", False)
    store.write_index()


@pytest.mark.parametrize("below", [False, True], ids=["corpus-above-install", "corpus-in-system-layers"])
def test_cpython_tar_corpus_through_symlinked_backends(tmp_path: Path, below: bool) -> None:
    """COPY follows a symlinked source into full's whole filesystem (a system layer too);
    every copied tree equals GNU tar's extraction of the corpus, umoci unpacks the result,
    and --verify passes on it (suntar's regular file carries device numbers in its header,
    which no writer keeps)."""
    from tests.consumers import fingerprint, relocated

    fx = tmp_path / "fx"
    _corpus_pair(fx, below)
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    subprocess.run(["tar", "-xf", str(cpython_testtar()), "-C", str(gnu)], check=True, capture_output=True,
                   timeout=60)
    res = run_cli("compose", "--no-enable-gpu", *(a for t in CORPUS_TOPS for a in ("--backend", t)),
                  "--image", f"min,oci:{fx}:min", "--image", f"full,oci:{fx}:full", "--verify",
                  "--output-name", f"oci:{tmp_path}/out:t", "--work-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    if below:  # the corpus layer is carried as a system layer, and umoci refuses its type-7 entries:
        # the new layers alone, extracted in order by GNU tar, must hold the trees
        manifest = json.loads((tmp_path / "out/blobs/sha256" / res.stdout.strip().rsplit(":", 1)[1]).read_text())
        root = tmp_path / "new"
        root.mkdir()
        assert "system layers carried from full: 1 [1]" in res.stderr
        for layer in manifest["layers"][2:]:  # after min's OS layer and the corpus (a system layer)
            subprocess.run(["tar", "-xzf", str(tmp_path / "out/blobs/sha256" / layer["digest"][7:]), "-C",
                            str(root)], check=True, capture_output=True, timeout=60)
    else:
        subprocess.run(["umoci", "unpack", "--image", f"{tmp_path}/out:t", str(tmp_path / "u")], check=True,
                       capture_output=True, timeout=300)
        root = tmp_path / "u/rootfs"
    for top in CORPUS_TOPS:
        got = fingerprint(root, f"{ROOT}/backends/{top}")
        want = relocated(fingerprint(gnu, top), top, f"{ROOT}/backends/{top}")
        assert got == want, top
    assert (root / ROOT / "backends/misc/regtype-suntar").stat().st_size == 7011
