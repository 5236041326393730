"""Registries with real auth: htpasswd (basic) and token auth with per-scope tokens."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures import ngc
from ociassemble.transport.registry.client import ClientOptions, RegistryClient
from tests.conftest import run_cli
from tests.consumers import fingerprint, unpack
from tests.registryserver import PASSWORD, REFRESH_TOKEN, USER, Registry, start_registry, write_docker_config


@pytest.fixture(scope="module", params=["htpasswd-tls", "token"])
def auth_registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                  fixture_layout: Path) -> Iterator[tuple[Registry, Path, dict[str, str]]]:
    """htpasswd (basic auth) over TLS with a test CA, and token auth over plain HTTP."""
    mode, _, tls = request.param.partition("-")
    reg = start_registry(tmp_path_factory.mktemp(f"registry-{request.param}"), mode, tls=bool(tls))
    cfg = write_docker_config(tmp_path_factory.mktemp("dockercfg"), reg.host)
    mp = pytest.MonkeyPatch()
    mp.setenv("DOCKER_CONFIG", str(cfg))
    pushed = ngc.push(fixture_layout, ["min", "full"], f"{reg.host}/nvidia", options=_opts(reg))
    mp.undo()
    yield reg, cfg, pushed
    reg.close()


def _opts(reg: Registry) -> ClientOptions:
    return ClientOptions(cert_dir=str(reg.cert_dir) if reg.cert_dir else None)


def _tls_args(reg: Registry) -> list[str]:
    return ["--cert-dir", str(reg.cert_dir)] if reg.cert_dir else []


def test_compose_with_credentials(auth_registry: tuple[Registry, Path, dict[str, str]], tmp_path: Path) -> None:
    reg, cfg, pushed = auth_registry
    out = f"{reg.host}/team/triton:custom"
    res = run_cli("compose", "-v", "--backend", "onnxruntime", "--image", f"min,{pushed['min']}",
                  "--image", f"full,{pushed['full']}", "--output-name", out, "--work-dir", str(tmp_path),
                  "--json", "--verify", *_tls_args(reg), env={"DOCKER_CONFIG": str(cfg)})
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["stats"]["mounted"] == 7 + 1  # min's 3, the 4 system layers, the license PDF passed through
    # never print a credential or a token: not in the output, not in any file the run wrote
    everything = res.stdout + res.stderr
    for f in tmp_path.rglob("*"):
        if f.is_file():
            everything += f.read_bytes().decode("latin-1")
    assert (tmp_path / "Dockerfile.compose").is_file()  # so the scan above covered what compose wrote
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
        # (exactly: scopes are spelled one way, though the registry answers "push,pull")
        assert ("repository:nvidia/min:pull", "repository:team/triton:pull,push") in scopes, scopes
        assert not [s for s in scopes if any(x.endswith("push,pull") for x in s)]
    # an independent client with the same credentials reads it back
    import subprocess

    layout = tmp_path / "check"
    tls = ["--src-cert-dir", str(reg.cert_dir)] if reg.cert_dir else ["--src-tls-verify=false"]
    subprocess.run(["skopeo", "copy", "--quiet", *tls, "--src-creds", f"{USER}:{PASSWORD}",
                    f"docker://{out}", f"oci:{layout}:x"], check=True, capture_output=True, timeout=300)
    rootfs = unpack(f"oci:{layout}:x", tmp_path / "u")
    assert fingerprint(rootfs, "opt/tritonserver/backends/onnxruntime")


def test_bad_credentials_fail_cleanly(auth_registry: tuple[Registry, Path, dict[str, str]], tmp_path: Path) -> None:
    reg, _, pushed = auth_registry
    bad = write_docker_config(tmp_path / "bad", reg.host, USER, "wrong-password")
    res = run_cli("compose", "--backend", "onnxruntime", "--image", f"min,{pushed['min']}",
                  "--image", f"full,{pushed['full']}", "--output-name", f"oci:{tmp_path}/out:x",
                  "--work-dir", str(tmp_path), *_tls_args(reg), env={"DOCKER_CONFIG": str(bad)})
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr and "wrong-password" not in res.stderr
    assert "credentials" in lines[0] and reg.host in lines[0]
    assert not (tmp_path / "out").exists()


def test_no_credentials_say_what_to_do(auth_registry: tuple[Registry, Path, dict[str, str]], tmp_path: Path) -> None:
    reg, _, pushed = auth_registry
    res = run_cli("compose", "--backend", "onnxruntime", "--image", f"min,{pushed['min']}",
                  "--image", f"full,{pushed['full']}", "--output-name", f"oci:{tmp_path}/out:x",
                  "--work-dir", str(tmp_path), *_tls_args(reg))
    assert res.returncode != 0
    assert res.stderr.startswith("error: ") and "ociassemble login" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# -- where credentials come from ---------------------------------------------------------

def _compose_min_only(reg: Registry, pushed: dict[str, str], tmp: Path, *extra: str,
                      env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("compose", "--backend", "identity", "--image", f"min,{pushed['min']}",
                   "--image", f"full,{pushed['full']}", "--output-name", f"{reg.host}/team/cred:{tmp.name}",
                   "--work-dir", str(tmp), "--json", *_tls_args(reg), *extra, env=env)


def test_credential_helper_on_path(auth_registry: tuple[Registry, Path, dict[str, str]], tmp_path: Path) -> None:
    reg, _, pushed = auth_registry
    bindir = tmp_path / "bin"
    bindir.mkdir()
    asked = tmp_path / "asked"
    helper = bindir / "docker-credential-citest"
    helper.write_text(f"""#!/bin/sh
[ "$1" = get ] || exit 2
read server
echo "$server" >> {asked}
printf '{{"ServerURL":"%s","Username":"{USER}","Secret":"{PASSWORD}"}}' "$server"
""")
    helper.chmod(0o755)
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "config.json").write_text(json.dumps({"credHelpers": {reg.host: "citest"}}))
    env = {"DOCKER_CONFIG": str(cfg), "PATH": f"{bindir}:{os.environ['PATH']}"}
    res = _compose_min_only(reg, pushed, tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert asked.read_text().split()[0] == reg.host
    assert PASSWORD not in res.stdout + res.stderr
    # the same helper as credsStore (docker's default store)
    (cfg / "config.json").write_text(json.dumps({"credsStore": "citest", "auths": {reg.host: {}}}))
    res = _compose_min_only(reg, pushed, tmp_path / "again", env=env)
    assert res.returncode == 0, res.stderr


def test_missing_helper_is_one_clear_line(auth_registry: tuple[Registry, Path, dict[str, str]], tmp_path: Path) -> None:
    reg, _, pushed = auth_registry
    (tmp_path / "config.json").write_text(json.dumps({"credHelpers": {reg.host: "nosuchhelper"}}))
    res = _compose_min_only(reg, pushed, tmp_path, env={"DOCKER_CONFIG": str(tmp_path)})
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1
    assert "docker-credential-nosuchhelper is not on PATH" in res.stderr


@pytest.mark.parametrize("how", ["creds", "env", "authfile", "registry_auth_file", "xdg_runtime_dir", "namespaced"])
def test_credentials_from_flags_env_and_auth_files(auth_registry: tuple[Registry, Path, dict[str, str]],
                                                   tmp_path: Path, how: str) -> None:
    reg, _, pushed = auth_registry
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    authfile = tmp_path / "auth.json"
    extra: list[str] = []
    env: dict[str, str] = {}
    if how == "creds":
        extra = ["--creds", f"{USER}:{PASSWORD}"]
    elif how == "env":
        env = {"OCIASSEMBLE_USERNAME": USER, "OCIASSEMBLE_PASSWORD": PASSWORD}
    elif how == "authfile":
        authfile.write_text(json.dumps({"auths": {f"https://{reg.host}": {"auth": auth}}}))
        extra = ["--authfile", str(authfile)]
    elif how == "registry_auth_file":
        authfile.write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
        env = {"REGISTRY_AUTH_FILE": str(authfile)}
    elif how == "xdg_runtime_dir":  # podman's default place
        (tmp_path / "containers").mkdir()
        (tmp_path / "containers" / "auth.json").write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
        env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    else:  # containers' namespaced keys: the most specific one wins, per repository
        wrong = base64.b64encode(f"{USER}:wrong".encode()).decode()
        authfile.write_text(json.dumps({"auths": {reg.host: {"auth": wrong}, f"{reg.host}/nvidia": {"auth": auth},
                                                  f"{reg.host}/team": {"auth": auth}}}))
        env = {"REGISTRY_AUTH_FILE": str(authfile)}
    res = _compose_min_only(reg, pushed, tmp_path, *extra, env=env)
    assert res.returncode == 0, res.stderr
    assert PASSWORD not in res.stdout + res.stderr


def test_identity_token_uses_the_oauth2_refresh_grant(tmp_path_factory: pytest.TempPathFactory,
                                                      fixture_layout: Path, tmp_path: Path) -> None:
    reg = start_registry(tmp_path_factory.mktemp("registry-idtoken"), "token")
    try:
        cfg = write_docker_config(tmp_path / "pw", reg.host)
        mp = pytest.MonkeyPatch()
        mp.setenv("DOCKER_CONFIG", str(cfg))
        pushed = ngc.push(fixture_layout, ["min", "full"], f"{reg.host}/nvidia")
        mp.undo()
        assert reg.token_server is not None
        before = len(reg.token_server.requests)
        idcfg = tmp_path / "id"
        idcfg.mkdir()
        (idcfg / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": base64.b64encode(
            f"{USER}:".encode()).decode(), "identitytoken": REFRESH_TOKEN}}}))
        res = _compose_min_only(reg, pushed, tmp_path, env={"DOCKER_CONFIG": str(idcfg)})
        assert res.returncode == 0, res.stderr
        used = reg.token_server.requests[before:]
        assert used and all(r.get("method") == "POST" and r["user"] for r in used)
        assert REFRESH_TOKEN not in res.stdout + res.stderr
        # a credential helper answering the username <token> hands over an identity token too
        bindir = tmp_path / "bin"
        bindir.mkdir()
        helper = bindir / "docker-credential-idtok"
        helper.write_text(f"""#!/bin/sh
read server
printf '{{"ServerURL":"%s","Username":"<token>","Secret":"{REFRESH_TOKEN}"}}' "$server"
""")
        helper.chmod(0o755)
        (idcfg / "config.json").write_text(json.dumps({"credHelpers": {reg.host: "idtok"}}))
        before = len(reg.token_server.requests)
        res = _compose_min_only(reg, pushed, tmp_path / "helper",
                                env={"DOCKER_CONFIG": str(idcfg), "PATH": f"{bindir}:{os.environ['PATH']}"})
        assert res.returncode == 0, res.stderr
        used = reg.token_server.requests[before:]
        assert used and all(r.get("method") == "POST" and r["user"] for r in used)
    finally:
        reg.close()


def test_ngc_api_key_and_key_normalisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ociassemble.transport.registry.credentials import CredentialOptions, find_credential

    monkeypatch.setenv("NGC_API_KEY", "nvapi-test-key")
    cred = find_credential("nvcr.io", "nvidia/tritonserver")
    assert cred is not None and (cred.username, cred.password) == ("$oauthtoken", "nvapi-test-key")
    assert "nvapi" not in repr(cred)
    assert find_credential("ghcr.io", "x/y") is None  # the NGC key is for nvcr.io only
    monkeypatch.delenv("NGC_API_KEY")
    hub = base64.b64encode(b"hubuser:hubpw").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": hub},
        "https://ghcr.io/v2/": {"auth": base64.b64encode(b"gh:ghpw").decode()}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    c = find_credential("registry-1.docker.io", "library/ubuntu")
    assert c is not None and c.username == "hubuser"
    c = find_credential("ghcr.io", "me/x")
    assert c is not None and c.password == "ghpw"
    c = find_credential("ghcr.io", "me/x", CredentialOptions(creds="a:b"))
    assert c is not None and c.username == "a"


# -- login -------------------------------------------------------------------------------

def test_login_checks_then_writes_the_auth_file(auth_registry: tuple[Registry, Path, dict[str, str]],
                                                tmp_path: Path) -> None:
    reg, _, pushed = auth_registry
    authfile = tmp_path / "auth.json"
    bad = run_cli("login", reg.host, "-u", USER, "--password-stdin", "--authfile", str(authfile),
                  *_tls_args(reg), stdin="wrong-password\n")
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and not authfile.exists()
    assert "wrong-password" not in bad.stderr
    ok = run_cli("login", reg.host, "-u", USER, "--password-stdin", "--authfile", str(authfile),
                 *_tls_args(reg), stdin=PASSWORD + "\n")
    assert ok.returncode == 0, ok.stderr
    assert PASSWORD not in ok.stdout + ok.stderr
    assert oct(authfile.stat().st_mode & 0o777) == "0o600"
    entry = json.loads(authfile.read_text())["auths"][reg.host]
    assert base64.b64decode(entry["auth"]).decode() == f"{USER}:{PASSWORD}"
    res = _compose_min_only(reg, pushed, tmp_path / "use", "--authfile", str(authfile))
    assert res.returncode == 0, res.stderr


# -- TLS ---------------------------------------------------------------------------------

def test_tls_without_the_ca_fails_clearly_and_tls_verify_false_works(
        auth_registry: tuple[Registry, Path, dict[str, str]], tmp_path: Path) -> None:
    reg, cfg, pushed = auth_registry
    if reg.cert_dir is None:
        pytest.skip("this registry speaks plain HTTP")
    args = ["compose", "--backend", "identity", "--image", f"min,{pushed['min']}", "--image",
            f"full,{pushed['full']}", "--output-name", f"oci:{tmp_path}/out:x", "--work-dir", str(tmp_path)]
    res = run_cli(*args, env={"DOCKER_CONFIG": str(cfg)})
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1
    assert "TLS verification failed" in res.stderr and "certs.d" in res.stderr
    res = run_cli(*args, "--tls-verify=false", env={"DOCKER_CONFIG": str(cfg)})
    assert res.returncode == 0, res.stderr


def test_client_certificates_from_certs_d(tmp_path_factory: pytest.TempPathFactory, fixture_layout: Path,
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry that demands a client certificate; the CA and the client pair are found
    in HOST/ under a certs.d root, as podman and docker keep them. Nothing is written to
    the temporary directory on the way (the merged CAs live in an SSL context)."""
    import tempfile

    from ociassemble.errors import RegistryError
    from ociassemble.presets.compose import ComposeOptions, compose
    from ociassemble.transport.registry import tlsconfig

    reg = start_registry(tmp_path_factory.mktemp("registry-mtls"), "none", client_certs=True)
    try:
        assert reg.cert_dir is not None
        pushed = ngc.push(fixture_layout, ["min", "full"], f"{reg.host}/nvidia",
                          options=ClientOptions(cert_dir=str(reg.cert_dir)))
        root = tmp_path / "certs.d"
        (root / reg.host).mkdir(parents=True)
        for f in reg.cert_dir.iterdir():
            (root / reg.host / f.name).write_bytes(f.read_bytes())
        monkeypatch.setattr(tlsconfig, "CERTS_D_ROOTS", [root])
        tmp = tmp_path / "tmp"
        tmp.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp))
        opts = ComposeOptions(backends=["identity"], images=[f"min,{pushed['min']}", f"full,{pushed['full']}"],
                              output_name=f"{reg.host}/team/mtls:1", work_dir=str(tmp_path), verify=True)
        assert compose(opts).manifest_digest.startswith("sha256:")
        assert list(tmp.iterdir()) == []
        (root / reg.host / "client.cert").unlink()
        (root / reg.host / "client.key").unlink()
        with pytest.raises(RegistryError):
            compose(opts)
    finally:
        reg.close()


def test_insufficient_scope_reauthenticates_with_the_scopes_named(
        auth_registry: tuple[Registry, Path, dict[str, str]]) -> None:
    reg, _, _ = auth_registry
    if reg.token_server is None:
        pytest.skip("basic auth has no scopes")
    from ociassemble.transport.registry.auth import Credential

    client = RegistryClient(reg.host, plain_http=True, credential=Credential(USER, PASSWORD))
    client.get_manifest("nvidia/min", "24.05")  # holds a token for nvidia/min:pull only
    before = len(reg.token_server.requests)
    # ask for full's manifest with min's token: the registry answers insufficient_scope
    resp = client.request("GET", "/v2/nvidia/full/manifests/24.05", ("repository:nvidia/min:pull",),
                          headers={"Accept": "application/vnd.docker.distribution.manifest.list.v2+json"})
    resp.close()
    asked = [tuple(sorted(r["scopes"])) for r in reg.token_server.requests[before:]]
    assert ("repository:nvidia/full:pull", "repository:nvidia/min:pull") in asked


def test_unreadable_ca_certificate_is_one_clear_line(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_text("not a certificate\n")
    res = run_cli("compose", "--backend", "identity", "--image", "min,127.0.0.1:9/nvidia/min:1", "--image",
                  "full,127.0.0.1:9/nvidia/full:1", "--output-name", f"oci:{tmp_path}/out:x",
                  "--cert-dir", str(certs), "--work-dir", str(tmp_path))
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "cannot be loaded" in res.stderr and str(certs) in res.stderr
    assert not (tmp_path / "out").exists()
