"""compose --add SRC:DEST: the seed's custom backends, without a daemon (issue 14, item 4)."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.consumers import unpack
from tests.oneline import assert_one_line_error

MYB = "opt/tritonserver/backends/mybackend"


def _mybackend(root: Path) -> Path:
    src = root / "mybackend"
    (src / "sub").mkdir(parents=True)
    (src / "libtriton_mybackend.so").write_bytes(b"\x7fELF custom backend")
    (src / "libtriton_mybackend.so").chmod(0o755)
    (src / "sub" / "model.py").write_text("print('hello')\n")
    (src / "alias.so").symlink_to("libtriton_mybackend.so")
    return src


def _compose(fx: Path, tmp: Path, out: str, *extra: str) -> dict:  # type: ignore[type-arg]
    res = run_cli("compose", "--backend", "onnxruntime", "--image", f"min,oci:{fx}:min", "--image",
                  f"full,oci:{fx}:full", "--output-name", f"oci:{tmp}/{out}:t", "--work-dir", str(tmp / f"{out}-work"),
                  "--json", "--no-store", *extra)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def test_add_a_custom_backend_as_its_own_layer(oci_layout: Path, tmp_path: Path) -> None:
    src = _mybackend(tmp_path)
    result = _compose(oci_layout, tmp_path, "o", "--add", f"{src}:/{MYB}", "--verify")
    last = result["layers"][-1]
    assert last["name"] == f"add /{MYB}"
    with tarfile.open(tmp_path / "o/blobs/sha256" / last["digest"][7:]) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert sorted(members) == [MYB, f"{MYB}/alias.so", f"{MYB}/libtriton_mybackend.so", f"{MYB}/sub",
                               f"{MYB}/sub/model.py"]
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    assert len({m.mtime for m in members.values()}) == 1  # one fixed time, not the checkout's
    rootfs = unpack(f"oci:{tmp_path}/o:t", tmp_path / "u")
    assert (rootfs / MYB / "libtriton_mybackend.so").read_bytes() == b"\x7fELF custom backend"
    assert os.readlink(rootfs / MYB / "alias.so") == "libtriton_mybackend.so"
    assert (rootfs / "opt/tritonserver/backends/onnxruntime").is_dir()  # the selection is all there
    text = (tmp_path / "o-work/Dockerfile.compose").read_text()
    assert text.splitlines()[-2:] == ["LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true",
                                      f"COPY {src} /{MYB}"]  # last, where the seed appends its line
    res = run_cli("compose", "--dry-run", "--backend", "onnxruntime", "--image", f"min,oci:{oci_layout}:min",
                  "--image", f"full,oci:{oci_layout}:full", "--output-name", f"oci:{tmp_path}/never:t",
                  "--work-dir", str(tmp_path / "dry"), "--add", f"{src}:/{MYB}")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "dry/Dockerfile.compose").read_text() == text  # the dry run writes the same file


def test_add_is_deterministic_and_the_memo_sees_content(oci_layout: Path, tmp_path: Path) -> None:
    src = _mybackend(tmp_path)
    one = _compose(oci_layout, tmp_path, "a", "--add", f"{src}:/{MYB}")
    os.utime(src / "sub" / "model.py", (1, 1))  # another checkout: other mtimes, same content
    two = _compose(oci_layout, tmp_path, "b", "--add", f"{src}:/{MYB}")
    assert one["manifest_digest"] == two["manifest_digest"]
    (src / "sub" / "model.py").write_text("print('changed')\n")
    three = _compose(oci_layout, tmp_path, "c", "--add", f"{src}:/{MYB}")
    assert three["manifest_digest"] != one["manifest_digest"]


def test_add_chown_and_a_tar_file_extracted(oci_layout: Path, tmp_path: Path) -> None:
    src = _mybackend(tmp_path)
    archive = tmp_path / "mybackend.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname=".")
    result = _compose(oci_layout, tmp_path, "o", "--add", f"{archive}:/{MYB}", "--add-chown", "1000:1000")
    with tarfile.open(tmp_path / "o/blobs/sha256" / result["layers"][-1]["digest"][7:]) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert f"{MYB}/sub/model.py" in members and f"{MYB}/libtriton_mybackend.so" in members
    assert all(m.uid == 1000 and m.gid == 1000 for m in members.values())
    assert f"ADD --chown=1000:1000 {archive} /{MYB}" in (tmp_path / "o-work/Dockerfile.compose").read_text()


@pytest.mark.parametrize(("add", "pattern"), [
    ("{tmp}/nowhere:/opt/x", r"--add source .*/nowhere does not exist"),
    ("{tmp}/mybackend", r"--add .* must be SRC:DEST with DEST an absolute path"),
    ("{tmp}/mybackend:/opt/../etc", r"must name a path below / without \. or \.\."),
])
def test_bad_add_is_one_line(oci_layout: Path, tmp_path: Path, add: str, pattern: str) -> None:
    _mybackend(tmp_path)
    res = run_cli("compose", "--backend", "onnxruntime", "--image", f"min,oci:{oci_layout}:min", "--image",
                  f"full,oci:{oci_layout}:full", "--output-name", f"oci:{tmp_path}/o:t", "--work-dir", str(tmp_path),
                  "--add", add.format(tmp=tmp_path))
    assert_one_line_error(res, pattern, code=2, untouched=[tmp_path / "o"])
