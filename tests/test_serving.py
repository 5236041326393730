"""A composed image serves: a real Triton server starts in it and answers an inference (issue 12).

The other end-to-end tests prove that composed trees equal the full image's; only this one
proves that the result *works*. fixtures/realtriton.py builds NGC-shaped images from a real
Debian rootfs and nvidia-pytriton's Triton build; here both flavours (GPU-shaped: min is a
layer prefix of full; CPU-only: min shares no layer with full) are pushed to a real registry,
composed with ``--backend python --cache local``, copied out with skopeo and unpacked with
umoci, and the composed image's own ``/opt/tritonserver/bin/tritonserver`` is started in that
rootfs (new mount and pid namespaces, chroot, the image config's Env and WorkingDir, a tmpfs
on /dev/shm for the python backend) to load a python-backend model and answer over HTTP on
loopback. No GPU is involved.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from fixtures import ngc, realtriton
from tests.conftest import run_cli
from tests.consumers import skopeo_inspect, unpack
from tests.registryserver import Registry, free_port

pytestmark = pytest.mark.slow

MODEL = "affine"
MODEL_CONFIG = f"""name: "{MODEL}"
backend: "python"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
response_cache {{ enable: true }}
"""
MODEL_PY = '''import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            y = (x * 2 + 1).astype(np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", y)]))
        return out
'''
INPUT = [1.0, 2.0, 3.5, -4.25, 0.0, 1e6]
LOADER_ERRORS = re.compile(r"error while loading shared libraries|cannot open shared object")
READY_TIMEOUT = 120.0

# Runs under unshare as the namespace's first process: the mounts the server needs, then the
# server itself in place of this process (exec), so the server is pid 1 and its death ends
# every process of the namespace. Host tools do the mounting; nothing of the image runs first.
_LAUNCH = r"""
import json, os, subprocess, sys
root, spec = sys.argv[1], json.loads(sys.argv[2])
def mount(*args):
    subprocess.run(["mount", *args], check=True, timeout=30)
mount("-t", "proc", "proc", os.path.join(root, "proc"))
mount("--rbind", "/dev", os.path.join(root, "dev"))
mount("-t", "tmpfs", "-o", "mode=1777,size=512m", "tmpfs", os.path.join(root, "dev/shm"))
os.chroot(root)
os.chdir(spec["cwd"])
os.execve(spec["argv"][0], spec["argv"], spec["env"])
"""


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed; run .ci/run (it installs mmdebstrap, patchelf, umoci, skopeo)")


@pytest.fixture(scope="module")
def real_images(registry: Registry) -> dict[str, str]:
    """The four real images (built once per machine, see fixtures/realtriton.py), pushed."""
    if os.geteuid() != 0:
        pytest.fail("the real-Triton test needs root (mmdebstrap, chroot, mount namespaces); CI runs as root")
    for tool in ("mmdebstrap", "patchelf", "unshare", "mount", "umoci", "skopeo"):
        _need(tool)
    built = realtriton.ensure()
    old = os.environ.get("DOCKER_CONFIG")
    os.environ["DOCKER_CONFIG"] = "/nonexistent-ociassemble-test"
    try:
        return ngc.push(built.layout, list(built.refs), f"{registry.host}/realtriton")
    finally:
        if old is None:
            os.environ.pop("DOCKER_CONFIG", None)
        else:
            os.environ["DOCKER_CONFIG"] = old


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    log: Path
    port: int

    def text(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill unshare by its pid; --kill-child takes the server (pid 1 there) and so its stubs with it."""
    inner = _children(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    for pid in inner:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists(), f"tritonserver (pid {pid}) outlived its namespace"


Start = Callable[[Path, dict, list[str]], Server]  # type: ignore[type-arg]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Start]:
    """Start tritonserver from an unpacked rootfs; every server started is killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(rootfs: Path, config: dict, args: list[str]) -> Server:  # type: ignore[type-arg]
        port = free_port()
        cfg = config.get("config") or {}
        env = dict(e.split("=", 1) for e in cfg.get("Env") or [])
        argv = ["/opt/tritonserver/bin/tritonserver", "--http-address=127.0.0.1", f"--http-port={port}",
                "--allow-grpc=false", "--allow-metrics=false", "--exit-timeout-secs=5", *args]
        spec = {"cwd": cfg.get("WorkingDir") or "/", "env": env, "argv": argv}
        log = tmp_path / f"tritonserver-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
                                     sys.executable, "-c", _LAUNCH, str(rootfs), json.dumps(spec)],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        started.append(proc)
        return Server(proc, log, port)

    yield start
    for proc in started:
        _stop(proc)


def wait_ready(server: Server) -> None:
    """Until /v2/health/ready says 200; a loader error or an exit fails at once (this Triton
    build hangs when the python stub cannot load a library, so the log is watched too)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        log = server.text()
        if LOADER_ERRORS.search(log):
            _stop(server.proc)
            pytest.fail(f"a shared library is missing in the composed image:\n{server.text()}")
        if server.proc.poll() is not None:
            pytest.fail(f"tritonserver exited with {server.proc.returncode} before it was ready:\n{log}")
        try:
            if requests.get(server.url("/v2/health/ready"), timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            _stop(server.proc)
            pytest.fail(f"tritonserver not ready after {READY_TIMEOUT:.0f} s:\n{server.text()}")
        time.sleep(0.5)


def write_model_repository(rootfs: Path) -> str:
    repo = rootfs / "srv/models"
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "config.pbtxt").write_text(MODEL_CONFIG)
    (repo / MODEL / "1/model.py").write_text(MODEL_PY)
    return "/srv/models"


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_composed_image_serves_a_python_model(flavour: str, real_images: dict[str, str], registry: Registry,
                                              serve: Start, tmp_path: Path) -> None:
    prefix = "" if flavour == "gpu" else "cpu-"
    out = f"{registry.host}/me/triton-real:{flavour}-python"
    res = run_cli("compose", "--backend", "python", "--cache", "local",
                  "--image", f"min,{real_images[prefix + 'min']}", "--image", f"full,{real_images[prefix + 'full']}",
                  "--output-name", out, "--work-dir", str(tmp_path), "-v",
                  *([] if flavour == "gpu" else ["--no-enable-gpu"]))
    assert res.returncode == 0, res.stderr
    config = skopeo_inspect(f"docker://{out}", config=True)
    rootfs = unpack(f"docker://{out}", tmp_path / "composed")

    # what makes the run meaningful: the server is the composed image's own, and only the
    # selected components came along
    opt = rootfs / "opt/tritonserver"
    binary = opt / "bin/tritonserver"
    assert binary.is_file() and not binary.is_symlink() and binary.read_bytes()[:4] == b"\x7fELF"
    assert sorted(p.name for p in (opt / "backends").iterdir()) == ["python"]
    assert sorted(p.name for p in (opt / "caches").iterdir()) == ["local"]
    assert not (opt / "repoagents").exists() or not any((opt / "repoagents").iterdir())
    for decoy in realtriton.DECOYS:
        assert not (opt / decoy).exists(), f"{decoy} should not be in the composed image"
    assert not (rootfs / realtriton.LATER_OUTSIDE_OPT).exists()
    assert (rootfs / "usr/bin/python3").exists(), "python3 (full's prepare layer) did not arrive"

    server = serve(rootfs, config, [f"--model-repository={write_model_repository(rootfs)}",
                                    "--cache-config", "local,size=1048576"])
    wait_ready(server)
    log = server.text
    meta = requests.get(server.url("/v2"), timeout=10).json()
    assert meta["version"] == (opt / "TRITON_VERSION").read_text().strip() == realtriton.TRITON_VERSION, log()
    body = {"inputs": [{"name": "INPUT0", "shape": [len(INPUT)], "datatype": "FP32", "data": INPUT}]}
    for _ in range(2):  # the second answer comes from caches/local
        r = requests.post(server.url(f"/v2/models/{MODEL}/infer"), json=body, timeout=60)
        assert r.status_code == 200, f"{r.status_code} {r.text}\n{log()}"
        answer = r.json()["outputs"][0]
        assert answer["name"] == "OUTPUT0" and answer["datatype"] == "FP32" and answer["shape"] == [len(INPUT)]
        assert answer["data"] == [x * 2 + 1 for x in INPUT], log()
    stats = requests.get(server.url(f"/v2/models/{MODEL}/stats"), timeout=10).json()
    assert stats["model_stats"][0]["inference_stats"]["cache_hit"]["count"] == 1, f"{stats}\n{log()}"
    assert "/opt/tritonserver/backends/python/libtriton_python.so" in log()
    # passed: the rootfs and its layout (about 400 MB) go now, not three pytest runs later
    _stop(server.proc)
    shutil.rmtree(rootfs.parent)
    shutil.rmtree(tmp_path / "composed-layout")
