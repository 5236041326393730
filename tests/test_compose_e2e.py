"""End to end: fixtures pushed to a real docker-registry, composed, checked with skopeo + umoci."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.consumers import fingerprint, skopeo_inspect, unpack
from tests.registryserver import Registry

SELECTED = ["opt/tritonserver/backends/onnxruntime", "opt/tritonserver/backends/python",
            "opt/tritonserver/repoagents/checksum", "opt/tritonserver/caches/local",
            "opt/tritonserver/bin", "opt/tritonserver/lib", "opt/tritonserver/include",
            "opt/tritonserver/LICENSE", "opt/tritonserver/TRITON_VERSION",
            "opt/tritonserver/NVIDIA_Deep_Learning_Container_License.pdf", "usr/bin/serve",
            "opt/nvidia/entrypoint.d"]


@pytest.fixture(scope="module")
def composed(registry: Registry, pushed: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    work = tmp_path_factory.mktemp("compose-push")
    out = f"{registry.host}/me/triton:24.05-onnx"
    res = run_cli("compose", "--backend", "onnxruntime", "--backend", "python", "--repoagent", "checksum",
                  "--cache", "local", "--image", f"min,{pushed['min']}", "--image", f"full,{pushed['full']}",
                  "--output-name", out, "--work-dir", str(work), "--json")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    return {"out": out, "result": result, "work": work,
            "rootfs": unpack(f"docker://{out}", work / "composed"),
            "full_rootfs": unpack(f"docker://{pushed['full']}", work / "full"),
            "min_rootfs": unpack(f"docker://{pushed['min']}", work / "min")}


def test_selected_trees_are_byte_identical_to_full(composed: dict) -> None:  # type: ignore[type-arg]
    for path in SELECTED:
        ours = fingerprint(composed["rootfs"], path)
        theirs = fingerprint(composed["full_rootfs"], path)
        assert ours, f"{path} missing from the composed image"
        assert ours == theirs, f"{path} differs from the full image"


def test_only_selected_components_under_opt_tritonserver(composed: dict) -> None:  # type: ignore[type-arg]
    root = composed["rootfs"] / "opt/tritonserver"
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["LICENSE", "TRITON_VERSION", "NVIDIA_Deep_Learning_Container_License.pdf", "bin", "lib", "include",
         "backends", "repoagents", "caches"])
    assert sorted(p.name for p in (root / "backends").iterdir()) == ["onnxruntime", "python"]
    assert sorted(p.name for p in (root / "caches").iterdir()) == ["local"]
    # whiteout, opaque dir and the hardlink pair of the fixture came through as the full image has them
    assert not (root / "backends/onnxruntime/obsolete.txt").exists()
    assert sorted(p.name for p in (root / "backends/python/stale").iterdir()) == ["new.txt"]
    a = (root / "backends/onnxruntime/libonnxruntime_providers_shared.so").stat()
    b = (root / "backends/onnxruntime/libonnxruntime_providers_shared.so.1").stat()
    assert a.st_ino == b.st_ino
    assert not (root / "python").exists() and not (root / "third-party-src").exists()


def test_min_files_intact(composed: dict) -> None:  # type: ignore[type-arg]
    for path in ["usr/bin/bash", "usr/bin/passwd", "usr/local/cuda/lib64", "usr/lib/x86_64-linux-gnu/libc.so.6",
                 "opt/nvidia/nvidia_entrypoint.sh", "opt/hpcx"]:
        assert fingerprint(composed["rootfs"], path) == fingerprint(composed["min_rootfs"], path), path
    # the system layers (NVIDIA's build of compose.py's RUN steps) are there, as in full
    for path in ["etc/passwd", "home/triton-server", "usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                 "usr/local/lib/python3.10/dist-packages/pkg000"]:
        assert fingerprint(composed["rootfs"], path) == fingerprint(composed["full_rootfs"], path), path
    assert not (composed["rootfs"] / "home/ubuntu").exists()


def test_layers_and_config(composed: dict, pushed: dict[str, str]) -> None:  # type: ignore[type-arg]
    out = composed["out"]
    raw = skopeo_inspect(f"docker://{out}", raw=True)
    min_raw = skopeo_inspect(f"docker://{pushed['min']}", raw=True)
    full_raw = skopeo_inspect(f"docker://{pushed['full']}", raw=True)
    min_m = next(m for m in min_raw["manifests"] if m["platform"]["architecture"] == "amd64")
    full_m = next(m for m in full_raw["manifests"] if m["platform"]["architecture"] == "amd64")
    repo_min = pushed["min"].rsplit(":", 1)[0]
    repo_full = pushed["full"].rsplit(":", 1)[0]
    min_layers = skopeo_inspect(f"docker://{repo_min}@{min_m['digest']}", raw=True)["layers"]
    full_layers = skopeo_inspect(f"docker://{repo_full}@{full_m['digest']}", raw=True)["layers"]
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    # min's layers untouched, then full's 4 system layers (same blobs), then a new layer per COPY
    # line of Dockerfile.compose: the 6 core items, the 4 components, /usr/bin/serve
    assert raw["layers"][:3] == min_layers
    assert raw["layers"][3:7] == full_layers[3:7]
    assert len(raw["layers"]) == 3 + 4 + 11
    assert raw["annotations"]["org.opencontainers.image.base.digest"] == min_m["digest"]
    cfg = skopeo_inspect(f"docker://{out}", config=True)
    env = dict(e.split("=", 1) for e in cfg["config"]["Env"])
    assert env["TRITON_SERVER_VERSION"] == "2.46.0"
    assert env["NVIDIA_TRITON_SERVER_VERSION"] == "24.05"
    assert env["PATH"].startswith("/opt/tritonserver/bin:/usr/local/nvidia/bin:")
    assert env["UCX_MEM_EVENTS"] == "no" and env["TRITON_SERVER_GPU_ENABLED"] == "1"
    assert env["TRITON_SERVER_USER"] == "triton-server" and env["TCMALLOC_RELEASE_RATE"] == "200"
    assert env["NVIDIA_PRODUCT_NAME"] == "Triton Server" and env["NVIDIA_BUILD_ID"] == "98765432"
    assert env["PIP_BREAK_SYSTEM_PACKAGES"] == "1"
    assert "LD_LIBRARY_PATH" in env and "/opt/hpcx" not in env["LD_LIBRARY_PATH"]  # no pytorch selected
    labels = cfg["config"]["Labels"]
    assert labels["com.nvidia.tritonserver.version"] == "2.46.0"
    assert labels["com.nvidia.build.ref"] == "0123456789abcdef0123456789abcdef01234567"
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert len(cfg["rootfs"]["diff_ids"]) == len(raw["layers"])
    assert len([h for h in cfg["history"] if not h.get("empty_layer")]) == len(raw["layers"])
    assert cfg["created"] == "2024-05-20T00:00:00Z"


def test_second_run_is_identical_and_sends_nothing(composed: dict, pushed: dict[str, str]) -> None:  # type: ignore[type-arg]
    res = run_cli("compose", "--backend", "onnxruntime", "--backend", "python", "--repoagent", "checksum",
                  "--cache", "local", "--image", f"min,{pushed['min']}", "--image", f"full,{pushed['full']}",
                  "--output-name", composed["out"], "--work-dir", str(composed["work"]), "--json", "--verify")
    assert res.returncode == 0, res.stderr
    again = json.loads(res.stdout)
    assert again["manifest_digest"] == composed["result"]["manifest_digest"]
    assert again["stats"]["uploaded"] == 0 and again["stats"]["skipped"] > 0
    # --verify read the new layers back from the registry and found every reused blob there
    assert again["stats"]["verified_layers"] == len(skopeo_inspect(f"docker://{composed['out']}", raw=True)["layers"])
    assert again["stats"]["verified_bytes"] == sum(int(layer["size"]) for layer in again["layers"])


def test_first_run_mounted_min_layers(composed: dict) -> None:  # type: ignore[type-arg]
    stats = composed["result"]["stats"]
    # 3 min layers + 4 system layers, cross-repo mounted, and the license PDF's layer: full's
    # own later layer holds exactly what its COPY line writes, so it is passed through
    assert stats["mounted"] == 7 + 1
    assert stats["uploaded"] == 10 + 1  # the other new layers and the config


def test_dockerfile_compose_written(composed: dict) -> None:  # type: ignore[type-arg]
    text = (Path(composed["work"]) / "Dockerfile.compose").read_text()
    assert "FROM 127.0.0.1" in text and " AS full" in text
    assert "COPY --from=full /opt/tritonserver/backends/onnxruntime /opt/tritonserver/backends/onnxruntime" in text
    assert "RUN rm -fr /opt/tritonserver/*" in text


def test_platform_arm64_from_index(registry: Registry, pushed: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "arm"
    res = run_cli("compose", "--backend", "onnxruntime", "--image", f"min,{pushed['min']}",
                  "--image", f"full,{pushed['full']}", "--platform", "linux/arm64",
                  "--output-name", f"oci:{out}:arm", "--work-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    cfg = skopeo_inspect(f"oci:{out}:arm", config=True)
    assert cfg["architecture"] == "arm64"
    rootfs = unpack(f"oci:{out}:arm", tmp_path / "u", arch="arm64")
    full = unpack(f"docker://{pushed['full']}", tmp_path / "f", arch="arm64")
    path = "opt/tritonserver/backends/onnxruntime"
    assert fingerprint(rootfs, path) == fingerprint(full, path)
    assert "aarch64-linux-gnu" in str(list((rootfs / "usr/lib").iterdir()))
