from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# a sparse entry's holes are expanded into the spool: the tests' own (fuzzed) layers may claim
# any size, so they run with a small limit (tests of the limit set it themselves)
os.environ.setdefault("OCIASSEMBLE_MAX_SPARSE_HOLES", str(256 << 20))
# the store must never be the developer's: one for module-scoped fixtures, fresh ones per test
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ociassemble-test-cache-")

from fixtures import ngc
from tests.registryserver import Registry, start_registry

atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)


# The fast tier for local work, `pytest -m "not slow"` (under a minute): parsers, the tar
# reader and writer, the speculation, units. Modules that start registries, build images or
# run compose end to end are the slow tier; CI runs both.
SLOW_MODULES = {"test_archive", "test_auth", "test_build", "test_catalogue_inputs", "test_catalogue_os", "test_cli",
                "test_compose_e2e", "test_crashsafety", "test_differential", "test_examples", "test_faults",
                "test_fidelity", "test_fuzz", "test_layerindex", "test_layersize", "test_libcheck", "test_passthrough",
                "test_platforms", "test_serving", "test_store", "test_estargz"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed; run .ci/run (it installs docker-registry, skopeo, umoci)")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may read the developer's real docker credentials."""
    empty = tmp_path_factory.mktemp("dockercfg-empty")
    monkeypatch.setenv("DOCKER_CONFIG", str(empty))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


@pytest.fixture(scope="session")
def fixture_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fixtures") / "layout"
    ngc.build(path)
    return path


@pytest.fixture(scope="session")
def oci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images with OCI media types, as a layout skopeo and umoci can read directly."""
    path = tmp_path_factory.mktemp("fixtures-oci") / "layout"
    ngc.build(path, docker=False)
    return path


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    _need("docker-registry")
    reg = start_registry(tmp_path_factory.mktemp("registry-plain"))
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def pushed(registry: Registry, fixture_layout: Path) -> dict[str, str]:
    """min, full, cpu-min, cpu-full in the plain registry under nvidia/<name>:24.05."""
    old = os.environ.get("DOCKER_CONFIG")
    os.environ["DOCKER_CONFIG"] = "/nonexistent-ociassemble-test"
    try:
        return ngc.push(fixture_layout, ["min", "full", "cpu-min", "cpu-full"], f"{registry.host}/nvidia")
    finally:
        if old is None:
            os.environ.pop("DOCKER_CONFIG", None)
        else:
            os.environ["DOCKER_CONFIG"] = old


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "ociassemble", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=600, input=stdin if stdin is not None else "")
