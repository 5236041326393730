"""eStargz layers read through their own table of contents (issue 16, item 3): no artifact.

The eStargz images are made by the real converter: Debian's ``ctr-remote`` (stargz-snapshotter)
against a ``containerd`` started here on a socket of its own, from the fixture's full image in
the test registry, gzip chunks as it writes them by default and with small chunks
(``--estargz-chunk-size``, files cut into many gzip members). Compose through the TOC must
give the very digest it gives reading the layers whole (``--no-index``), fetching less; a TOC
that is not the one the manifest names is refused in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import run_cli
from tests.faultproxy import FaultProxy
from tests.oneline import assert_one_line_error
from tests.registryserver import Registry

SEL = ["--backend", "onnxruntime", "--backend", "python"]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# the fixture's layers are small: 16 KiB Range requests show what 4 MiB ones do on a big layer
SMALL = {"OCIASSEMBLE_RANGE_PIECE": str(16 << 10)}


@pytest.fixture(scope="module")
def estargz(registry: Registry, pushed: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        dict[str, str]]:
    for tool in ("containerd", "ctr-remote"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed; run .ci/run (it installs containerd and stargz-snapshotter)")
    if os.geteuid() != 0:
        pytest.skip("containerd (which ctr-remote converts through) runs as root here")
    d = tmp_path_factory.mktemp("containerd")
    sock = d / "containerd.sock"
    (d / "config.toml").write_text(
        f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n')
    log = open(d / "containerd.log", "wb")
    daemon = subprocess.Popen(["containerd", "--config", str(d / "config.toml")], stdout=log, stderr=log)
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.1)
        ctr = ["ctr-remote", "-a", str(sock)]
        host = registry.host
        refs = {"esgz": f"{host}/estargz/full:1", "chunked": f"{host}/estargz/full:chunked"}

        def run(*args: str) -> None:
            res = subprocess.run([*ctr, *args], capture_output=True, text=True, timeout=300)
            assert res.returncode == 0, f"{args}: {res.stderr[-2000:]}\n{(d / 'containerd.log').read_text()[-2000:]}"

        run("content", "fetch", "--plain-http", "--platform", "linux/amd64", pushed["full"])
        run("images", "convert", "--estargz", "--oci", "--platform", "linux/amd64", pushed["full"], refs["esgz"])
        run("images", "convert", "--estargz", "--estargz-chunk-size", "16384", "--oci", "--platform", "linux/amd64",
            pushed["full"], refs["chunked"])
        for ref in refs.values():
            run("images", "push", "--plain-http", "--platform", "linux/amd64", ref)
        yield {**refs, "min": pushed["min"]}
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()


def _manifest(ref: str) -> dict:  # type: ignore[type-arg]
    host, rest = ref.split("/", 1)
    repo, tag = rest.rsplit(":", 1)
    resp = requests.get(f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}, timeout=30)
    resp.raise_for_status()
    return resp.json()  # type: ignore[no-any-return]


def _compose(full: str, minimum: str, tmp: Path, name: str, *extra: str) -> tuple[dict, str]:  # type: ignore[type-arg]
    res = run_cli("compose", *SEL, "--image", f"min,{minimum}", "--image", f"full,{full}", "--output-name",
                  f"oci:{tmp / name}:x", "--work-dir", str(tmp / f"w-{name}"), "--store-dir", str(tmp / f"s-{name}"),
                  "--json", "-v", "--check-libs", "off", *extra, env=SMALL)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout), res.stderr


@pytest.mark.parametrize("kind", ["esgz", "chunked"])
def test_an_estargz_image_is_composed_through_its_toc(registry: Registry, estargz: dict[str, str], kind: str,
                                                      tmp_path: Path) -> None:
    full_layers = [d["digest"] for d in _manifest(estargz[kind])["layers"]]
    assert all("containerd.io/snapshot/stargz/toc.digest" in d["annotations"]
               for d in _manifest(estargz[kind])["layers"])
    proxy = FaultProxy(registry.host)
    try:
        full = estargz[kind].replace(registry.host, proxy.host)
        minimum = estargz["min"].replace(registry.host, proxy.host)
        whole, _ = _compose(full, minimum, tmp_path, "whole", "--no-index")
        by_whole = dict(proxy.blob_bytes_by)
        proxy.blob_bytes_by.clear()
        toc, log = _compose(full, minimum, tmp_path, "toc")
        by_toc = dict(proxy.blob_bytes_by)
    finally:
        proxy.close()
    assert toc["manifest_digest"] == whole["manifest_digest"]
    assert "bodies read through its eStargz TOC" in log and "entries from its eStargz TOC, nothing wanted" in log, log
    # full's layers the result does not carry (a layout destination fetches carried ones whole):
    # through the TOC, less in all, and those holding nothing selected not fetched beyond the TOC
    index = json.loads((tmp_path / "toc" / "index.json").read_text())
    out = json.loads((tmp_path / "toc" / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    own = [d for d in full_layers if d not in {x["digest"] for x in out["layers"]}]
    got = {d[:19]: (by_toc.get(d, 0), by_whole.get(d, 0)) for d in own}
    assert sum(by_toc.get(d, 0) for d in own) < sum(by_whole[d] for d in own), got
    assert sum(1 for d in own if by_toc.get(d, 0) < by_whole[d] / 4) >= 2, got


def test_a_toc_other_than_the_manifest_names_is_refused_in_one_line(registry: Registry, estargz: dict[str, str],
                                                                    tmp_path: Path) -> None:
    doc = _manifest(estargz["esgz"])
    doc["layers"][-1]["annotations"]["containerd.io/snapshot/stargz/toc.digest"] = "sha256:" + "0" * 64
    body = json.dumps(doc).encode()
    resp = requests.put(f"http://{registry.host}/v2/estargz/full/manifests/tampered", data=body,
                        headers={"Content-Type": OCI_MANIFEST}, timeout=30)
    assert resp.status_code == 201, resp.text
    tampered = f"{registry.host}/estargz/full:tampered"
    res = run_cli("compose", *SEL, "--image", f"min,{estargz['min']}", "--image", f"full,{tampered}",
                  "--output-name", f"oci:{tmp_path / 'out'}:x", "--work-dir", str(tmp_path / "w"),
                  "--store-dir", str(tmp_path / "s"))
    assert_one_line_error(res, r"eStargz table of contents is not the one its manifest names.*--no-index",
                          untouched=[tmp_path / "out"])
    # read whole instead, the layer is what its digest says: the image composes
    ok, _ = _compose(tampered, estargz["min"], tmp_path, "whole", "--no-index")
    assert ok["manifest_digest"].startswith("sha256:")
