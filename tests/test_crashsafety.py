"""Crash safety (issue 13): compose is SIGKILLed at several points, then run again.

The points are reached by real timing, not by hooks in the code: a proxy in front of the
registry sends chosen blobs slowly (or holds an upload), and the test polls the file
system (or the proxy) until the run is where it should be killed: reading layers (a
blob half in the store), uploading to a registry, writing the output layout (a blob half
in the layout). A sweep kills a local layout-to-layout compose at evenly spaced moments
as well. After every kill:

- the store verifies: every stored blob hashes to its name, every index and memo parses;
- the destination is untouched (no new tag; an existing layout's ``index.json`` keeps its
  bytes) or holds a complete image: ``skopeo inspect`` and ``umoci unpack`` succeed for
  every tag of the layout, or of the registry reference;
- the run again succeeds with the manifest digest of an uninterrupted run, and removes
  the leftovers of the killed one (``.part-*`` files, ``ociassemble-*`` scratch folders).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.consumers import skopeo_inspect
from tests.faultproxy import FaultProxy, Rule
from tests.registryserver import Registry

REPO = Path(__file__).resolve().parent.parent
REF_NAME = "org.opencontainers.image.ref.name"


@pytest.fixture(scope="module")
def proxy(registry: Registry, pushed: dict[str, str]) -> Iterator[FaultProxy]:
    p = FaultProxy(registry.host)
    yield p
    p.close()


def _args(proxy: FaultProxy, out: str, work: Path, store: Path) -> list[str]:
    return ["compose", "--backend", "onnxruntime", "--backend", "python",
            "--image", f"min,{proxy.host}/nvidia/min:24.05", "--image", f"full,{proxy.host}/nvidia/full:24.05",
            "--output-name", out, "--work-dir", str(work), "--store-dir", str(store), "--json"]


def _digest_of(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stderr
    return str(json.loads(res.stdout)["manifest_digest"])


def _kill_when(args: list[str], ready: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Start compose, poll until ``ready()``, SIGKILL it there."""
    proc = subprocess.Popen([sys.executable, "-m", "ociassemble", *args], cwd=REPO, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                _out, err = proc.communicate()
                pytest.fail(f"compose ended (exit {proc.returncode}) before {what}: {err}")
            if time.monotonic() > deadline:
                pytest.fail(f"compose did not reach {what} in {timeout} s")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _parts(d: Path) -> list[Path]:
    return list(d.rglob(".part-*")) if d.exists() else []


def _scratch(work: Path) -> list[str]:
    return [p.name for p in work.iterdir() if p.name.startswith("ociassemble-")]


def verify_store(store: Path) -> None:
    """Every complete blob hashes to its name; indexes and memos are whole JSON documents."""
    blobs = store / "blobs" / "sha256"
    for p in blobs.iterdir() if blobs.exists() else []:
        if p.name.startswith(".part-"):
            continue
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name, f"stored blob {p.name} is damaged"
    for sub in ("index", "memo"):
        for p in (store / sub).glob("*.json") if (store / sub).exists() else []:
            json.loads(p.read_text())


def _layout_blob(lay: Path, digest: str) -> bytes:
    data = (lay / "blobs" / "sha256" / digest[7:]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest[7:], f"{digest} in {lay} is damaged"
    return data


def layout_tags(lay: Path, unpack_into: Path | None = None) -> set[str]:
    """The tags of an output layout, each checked to be a complete image: every blob it
    reaches is there and hashes to its name, skopeo inspects it, umoci unpacks it."""
    if not (lay / "index.json").exists():
        return set()
    tags = set()
    for m in json.loads((lay / "index.json").read_text())["manifests"]:
        tag = m["annotations"][REF_NAME]
        tags.add(tag)
        manifest = json.loads(_layout_blob(lay, m["digest"]))
        for d in [manifest["config"], *manifest["layers"]]:
            _layout_blob(lay, d["digest"])
        skopeo_inspect(f"oci:{lay}:{tag}")
        if unpack_into is not None:
            done = subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{lay}:{tag}",
                                   str(unpack_into / tag)], capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr
    return tags


@pytest.fixture(scope="module")
def reference(proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Manifest digests of uninterrupted runs, into a layout and into the registry."""
    t = tmp_path_factory.mktemp("reference")
    proxy.reset()
    return {"layout": _digest_of(run_cli(*_args(proxy, f"oci:{t}/lay:ref", t, t / "store"))),
            "registry": _digest_of(run_cli(*_args(proxy, f"{proxy.host}/crash/ref:x", t, t / "store2")))}


def test_kill_while_reading_layers(proxy: FaultProxy, reference: dict[str, str], tmp_path: Path) -> None:
    """Killed with a layer of full half in the store and the scratch folder in use: the
    store holds only whole blobs, the layout was never started; the run again cleans up."""
    store, work, lay = tmp_path / "store", tmp_path / "work", tmp_path / "lay"
    work.mkdir()
    proxy.reset(Rule("GET", r"/v2/nvidia/full/blobs/sha256:", "slow", times=0, seconds=2))
    _kill_when(_args(proxy, f"oci:{lay}:x", work, store),
               lambda: bool(_parts(store / "blobs")) and bool(_scratch(work)), "a layer half read")
    proxy.reset()
    assert _parts(store / "blobs") and _scratch(work)  # what the kill left
    verify_store(store)
    assert layout_tags(lay) == set()
    assert _digest_of(run_cli(*_args(proxy, f"oci:{lay}:x", work, store))) == reference["layout"]
    assert not _parts(store) and not _scratch(work) and not _parts(lay)
    verify_store(store)
    assert layout_tags(lay, tmp_path / "u") == {"x"}


def test_kill_while_writing_the_layout(proxy: FaultProxy, reference: dict[str, str], tmp_path: Path) -> None:
    """Killed with one of min's layers half copied into a layout that already holds another
    image (written by skopeo): that tag and index.json are as they were; the run again adds
    the new tag."""
    store, work, lay = tmp_path / "store", tmp_path / "work", tmp_path / "lay"
    work.mkdir()
    proxy.reset()
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{proxy.host}/nvidia/cpu-min:24.05",
                    f"oci:{lay}:old"], check=True, capture_output=True, timeout=300)
    old_index = (lay / "index.json").read_bytes()
    # cpu-min shares one layer with min; min's other layers are copied slowly
    proxy.reset(Rule("GET", r"/v2/nvidia/min/blobs/sha256:", "slow", times=0, seconds=2))
    _kill_when(_args(proxy, f"oci:{lay}:x", work, store), lambda: bool(_parts(lay / "blobs")),
               "a blob half written into the layout")
    proxy.reset()
    assert _parts(lay / "blobs")  # what the kill left
    assert (lay / "index.json").read_bytes() == old_index
    assert layout_tags(lay) == {"old"}
    verify_store(store)
    assert _digest_of(run_cli(*_args(proxy, f"oci:{lay}:x", work, store))) == reference["layout"]
    assert not _parts(lay) and not _parts(store) and not _scratch(work)
    verify_store(store)
    assert layout_tags(lay, tmp_path / "u") == {"old", "x"}


def test_kill_while_uploading(proxy: FaultProxy, reference: dict[str, str], tmp_path: Path) -> None:
    """Killed while the registry holds an upload: the tag does not exist; the run again
    pushes the image an uninterrupted run pushes, and it unpacks."""
    store, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    ref = f"{proxy.host}/crash/up{os.getpid()}:x"
    proxy.reset(Rule("PUT", r"/blobs/uploads/", "stall", times=0, seconds=3),
                Rule("PATCH", r"/blobs/uploads/", "stall", times=0, seconds=3))

    def uploading() -> bool:
        with proxy.lock:
            return any(s.method in ("PUT", "PATCH") and "/blobs/uploads/" in s.path for s in proxy.seen)

    _kill_when(_args(proxy, ref, work, store), uploading, "an upload")
    proxy.reset()
    direct = ref.replace(proxy.host, proxy.upstream)  # skopeo straight to the registry (the proxy
    # keeps one Accept header of several, and the registry would answer schema 1)
    gone = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{direct}"], capture_output=True,
                          text=True, timeout=60)
    assert gone.returncode != 0, "a tag exists after the killed run"
    verify_store(store)
    assert _digest_of(run_cli(*_args(proxy, ref, work, store))) == reference["registry"]
    assert not _parts(store) and not _scratch(work)
    verify_store(store)
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{direct}"], check=True,
                         capture_output=True, timeout=60).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == reference["registry"]
    lay = tmp_path / "copy"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{direct}", f"oci:{lay}:x"],
                   check=True, capture_output=True, timeout=300)
    assert layout_tags(lay, tmp_path / "u") == {"x"}


def test_kill_at_many_moments(oci_layout: Path, tmp_path: Path) -> None:
    """A local compose into a layout that holds a tag, killed at evenly spaced moments from
    start to end: after each kill the layout is as it was or holds the whole new tag; one
    run afterwards gives the digest of an uninterrupted run."""
    store, work, lay = tmp_path / "store", tmp_path / "work", tmp_path / "lay"
    work.mkdir()

    def args(out: str, *extra: str) -> list[str]:
        return ["compose", "--backend", "pytorch", "--backend", "python", "--image", f"min,oci:{oci_layout}:min",
                "--image", f"full,oci:{oci_layout}:full", "--output-name", out, "--work-dir", str(work),
                "--store-dir", str(store), "--json", *extra]

    want = _digest_of(run_cli(*args(f"oci:{tmp_path}/ref:x")))
    assert run_cli(*args(f"oci:{lay}:old", "--no-store")).returncode == 0  # --no-store: no memo for tag x
    for p in store.rglob("*"):
        if p.is_file():
            p.unlink()  # the reference run's store would make the killed runs memo hits
    start = time.monotonic()
    assert run_cli(*args(f"oci:{tmp_path}/timing:x", "--no-store")).returncode == 0
    span = time.monotonic() - start
    old_index = (lay / "index.json").read_bytes()
    outcomes = []
    for k in range(1, 7):
        delay = span * k / 7
        proc = subprocess.Popen([sys.executable, "-m", "ociassemble", *args(f"oci:{lay}:x")], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        tags = layout_tags(lay)
        verify_store(store)
        if tags == {"old"}:
            assert (lay / "index.json").read_bytes() == old_index
        else:
            assert tags == {"old", "x"}
        outcomes.append((round(delay, 2), proc.returncode, sorted(tags)))
        if tags == {"old", "x"}:
            break
    assert any(code == -signal.SIGKILL for _d, code, _t in outcomes), outcomes
    assert _digest_of(run_cli(*args(f"oci:{lay}:x"))) == want
    assert not _parts(lay) and not _parts(store) and not _scratch(work)
    verify_store(store)
    assert layout_tags(lay, tmp_path / "u") == {"old", "x"}
