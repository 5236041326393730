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
    assert "share 0 of min's 1 layers: min is not full's base" in res.stderr
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


def _cpu_args(fx: Path, out: str, work: Path, *extra: str) -> list[str]:
    return ["compose", "--no-enable-gpu", "--backend", "python", "--image", f"min,oci:{fx}:cpu-min",
            "--image", f"full,oci:{fx}:cpu-full", "--output-name", out, "--work-dir", str(work), *extra]


def _run_lines(dockerfile: Path) -> list[str]:
    return [line for line in dockerfile.read_text().splitlines() if line.startswith("RUN ")]


def test_cpu_only_stands_on_fulls_own_base(oci_layout: Path, tmp_path: Path) -> None:
    """min shares no layer with full (compose.py's ubuntu:22.04 against NVIDIA's 24.04 base):
    the result stands on full's layers below /opt/tritonserver, so what full's build
    installed arrives, and Dockerfile.compose says exactly that."""
    fx = oci_layout
    res = run_cli(*_cpu_args(fx, f"oci:{tmp_path}/o:t", tmp_path))
    assert res.returncode == 0, res.stderr
    assert "min shares 0 of its 1 layers with full, so it is not full's base" in res.stderr
    assert "system layers carried from full: 4 [0, 1, 2, 3]" in res.stderr
    out = skopeo_inspect(f"oci:{tmp_path}/o:t", raw=True)
    full = skopeo_inspect(f"oci:{fx}:cpu-full", raw=True)
    mn = skopeo_inspect(f"oci:{fx}:cpu-min", raw=True)
    digests = [d["digest"] for d in out["layers"]]
    assert digests[:4] == [d["digest"] for d in full["layers"][:4]]
    assert mn["layers"][0]["digest"] not in digests
    assert "annotations" not in out or "org.opencontainers.image.base.name" not in out["annotations"]
    rootfs = unpack(f"oci:{tmp_path}/o:t", tmp_path / "u")
    assert "triton-server:x:1000" in (rootfs / "etc/passwd").read_text()  # full's useradd layer
    assert (rootfs / "usr/lib/x86_64-linux-gnu/libjemalloc.so.2").is_file()  # full's apt layer
    assert "24.04" in (rootfs / "etc/os-release").read_text()  # full's OS, not min's 22.04
    cfg = skopeo_inspect(f"oci:{tmp_path}/o:t", config=True)
    full_cfg = skopeo_inspect(f"oci:{fx}:cpu-full", config=True)
    assert cfg["rootfs"]["diff_ids"][:4] == full_cfg["rootfs"]["diff_ids"][:4]
    assert len(cfg["history"]) == len([h for h in cfg["history"] if h.get("empty_layer")]) + len(digests)
    dockerfile = tmp_path / "Dockerfile.compose"
    text = dockerfile.read_text()
    assert "\nFROM full\n" in text and "FROM oci:" not in text.split("AS full")[1].split("AS min_container")[0]
    assert "RUN apt-get update \\" in _run_lines(dockerfile) and "useradd $TRITON_SERVER_USER" in text


def test_base_min_keeps_min_and_the_dockerfile_says_what_is_missing(oci_layout: Path, tmp_path: Path) -> None:
    fx = oci_layout
    res = run_cli(*_cpu_args(fx, f"oci:{tmp_path}/o:t", tmp_path, "--base", "min"))
    assert res.returncode == 0, res.stderr
    assert "warning: min shares 0 of its 1 layers with full: it is not full's base" in res.stderr
    assert "system layers carried from full: 0 []" in res.stderr
    out = skopeo_inspect(f"oci:{tmp_path}/o:t", raw=True)
    mn = skopeo_inspect(f"oci:{fx}:cpu-min", raw=True)
    assert out["layers"][0]["digest"] == mn["layers"][0]["digest"]
    rootfs = unpack(f"oci:{tmp_path}/o:t", tmp_path / "u")
    assert "triton-server" not in (rootfs / "etc/passwd").read_text()
    assert not (rootfs / "usr/lib/x86_64-linux-gnu/libjemalloc.so.2").exists()
    dockerfile = tmp_path / "Dockerfile.compose"
    assert f"FROM oci:{fx}:cpu-min" in dockerfile.read_text()
    # the only RUN lines left are those the image did get (the opaque marker, ownership)
    assert _run_lines(dockerfile) == ["RUN rm -fr /opt/tritonserver/*",
                                      "RUN chown 1000:1000 /opt/tritonserver/backends"]
    assert "are NOT in this image" in dockerfile.read_text()


def test_min_sharing_only_part_of_fulls_base_is_not_its_base(tmp_path: Path) -> None:
    """A min that shares full's OS layer but adds its own (not the image full was built on):
    mixing its layers with full's system layers would stack them on the wrong base."""
    from fixtures.ngc import F, LayerDef, Store, image
    from fixtures.stacks import ENV, LABELS, base_layer, install_layer

    store = Store(tmp_path / "fx")
    base = base_layer()
    own = LayerDef([F("etc/min-only", data=b"min's own layer\n")], "RUN touch /etc/min-only")
    prepare = LayerDef([F("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\ntriton-server:x:1000:1000::/:/bin/sh\n")],
                       "RUN useradd triton-server")
    store.refs["min"] = image(store, [base, own], ENV[:1], {}, "amd64", False)
    store.refs["full"] = image(store, [base, prepare, install_layer()], ENV, LABELS, "amd64", False)
    store.write_index()
    fx = tmp_path / "fx"
    res = run_cli("compose", "--no-enable-gpu", "--backend", "a", "--image", f"min,oci:{fx}:min", "--image",
                  f"full,oci:{fx}:full", "--output-name", f"oci:{tmp_path}/o:t", "--work-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "min shares 1 of its 2 layers with full, so it is not full's base" in res.stderr
    rootfs = unpack(f"oci:{tmp_path}/o:t", tmp_path / "u")
    assert not (rootfs / "etc/min-only").exists()
    assert "triton-server" in (rootfs / "etc/passwd").read_text()
    assert (rootfs / "opt/tritonserver/backends/a/libtriton_a.so").is_file()


def test_no_system_layers_means_no_prepare_run_lines(oci_layout: Path, tmp_path: Path) -> None:
    res = run_cli(*_layout_args(oci_layout, "--backend", "python", "--system-layers", "none",
                                "--output-name", f"oci:{tmp_path}/o:t", "--work-dir", str(tmp_path)))
    assert res.returncode == 0, res.stderr
    dockerfile = tmp_path / "Dockerfile.compose"
    assert not [line for line in _run_lines(dockerfile) if "apt-get" in line or "userdel" in line]
    assert "--system-layers none was given" in dockerfile.read_text()
    rootfs = unpack(f"oci:{tmp_path}/o:t", tmp_path / "u")
    assert "triton-server" not in (rootfs / "etc/passwd").read_text()
    res = run_cli(*_layout_args(oci_layout, "--backend", "python", "--output-name", f"oci:{tmp_path}/p:t",
                                "--work-dir", str(tmp_path)))
    assert res.returncode == 0, res.stderr
    assert [line for line in _run_lines(dockerfile) if "apt-get" in line]  # carried: the steps are listed


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
    (["--image", "min,dir:/x", "--image", "full,x"], "transport 'dir' is not supported"),
    (["--image", "min,docker-archive:/nonexistent.tar", "--image", "full,x"], "nonexistent.tar: no such file"),
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


def test_a_layer_over_the_entry_limit_is_one_clear_line(oci_layout: Path, tmp_path: Path) -> None:
    """Every header of a layer stays in memory (~2 KB each): past the limit, a clear refusal
    instead of an exhausted machine (issue 13, item 8)."""
    from tests.oneline import assert_one_line_error

    res = run_cli(*_layout_args(oci_layout, "--backend", "identity", "--output-name", f"oci:{tmp_path}/o:t",
                                "--work-dir", str(tmp_path)), env={"OCIASSEMBLE_MAX_ENTRIES": "40"})
    assert_one_line_error(res, r"has more than 40 entries; .* OCIASSEMBLE_MAX_ENTRIES", untouched=[tmp_path / "o"])


@pytest.mark.parametrize("selection", [
    ["--backend", "onnxruntime", "--backend", "python", "--image", "min,oci:{fx}:min", "--image", "full,oci:{fx}:full"],
    ["--no-enable-gpu", "--backend", "python", "--image", "min,oci:{fx}:cpu-min", "--image", "full,oci:{fx}:cpu-full"],
    ["--no-enable-gpu", "--backend", "pytorch", "--image", "min,oci:{fx}:cpu-min", "--image",
     "full,oci:{fx}:cpu-full", "--image", "gpu-min,oci:{fx}:gpu-min"],
], ids=["gpu", "cpu-only", "cpu-only-gpu-min"])
def test_dry_run_writes_the_dockerfile_the_real_run_writes(oci_layout: Path, tmp_path: Path,
                                                           selection: list[str]) -> None:
    """The dry run reads layer headers (never bodies): SageMaker's serve, the CUDA library
    names read from gpu-min's files and the base are those the real run finds."""
    args = [a.format(fx=oci_layout) for a in selection]
    dry, real = tmp_path / "dry", tmp_path / "real"
    res = run_cli("compose", "--dry-run", *args, "--output-name", f"oci:{tmp_path}/never:t", "--work-dir", str(dry))
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "never").exists()
    res = run_cli("compose", *args, "--output-name", f"oci:{tmp_path}/o:t", "--work-dir", str(real))
    assert res.returncode == 0, res.stderr
    text = (dry / "Dockerfile.compose").read_text()
    assert text == (real / "Dockerfile.compose").read_text()
    assert "COPY --from=full /usr/bin/serve /usr/bin/serve" in text  # a later layer of full writes it
    if "gpu-min" in " ".join(args):
        assert "libcusolver.so /usr/local/cuda/lib64/stubs/libcusolver.so.11" in text


def test_dry_run_with_an_unknown_backend_fails(oci_layout: Path, tmp_path: Path) -> None:
    from tests.oneline import assert_one_line_error

    res = run_cli(*_layout_args(oci_layout, "--dry-run", "--backend", "nosuch", "--output-name",
                                f"oci:{tmp_path}/o:t", "--work-dir", str(tmp_path)))
    assert_one_line_error(res, r"has no backend 'nosuch'; it has: dali, fil, identity", untouched=[tmp_path / "o"])


def test_an_output_index_nested_thousands_deep_is_one_line(oci_layout: Path, tmp_path: Path) -> None:
    """A destination layout whose index.json is JSON nested 100,000 deep (json.loads raises
    RecursionError, not ValueError): one line, and the file is left as it was."""
    from tests.oneline import assert_one_line_error

    out = tmp_path / "o"
    out.mkdir()
    (out / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (out / "index.json").write_text("[" * 100_000)
    res = run_cli(*_layout_args(oci_layout, "--backend", "identity", "--output-name", f"oci:{out}:t",
                                "--work-dir", str(tmp_path / "w")))
    assert_one_line_error(res, r"index\.json is not valid JSON")
    assert (out / "index.json").read_text() == "[" * 100_000
