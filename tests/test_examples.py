"""examples/: the Kubernetes Job, GitLab CI and GitHub Actions examples run one script;
it composes rootless, here as an unprivileged user against the test registry (issue 15, item 5)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.consumers import skopeo_inspect

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
ROOTLESS = Path("/opt/ociassemble-rootless")
NOBODY = 65534
UNPRIVILEGED = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs"]


def _as_nobody(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*UNPRIVILEGED, *args], env=env, cwd="/", capture_output=True, text=True, timeout=timeout)


def test_the_examples_command_line_runs_as_an_unprivileged_user(registry, pushed: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """The script the CI examples run, as uid 65534 with no capabilities, using ociassemble
    as a CI runner installs it (.ci/run puts it in a venv of Debian's python3 that any user
    can run; this interpreter may live where another user cannot reach)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root to drop to an unprivileged user (CI runs as root)")
    if not (ROOTLESS / "bin/ociassemble").is_file():
        pytest.skip(f"{ROOTLESS} is missing: .ci/run installs ociassemble there for an unprivileged user")
    home = Path(tempfile.mkdtemp(prefix="oa-nobody-"))
    try:
        os.chown(home, NOBODY, NOBODY)
        script = home / "compose-rootless.sh"
        shutil.copy(EXAMPLES / "compose-rootless.sh", script)  # the checkout may not be readable by that user
        env = {"PATH": f"{ROOTLESS}/bin:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home),
               "DOCKER_CONFIG": str(home / "docker"), "OUTPUT": f"{registry.host}/ci/triton:rootless",
               "MIN": pushed["min"], "FULL": pushed["full"], "BACKENDS": "onnxruntime python",
               "ARCHIVE": str(home / "triton.tar"), "ARCHIVE_NAME": "ci/triton:rootless"}
        who = _as_nobody(["sh", "-c", "id -u; ociassemble --version"], env)
        assert who.returncode == 0 and who.stdout.split()[0] == str(NOBODY), who.stderr
        denied = _as_nobody(["sh", "-c", "touch /written-by-nobody"], env)
        assert denied.returncode != 0  # no privilege left: / is not writable
        res = _as_nobody(["sh", str(script)], env)
        assert res.returncode == 0, res.stdout + res.stderr
        pushed_out = skopeo_inspect(f"docker://{registry.host}/ci/triton:rootless", raw=True)
        assert len(pushed_out["layers"]) > 3
        archive = home / "triton.tar"
        assert archive.stat().st_uid == NOBODY
        assert skopeo_inspect(f"docker-archive:{archive}")["Labels"]["com.nvidia.tritonserver.version"] == "2.46.0"
        assert list((home / "ociassemble-cache").iterdir())  # the store lives in the user's own cache
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_the_ci_examples_run_that_script_without_privileges() -> None:
    job = yaml.safe_load((EXAMPLES / "kubernetes/compose-job.yaml").read_text())
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert not sc.get("privileged") and sc["readOnlyRootFilesystem"] is True
    assert "/scripts/compose-rootless.sh" in " ".join(container["args"])
    gitlab = yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text())["compose-triton"]
    assert "sh examples/compose-rootless.sh" in gitlab["script"] and "services" not in gitlab
    github = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    steps = github["jobs"]["compose"]["steps"]
    assert {"run": "sh examples/compose-rootless.sh"} in steps
    assert all("docker" not in str(s.get("uses", "")) for s in steps)
    lint = subprocess.run(["sh", "-n", str(EXAMPLES / "compose-rootless.sh")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stderr
