"""compose --platform all: every platform of the sources' indexes composed, published as
one index (issue 15, item 3)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from fixtures import ngc
from tests.conftest import run_cli
from tests.consumers import skopeo_inspect, unpack
from tests.oneline import assert_one_line_error

CUDART = "usr/local/cuda/targets/{}-linux/lib/libcudart.so.12"


def test_platform_all_pushes_an_index_each_platform_verified_and_unpacked(registry, fixture_layout: Path,  # type: ignore[no-untyped-def]
                                                                          tmp_path: Path) -> None:
    """CPU-only with pytorch over amd64 and arm64: the CUDA libraries from gpu-min land
    under targets/x86_64-linux and targets/sbsa-linux; Docker sources give a manifest list."""
    os.environ.setdefault("DOCKER_CONFIG", "/nonexistent-ociassemble-test")
    pushed = ngc.push(fixture_layout, ["cpu-min-multi", "cpu-full-multi", "gpu-min"], f"{registry.host}/multi")
    out = f"{registry.host}/multi/composed:1"
    res = run_cli("compose", "--platform", "all", "--no-enable-gpu", "--backend", "pytorch", "--backend", "python",
                  "--image", f"min,{pushed['cpu-min-multi']}", "--image", f"full,{pushed['cpu-full-multi']}",
                  "--image", f"gpu-min,{pushed['gpu-min']}", "--output-name", out, "--work-dir", str(tmp_path / "w"),
                  "--verify", "--json")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    raw = skopeo_inspect(f"docker://{out}", raw=True)
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    top = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{out}"], capture_output=True,
                         check=True, timeout=60).stdout
    assert result["manifest_digest"] == "sha256:" + hashlib.sha256(top).hexdigest()  # the tag names our index
    arches = {m["platform"]["architecture"]: m for m in raw["manifests"]}
    assert set(arches) == {"amd64", "arm64"} and arches["arm64"]["platform"].get("variant") == "v8"
    assert result["stats"]["verified_layers"] > 0
    for arch, cuda in (("amd64", "x86_64"), ("arm64", "sbsa")):
        rootfs = unpack(f"docker://{out}", tmp_path / f"un-{arch}", arch=arch)
        assert (rootfs / CUDART.format(cuda)).is_file(), arch
        other = "sbsa" if cuda == "x86_64" else "x86_64"
        assert not (rootfs / f"usr/local/cuda/targets/{other}-linux").exists()
        assert (rootfs / "opt/tritonserver/backends/pytorch").is_dir() and (rootfs / "opt/tritonserver/bin").is_dir()
    assert (tmp_path / "w/Dockerfile.compose.linux-arm64-v8").read_text().count("sbsa-linux") >= 7
    # the memo covers the index: the same run again reads and sends nothing
    again = run_cli("compose", "--platform", "all", "--no-enable-gpu", "--backend", "pytorch", "--backend", "python",
                    "--image", f"min,{pushed['cpu-min-multi']}", "--image", f"full,{pushed['cpu-full-multi']}",
                    "--image", f"gpu-min,{pushed['gpu-min']}", "--output-name", out, "--work-dir",
                    str(tmp_path / "w"), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["stats"]["memo_hit"] == 1
    assert json.loads(again.stdout)["manifest_digest"] == result["manifest_digest"]


def test_platform_lists_and_their_mistakes(oci_layout: Path, tmp_path: Path) -> None:
    images = ["--image", f"min,oci:{oci_layout}:min", "--image", f"full,oci:{oci_layout}:full"]
    res = run_cli("compose", "--platform", "linux/arm64", "--backend", "python", *images, "--output-name",
                  f"oci:{tmp_path}/one:x", "--work-dir", str(tmp_path / "w1"), "--json")
    assert res.returncode == 0, res.stderr
    listed = run_cli("compose", "--platform", "linux/arm64,linux/amd64", "--backend", "python", *images,
                     "--output-name", f"oci:{tmp_path}/two:x", "--work-dir", str(tmp_path / "w2"), "--json")
    assert listed.returncode == 0, listed.stderr
    index = skopeo_inspect(f"oci:{tmp_path}/two:x", raw=True)
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["arm64", "amd64"]
    assert index["manifests"][0]["digest"] == json.loads(res.stdout)["manifest_digest"]  # the same image
    assert_one_line_error(run_cli("compose", "--platform", "linux/s390x,linux/amd64", "--backend", "python", *images,
                                  "--output-name", f"oci:{tmp_path}/bad:x", "--work-dir", str(tmp_path / "w3")),
                          r"linux/s390x is not in every source index; they share linux/amd64, linux/arm64",
                          untouched=[tmp_path / "bad"])
    assert_one_line_error(run_cli("compose", "--platform", "linux/arm64,linux/arm64/v8", "--backend", "python",
                                  *images, "--output-name", f"oci:{tmp_path}/twice:x", "--work-dir",
                                  str(tmp_path / "w6")),
                          r"names one platform twice", untouched=[tmp_path / "twice"])
    assert_one_line_error(run_cli("compose", "--platform", "all", "--backend", "python", *images, "--output-name",
                                  f"docker-archive:{tmp_path}/x.tar", "--work-dir", str(tmp_path / "w4")),
                          r"holds one image, not an index of platforms", untouched=[tmp_path / "x.tar"])
    assert_one_line_error(run_cli("compose", "--platform", "all", "--no-enable-gpu", "--backend", "python",
                                  "--image", f"min,oci:{oci_layout}:cpu-min", "--image",
                                  f"full,oci:{oci_layout}:cpu-full", "--output-name", f"oci:{tmp_path}/c:x",
                                  "--work-dir", str(tmp_path / "w5")),
                          r"is one image, not an index of platforms; --platform all needs indexes",
                          untouched=[tmp_path / "c"])
