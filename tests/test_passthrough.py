"""A source layer holding exactly a new layer's entries is used as that layer's blob.

The layer is not recompressed and is mounted (or copied) at the destination; the rule is
exactness, so every near miss (a parent directory more, another owner name, a later layer
touching one file, another codec) is written anew, and the composed tree is checked
against umoci's unpack of the full image either way.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from fixtures.stacks import EPOCH, ROOT, F, LayerDef
from ociassemble.presets.compose import ComposeOptions, ComposeResult, compose
from tests import fidelity
from tests.consumers import fingerprint, skopeo_inspect, unpack
from tests.registryserver import Registry

D = f"{ROOT}/backends/d"


def gnu_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A tar in GNU format: other header bytes than ociassemble writes (PAX), same entries."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for ti, body in members:
            tf.addfile(ti, io.BytesIO(body) if body is not None else None)
    return out.getvalue()


def info(path: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0, uname: str = "", link: str = "",
         size: int = 0) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(path)
    ti.type, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = kind, mode, uid, gid, uname, uname
    ti.mtime, ti.linkname, ti.size = EPOCH, link, size
    return ti


BODY = b"\x7fELF backend d\n" * 4096
CONFIG = b'backend: "d"\n'


def d_layer(owner_name: str = "", parent: bool = False, body: bytes = BODY) -> LayerDef:
    """Backend ``d`` as compose writes its layer: ``backends/`` as triton-server's own dir
    (1000:1000, 0755, the image's created time, no owner names), then the tree."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    if parent:  # what a COPY or RUN step adds: the parents of what it changed
        members.append((info(ROOT, tarfile.DIRTYPE, 0o755), None))
    members += [
        (info(f"{ROOT}/backends", tarfile.DIRTYPE, 0o755, 1000, 1000, owner_name), None),
        (info(D, tarfile.DIRTYPE, 0o755), None),
        (info(f"{D}/libtriton_d.so", tarfile.REGTYPE, 0o755, size=len(body)), body),
        (info(f"{D}/libtriton_d.so.1", tarfile.LNKTYPE, 0o755, link=f"{D}/libtriton_d.so"), None),
        (info(f"{D}/libd.so", tarfile.SYMTYPE, 0o777, link="libtriton_d.so"), None),
        (info(f"{D}/config.pbtxt", tarfile.REGTYPE, 0o644, size=len(CONFIG)), CONFIG),
    ]
    return LayerDef([], "COPY backend d", raw=gnu_tar(members))


def layer_digests(layout: Path, tag: str) -> list[str]:
    return [d["digest"] for d in skopeo_inspect(f"oci:{layout}:{tag}", raw=True)["layers"]]


def by_name(o: fidelity.Outcome) -> dict[str, dict]:  # type: ignore[type-arg]
    assert o.result is not None, o.error
    return {str(layer["name"]): layer for layer in o.result.layers}


def test_a_layer_holding_exactly_a_new_layer_is_passed_through(tmp_path: Path) -> None:
    o = fidelity.run(tmp_path, [d_layer()], ["a", "d"])  # --verify reads the result back
    fidelity.check(o)
    layers = by_name(o)
    source = layer_digests(tmp_path / "in", "full")[-1]
    assert layers["backend d"]["passed_through"] is True
    assert layers["backend d"]["digest"] == source
    assert layers["backend a"]["passed_through"] is False  # the install layer holds much more
    assert source in layer_digests(tmp_path / "out", "img")
    root = o.out_root
    assert root is not None
    lib = root / D / "libtriton_d.so"
    assert lib.read_bytes() == BODY and lib.stat().st_ino == (root / D / "libtriton_d.so.1").stat().st_ino


@pytest.mark.parametrize("case", ["parent directory", "owner name", "later layer", "same bytes later", "zstd"])
def test_near_misses_are_written_anew(tmp_path: Path, case: str) -> None:
    stack = [d_layer(owner_name="triton-server" if case == "owner name" else "",
                     parent=case == "parent directory")]
    if case == "later layer":  # a patch step rewrites one file of d
        stack.append(LayerDef([F(f"{D}/libtriton_d.so", data=b"patched", mode=0o755)], "RUN patchelf"))
    if case == "same bytes later":  # rewritten with the very same entry: the copy comes from the later layer
        stack.append(LayerDef([], "RUN touch", raw=gnu_tar([(info(f"{D}/config.pbtxt", tarfile.REGTYPE, 0o644,
                                                                   size=len(CONFIG)), CONFIG)])))
    o = fidelity.run(tmp_path, stack, ["d"], compression="zstd" if case == "zstd" else "gzip")
    fidelity.check(o)
    layer = by_name(o)["backend d"]
    assert layer["passed_through"] is False
    assert layer["digest"] not in layer_digests(tmp_path / "in", "full")
    if case == "same bytes later":
        # bodies are named by digest under --verify; the choice must not depend on that
        again = compose(ComposeOptions(backends=["d"], images=[f"min,oci:{tmp_path}/in:min",
                                                               f"full,oci:{tmp_path}/in:full"],
                                       output_name=f"oci:{tmp_path}/out2:img", work_dir=str(tmp_path / "w2"),
                                       enable_gpu=False, no_store=True))
        assert o.result is not None and again.manifest_digest == o.result.manifest_digest


def test_composing_from_a_composed_image_mounts_its_layers(registry: Registry, pushed: dict[str, str],
                                                           tmp_path: Path) -> None:
    """An image composed earlier (say, a superset mirrored for air-gapped use) as the full
    image: every new layer is one of its layers, mounted, and the result is the very image
    composed from the original full image."""

    def run(full: str, out: str, backends: list[str]) -> ComposeResult:
        return compose(ComposeOptions(backends=backends, images=[f"min,{pushed['min']}", f"full,{full}"],
                                      output_name=f"{registry.host}/{out}", work_dir=str(tmp_path / out),
                                      verify=True))

    superset = run(pushed["full"], "pt/superset:1", ["onnxruntime", "python", "pytorch"])
    derived = run(f"{registry.host}/pt/superset:1", "pt/derived:1", ["onnxruntime", "python"])
    direct = run(pushed["full"], "pt/direct:1", ["onnxruntime", "python"])
    assert derived.manifest_digest == direct.manifest_digest
    assert all(layer["passed_through"] for layer in derived.layers)
    # from the original full image only the license PDF's layer is passed through: full's own
    # later layer holds exactly it (what Dockerfile.compose's one COPY of it writes)
    pdf = f"/{ROOT}/NVIDIA_Deep_Learning_Container_License.pdf"
    assert [layer["name"] for layer in direct.layers if layer["passed_through"]] == [pdf]
    assert sum("passed through" in line for line in derived.plan_lines) == len(derived.layers)
    assert derived.stats["uploaded"] == 1  # the config; every layer mounted
    assert derived.stats["mounted"] >= len(derived.layers)
    assert direct.stats["uploaded"] == 1 + len(direct.layers) - 1
    theirs = set(skopeo_inspect(f"docker://{registry.host}/pt/superset:1")["Layers"])
    ours = skopeo_inspect(f"docker://{registry.host}/pt/derived:1")["Layers"]
    assert {layer["digest"] for layer in derived.layers} <= {layer["digest"] for layer in superset.layers}
    assert set(ours) <= theirs
    root = unpack(f"docker://{registry.host}/pt/derived:1", tmp_path / "unpacked")
    full_root = unpack(f"docker://{pushed['full']}", tmp_path / "full")
    for tree in ("backends/onnxruntime", "backends/python", "bin", "lib"):
        assert fingerprint(root, f"{ROOT}/{tree}") == fingerprint(full_root, f"{ROOT}/{tree}")
    assert not (root / ROOT / "backends/pytorch").exists()
