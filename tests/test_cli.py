"""The command line: layouts as input and output, determinism, CPU-only, dry run, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.consumers import fingerprint, skopeo_inspect, unpack
from tests.registryserver import Registry


def _layout_args(fx: Path, *extra: str) -> list[str]:
    return ["compose", "--image", f"min,oci:{fx}:min", "--image", f"full,oci:{fx}:full", *extra]


def test_layout_in_layout_out_is_deterministic(oci_layout: Path, tmp_path: Path) -> None:
    digests = []
    for i, (tmpdir, lang) in enumerate([("a", "C"), ("b", "de_DE.UTF-8")]):
        t = tmp_path / tmpdir
        t.mkdir()
        res = run_cli(*_layout_args(oci_layout, "--backend", "pytorch", "--backend", "python", "--json",
                                    "--output-name", f"oci:{tmp_path}/out{i}:t", "--work-dir", str(t)),
                      env={"TMPDIR": str(t), "LANG": lang, "LC_ALL": lang})
        assert res.returncode == 0, res.stderr
        digests.append(json.loads(res.stdout)["manifest_digest"])
    assert digests[0] == digests[1]
    assert (tmp_path / "out0/index.json").exists()
    inspected = skopeo_inspect(f"oci:{tmp_path}/out0:t", raw=True)
    assert inspected["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    env = dict(e.split("=", 1) for e in skopeo_inspect(f"oci:{tmp_path}/out0:t", config=True)["config"]["Env"])
    assert env["LD_LIBRARY_PATH"].startswith("/opt/hpcx/ucc/lib/:/opt/hpcx/ucx/lib/:/usr/local/cuda/compat")
    # the patch layer's rewrite of libtorch_cuda.so wins over the install layer's
    rootfs = unpack(f"oci:{tmp_path}/out0:t", tmp_path / "u")
    full = unpack(f"oci:{oci_layout}:full", tmp_path / "f")
    for p in ["opt/tritonserver/backends/pytorch", "opt/tritonserver/backends/python"]:
        assert fingerprint(rootfs, p) == fingerprint(full, p)


def test_source_date_epoch_changes_created_and_clamps(oci_layout: Path, tmp_path: Path) -> None:
    res = run_cli(*_layout_args(oci_layout, "--backend", "identity", "--json",
                                "--output-name", f"oci:{tmp_path}/o:t", "--work-dir", str(tmp_path)),
                  env={"SOURCE_DATE_EPOCH": "1000000000"})
    assert res.returncode == 0, res.stderr
    cfg = skopeo_inspect(f"oci:{tmp_path}/o:t", config=True)
    assert cfg["created"] == "2001-09-09T01:46:40Z"
    rootfs = unpack(f"oci:{tmp_path}/o:t", tmp_path / "u")
    assert os.lstat(rootfs / "opt/tritonserver/backends/identity").st_mtime == 1000000000
    assert os.lstat(rootfs / "usr/bin/bash").st_mtime != 1000000000  # min's layers untouched


def test_cpu_only_pytorch_gets_cuda_libraries_from_gpu_min(oci_layout: Path, tmp_path: Path) -> None:
    fx = oci_layout
    res = run_cli("compose", "--no-enable-gpu", "--backend", "pytorch", "--backend", "onnxruntime",
                  "--image", f"min,oci:{fx}:cpu-min", "--image", f"full,oci:{fx}:cpu-full",
                  "--image", f"gpu-min,oci:{fx}:gpu-min", "--output-name", f"oci:{tmp_path}/cpu:t",
                  "--work-dir", str(tmp_path), "-v")
    assert res.returncode == 0, res.stderr
    assert "share no layers" in res.stderr
    rootfs = unpack(f"oci:{tmp_path}/cpu:t", tmp_path / "u")
    gpu = unpack(f"oci:{fx}:gpu-min", tmp_path / "g")
    stubs = rootfs / "usr/local/cuda/lib64/stubs"
    stub_src = gpu / "usr/local/cuda/lib64/stubs/libcusolver.so"
    assert (stubs / "libcusolver.so.11").read_bytes() == stub_src.read_bytes()
    assert (stubs / "libcublasLt.so.12").is_file()
    cudart = rootfs / "usr/local/cuda/targets/x86_64-linux/lib/libcudart.so.12"
    assert not cudart.is_symlink()  # COPY follows the symlinked source
    assert cudart.read_bytes() == (gpu / "usr/local/cuda/lib64/libcudart.so.12.4.127").read_bytes()
    assert (rootfs / "usr/lib/x86_64-linux-gnu/libcudnn.so.9").is_file()
    assert (rootfs / "opt/hpcx/ucx/lib/libucs.so.0").is_file()
    cfg = skopeo_inspect(f"oci:{tmp_path}/cpu:t", config=True)
    env = dict(e.split("=", 1) for e in cfg["config"]["Env"])
    assert "/usr/local/cuda/targets/x86_64-linux/lib:/usr/local/cuda/lib64/stubs" in env["LD_LIBRARY_PATH"]
    assert env["TRITON_SERVER_GPU_ENABLED"] == "0"
    assert cfg["config"]["Entrypoint"] == ["/opt/nvidia/nvidia_entrypoint.sh"]
    assert (rootfs / "opt/nvidia/nvidia_entrypoint.sh").is_file()


def test_dry_run_moves_no_data(registry: Registry, pushed: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "never"
    res = run_cli("compose", "--dry-run", "--backend", "onnxruntime", "--image", f"min,{pushed['min']}",
                  "--image", f"full,{pushed['full']}", "--output-name", f"oci:{out}:x", "--work-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert not out.exists()
    assert "system layers carried from full: 4" in res.stderr
    assert "COPY --from=full /opt/tritonserver/backends/onnxruntime" in (tmp_path / "Dockerfile.compose").read_text()


@pytest.mark.parametrize(("args", "expect"), [
    (["--backend", "nosuch"], "has no backend 'nosuch'; it has: dali, fil, identity, onnxruntime, openvino, python,"),
    (["--cache", "memcached"], "has no cache 'memcached'; it has: local, redis"),
    (["--backend", "vllm"], "add --backend python"),
])
def test_unknown_names_fail_listing_what_exists(oci_layout: Path, tmp_path: Path, args: list[str],
                                                expect: str) -> None:
    res = run_cli(*_layout_args(oci_layout, *args, "--output-name", f"oci:{tmp_path}/o:t",
                                "--work-dir", str(tmp_path)))
    assert res.returncode != 0
    assert expect in res.stderr and res.stderr.startswith("error: ")
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("ociassemble-")]  # scratch removed


@pytest.mark.parametrize(("args", "expect"), [
    (["--image", "min,oci:/x:min"], "--image is missing full"),
    (["--image", "foo,bar"], "--image name 'foo' is not one of min, full, gpu-min"),
    ([], "--container-version YY.MM, or --image"),
    (["--container-version", "24"], "not of the form YY.MM"),
    (["--image", "min,Bad/Upper", "--image", "full,x"], "invalid image reference 'Bad/Upper'"),
    (["--image", "min,oci:/nonexistent:min", "--image", "full,oci:/nonexistent:full"], "not an OCI image layout"),
    (["--image", "min,docker-archive:/x.tar", "--image", "full,x"], "transport 'docker-archive' is not supported"),
    (["--compression", "lz4", "--image", "min,a", "--image", "full,b"], "compression 'lz4' is not gzip or zstd"),
    (["--platform", "linux", "--image", "min,a", "--image", "full,b"], "is not os/arch"),
])
def test_bad_input_one_clear_line(tmp_path: Path, args: list[str], expect: str) -> None:
    res = run_cli("compose", *args, "--output-name", f"oci:{tmp_path}/o:t", "--work-dir", str(tmp_path))
    assert res.returncode != 0
    assert res.stderr.startswith("error: ") and expect in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_tls_verify_flag_takes_skopeo_syntax(oci_layout: Path, tmp_path: Path) -> None:
    res = run_cli(*_layout_args(oci_layout, "--backend", "identity", "--tls-verify=false", "--json",
                                "--output-name", f"oci:{tmp_path}/o:t", "--work-dir", str(tmp_path)))
    assert res.returncode == 0, res.stderr
    res = run_cli(*_layout_args(oci_layout, "--tls-verify=maybe", "--output-name", f"oci:{tmp_path}/p:t"))
    assert res.returncode == 2 and "maybe" in res.stderr


def test_wrong_platform_lists_available(oci_layout: Path, tmp_path: Path) -> None:
    res = run_cli(*_layout_args(oci_layout, "--platform", "linux/ppc64le", "--output-name",
                                f"oci:{tmp_path}/o:t", "--work-dir", str(tmp_path)))
    assert res.returncode != 0
    assert "no manifest for platform linux/ppc64le; it has: linux/amd64, linux/arm64/v8" in res.stderr


def test_bare_output_name_writes_local_layout(oci_layout: Path, tmp_path: Path) -> None:
    res = run_cli(*_layout_args(oci_layout, "--backend", "identity", "--work-dir", str(tmp_path)),
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith("oci:./tritonserver:latest@sha256:")
    assert skopeo_inspect(f"oci:{tmp_path}/tritonserver:latest", raw=True)["layers"]


def test_zstd_output(oci_layout: Path, tmp_path: Path) -> None:
    res = run_cli(*_layout_args(oci_layout, "--backend", "identity", "--compression", "zstd:5",
                                "--output-name", f"oci:{tmp_path}/z:t", "--work-dir", str(tmp_path)))
    assert res.returncode == 0, res.stderr
    raw = skopeo_inspect(f"oci:{tmp_path}/z:t", raw=True)
    assert raw["layers"][-1]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    rootfs = unpack(f"oci:{tmp_path}/z:t", tmp_path / "u", recompress=True)
    full = unpack(f"oci:{oci_layout}:full", tmp_path / "f")
    p = "opt/tritonserver/backends/identity"
    assert fingerprint(rootfs, p) == fingerprint(full, p)


def test_corrupt_source_blob_fails_and_writes_nothing(oci_layout: Path, tmp_path: Path) -> None:
    import shutil

    fx = tmp_path / "fx"
    shutil.copytree(oci_layout, fx)
    full_index = json.loads((fx / "blobs/sha256" / _root_digest(fx, "full")[7:]).read_text())
    amd = next(m for m in full_index["manifests"] if m["platform"]["architecture"] == "amd64")
    manifest = json.loads((fx / "blobs/sha256" / amd["digest"][7:]).read_text())
    victim = fx / "blobs/sha256" / manifest["layers"][7]["digest"][7:]  # the install layer
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    res = run_cli(*_layout_args(fx, "--backend", "identity", "--output-name", f"oci:{tmp_path}/o:t",
                                "--work-dir", str(tmp_path)))
    assert res.returncode != 0
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "corrupt" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


def _root_digest(layout: Path, name: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    return next(m["digest"] for m in index["manifests"]
                if m["annotations"]["org.opencontainers.image.ref.name"] == name)


@pytest.mark.parametrize("args", [["compose", "--container-version", "24.05", "--store-max-size", "lots"],
                                  ["store", "prune", "--max-size", "zz"]])
def test_bad_sizes_are_one_line(tmp_path: Path, args: list[str]) -> None:
    res = run_cli(*args, "--store-dir", str(tmp_path / "s"))
    assert res.returncode == 2 and res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    assert "like 20G" in res.stderr
