"""Composing through a fault-injecting proxy in front of the real registry.

Each faulty run must either end with exactly the digests of a clean run, or fail with one
clear line and leave nothing at the destination.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ociassemble.oci.model import Descriptor
from ociassemble.transport.registry.client import ClientOptions, RegistryClient
from tests.conftest import run_cli
from tests.faultproxy import FaultProxy, Rule
from tests.registryserver import Registry

BLOB = r"^/v2/nvidia/full/blobs/sha256:"
MANIFEST = r"^/v2/nvidia/(min|full)/manifests/"


@pytest.fixture(scope="module")
def proxy(registry: Registry, pushed: dict[str, str]) -> Iterator[FaultProxy]:
    p = FaultProxy(registry.host)
    yield p
    p.close()


def _compose(proxy: FaultProxy, tmp: Path, *extra: str, out: str | None = None) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    dest = out or f"oci:{tmp / 'out'}:x"
    res = run_cli("compose", "--backend", "onnxruntime", "--backend", "python",
                  "--image", f"min,{proxy.host}/nvidia/min:24.05", "--image", f"full,{proxy.host}/nvidia/full:24.05",
                  "--output-name", dest, "--work-dir", str(tmp), "--json", "--timeout", "3", *extra)
    return res.returncode, (json.loads(res.stdout) if res.returncode == 0 else {}), res.stderr


@pytest.fixture(scope="module")
def clean(proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> str:
    proxy.reset()
    code, result, err = _compose(proxy, tmp_path_factory.mktemp("clean"))
    assert code == 0, err
    return str(result["manifest_digest"])


@pytest.mark.parametrize("rules", [
    [Rule("GET", BLOB, "drop-mid", times=2)],
    [Rule("GET", BLOB, "reset", times=2)],
    [Rule("GET", BLOB, "status", times=2, status=503), Rule("GET", BLOB, "status", status=429, retry_after="1")],
    [Rule("GET", BLOB, "status", status=500), Rule("GET", BLOB, "status", status=502),
     Rule("GET", MANIFEST, "status", status=504)],
    [Rule("GET", BLOB, "stall", seconds=5)],
    [Rule("GET", BLOB, "redirect", times=0)],
], ids=["drop-mid-blob", "reset", "503-then-429", "500-502-504", "stall-past-timeout", "redirect-to-blob-host"])
def test_transient_faults_end_with_the_clean_digests(proxy: FaultProxy, clean: str, tmp_path: Path,
                                                    rules: list[Rule]) -> None:
    proxy.reset(*rules)
    code, result, err = _compose(proxy, tmp_path)
    assert code == 0, err
    assert result["manifest_digest"] == clean
    assert all(r.fired for r in rules)
    if rules[0].fault == "drop-mid":  # resumed from where it broke, not from byte 0
        ranges = [s.headers.get("Range", "") for s in proxy.seen if s.method == "GET" and "/blobs/" in s.path]
        assert any(r.startswith("bytes=") and r != "bytes=0-" for r in ranges)


def test_redirects_do_not_carry_authorization_to_the_blob_host(proxy: FaultProxy, clean: str,
                                                               tmp_path: Path) -> None:
    proxy.reset(Rule("GET", BLOB, "redirect", times=0))
    proxy.basic = ("proxy-user", "proxy-Pa55-secret")
    try:
        code, result, err = _compose(proxy, tmp_path, "--creds", "proxy-user:proxy-Pa55-secret")
    finally:
        proxy.basic = None
    assert code == 0, err
    assert result["manifest_digest"] == clean
    assert proxy.blob_seen, "no blob was redirected"
    assert all("Authorization" not in s.headers for s in proxy.blob_seen)
    assert any("Authorization" in s.headers for s in proxy.seen)  # while the registry itself got it
    assert "proxy-Pa55-secret" not in err + json.dumps(result)


@pytest.mark.parametrize("rules,expect", [
    ([Rule("GET", BLOB, "corrupt", times=0)], "sha256"),
    ([Rule("GET", BLOB, "status", times=0, status=503)], "503"),
    ([Rule("GET", BLOB, "stall", times=0, seconds=5)], "cannot reach registry"),
], ids=["wrong-digest", "503-forever", "stall-forever"])
def test_persistent_faults_fail_cleanly_and_leave_nothing(proxy: FaultProxy, tmp_path: Path,
                                                         rules: list[Rule], expect: str) -> None:
    proxy.reset(*rules)
    code, _, err = _compose(proxy, tmp_path)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert expect in lines[0]
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("ociassemble-")]  # scratch removed


def test_push_through_faults_then_tag_is_right(proxy: FaultProxy, registry: Registry, clean: str,
                                               tmp_path: Path) -> None:
    """Uploads meet 503s and a dropped connection; the tag, written last, names a complete image."""
    target = f"{proxy.host}/faulty/push:1"
    proxy.reset(Rule("PUT", r"^/v2/faulty/push/blobs/uploads/", "status", times=2, status=503),
                Rule("POST", r"^/v2/faulty/push/blobs/uploads/", "reset", times=1),
                Rule("PUT", r"^/v2/faulty/push/manifests/", "status", times=1, status=500))
    code, result, err = _compose(proxy, tmp_path, "--verify", out=target)
    assert code == 0, err
    assert result["stats"]["verified_layers"] > 0
    client = RegistryClient(registry.host, plain_http=True)
    _raw, _mt, digest = client.get_manifest("faulty/push", "1")
    assert digest == result["manifest_digest"]


def test_chunked_upload_resumes_from_the_registry_offset(proxy: FaultProxy, registry: Registry,
                                                         tmp_path: Path) -> None:
    data = os.urandom(13 << 20)
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    from ociassemble.oci.digest import sha256_digest

    desc = Descriptor("application/octet-stream", sha256_digest(data), len(data))
    proxy.reset()
    first = {"n": 0}  # let the first chunk through, break the connection on the second
    original = proxy._take

    def take(method: str, path: str) -> Rule | None:
        if method == "PATCH":
            first["n"] += 1
            if first["n"] == 2:
                return Rule("PATCH", "", "reset")
        return original(method, path)

    proxy._take = take  # type: ignore[method-assign]
    try:
        client = RegistryClient(proxy.host, plain_http=True, options=ClientOptions(chunk_size=5 << 20, backoff=0.05))
        client.upload_blob("chunks/test", desc, lambda: open(blob, "rb"))
    finally:
        proxy._take = original  # type: ignore[method-assign]
    patches = [s for s in proxy.seen if s.method == "PATCH"]
    assert len(patches) == 4  # 3 chunks (5+5+3 MiB), one of them sent twice
    assert {s.headers["Content-Range"] for s in patches} == {"0-5242879", "5242880-10485759", "10485760-13631487"}
    assert any(s.method == "GET" and "/blobs/uploads/" in s.path for s in proxy.seen)  # asked where it stood
    direct = RegistryClient(registry.host, plain_http=True)
    with direct.open_blob("chunks/test", desc) as r:
        assert sha256_digest(r.read()) == desc.digest


def test_mount_answered_202_falls_back_to_upload(registry: Registry, tmp_path: Path) -> None:
    from ociassemble.oci.digest import sha256_digest

    data = b"not in the source repository" * 1000
    desc = Descriptor("application/octet-stream", sha256_digest(data), len(data))
    client = RegistryClient(registry.host, plain_http=True)
    location = client.mount_blob("mount/target", desc.digest, "mount/nowhere")
    assert location is not None  # 202: the registry opened an upload instead
    blob = tmp_path / "b"
    blob.write_bytes(data)
    client.upload_blob("mount/target", desc, lambda: open(blob, "rb"), location)
    assert client.blob_exists("mount/target", desc.digest)


def test_resume_when_the_server_ignores_range(proxy: FaultProxy, clean: str, tmp_path: Path) -> None:
    """A server that answers a Range request with the whole body: the bytes already read are skipped."""
    proxy.reset(Rule("GET", BLOB, "drop-mid", times=2))
    proxy.ignore_range = True
    try:
        code, result, err = _compose(proxy, tmp_path)
    finally:
        proxy.ignore_range = False
    assert code == 0, err
    assert result["manifest_digest"] == clean


def test_scopes_have_one_spelling() -> None:
    from ociassemble.transport.registry.client import _canonical

    assert _canonical(("repository:a/b:push,pull", "repository:a/b:pull", "repository:c:pull", "registry:catalog:*")
                      ) == ("registry:catalog:*", "repository:a/b:pull,push", "repository:c:pull")


def test_read_ahead_hands_errors_over_and_stops_early() -> None:
    import io

    from ociassemble.errors import DigestMismatch
    from ociassemble.layers.compression import ReadAhead

    class Broken:
        def __init__(self) -> None:
            self.n = 0

        def read(self, n: int = -1) -> bytes:
            self.n += 1
            if self.n == 3:
                raise DigestMismatch("bad bytes")
            return b"x" * 10

    ahead = ReadAhead(Broken(), chunk=10)
    assert ahead.read(10) == b"x" * 10 and ahead.read(10) == b"x" * 10
    with pytest.raises(DigestMismatch, match="bad bytes"):
        ahead.read(10)
    endless = ReadAhead(io.BytesIO(b"y" * (50 << 20)), chunk=1 << 20, depth=2)
    assert endless.read(5) == b"yyyyy"
    endless.close()  # the producer stops although the stream is not read to its end
    assert not endless._thread.is_alive()
