"""Registries with real auth: htpasswd (basic) and token auth with per-scope tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures import ngc
from tests.conftest import run_cli
from tests.consumers import fingerprint, unpack
from tests.registryserver import PASSWORD, USER, Registry, start_registry, write_docker_config


@pytest.fixture(scope="module", params=["htpasswd", "token"])
def auth_registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                  fixture_layout: Path) -> Iterator[tuple[Registry, Path, dict[str, str]]]:
    reg = start_registry(tmp_path_factory.mktemp(f"registry-{request.param}"), request.param)
    cfg = write_docker_config(tmp_path_factory.mktemp("dockercfg"), reg.host)
    mp = pytest.MonkeyPatch()
    mp.setenv("DOCKER_CONFIG", str(cfg))
    pushed = ngc.push(fixture_layout, ["min", "full"], f"{reg.host}/nvidia")
    mp.undo()
    yield reg, cfg, pushed
    reg.close()


def test_compose_with_credentials(auth_registry: tuple[Registry, Path, dict[str, str]], tmp_path: Path) -> None:
    reg, cfg, pushed = auth_registry
    out = f"{reg.host}/team/triton:custom"
    res = run_cli("compose", "-v", "--backend", "onnxruntime", "--image", f"min,{pushed['min']}",
                  "--image", f"full,{pushed['full']}", "--output-name", out, "--work-dir", str(tmp_path),
                  "--json", env={"DOCKER_CONFIG": str(cfg)})
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["stats"]["mounted"] == 7
    # never print a credential or a token
    everything = res.stdout + res.stderr + (tmp_path / "Dockerfile.compose").read_text()
    assert PASSWORD not in everything
    if reg.token_server:
        assert reg.token_server.issued
        for token in reg.token_server.issued:
            assert token not in everything
            assert token.split(".")[2] not in everything
        # tokens were asked per scope: a pull-only token for the sources, one naming both
        # repositories for the cross-repository mount
        scopes = [tuple(sorted(r["scopes"])) for r in reg.token_server.requests if r["user"]]
        assert ("repository:nvidia/min:pull",) in scopes
        assert ("repository:nvidia/min:pull", "repository:team/triton:pull,push") in scopes
    # an independent client with the same credentials reads it back
    import subprocess

    layout = tmp_path / "check"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--src-creds", f"{USER}:{PASSWORD}",
                    f"docker://{out}", f"oci:{layout}:x"], check=True, capture_output=True, timeout=300)
    rootfs = unpack(f"oci:{layout}:x", tmp_path / "u")
    assert fingerprint(rootfs, "opt/tritonserver/backends/onnxruntime")


def test_bad_credentials_fail_cleanly(auth_registry: tuple[Registry, Path, dict[str, str]], tmp_path: Path) -> None:
    reg, _, pushed = auth_registry
    bad = write_docker_config(tmp_path / "bad", reg.host, USER, "wrong-password")
    res = run_cli("compose", "--backend", "onnxruntime", "--image", f"min,{pushed['min']}",
                  "--image", f"full,{pushed['full']}", "--output-name", f"oci:{tmp_path}/out:x",
                  "--work-dir", str(tmp_path), env={"DOCKER_CONFIG": str(bad)})
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr and "wrong-password" not in res.stderr
    assert "credentials" in lines[0] and reg.host in lines[0]
    assert not (tmp_path / "out").exists()


def test_no_credentials_say_what_to_do(auth_registry: tuple[Registry, Path, dict[str, str]], tmp_path: Path) -> None:
    _reg, _, pushed = auth_registry
    res = run_cli("compose", "--backend", "onnxruntime", "--image", f"min,{pushed['min']}",
                  "--image", f"full,{pushed['full']}", "--output-name", f"oci:{tmp_path}/out:x",
                  "--work-dir", str(tmp_path))
    assert res.returncode != 0
    assert res.stderr.startswith("error: ") and "ociassemble login" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
