"""The local store: warm composes read no blob twice, unchanged re-runs are a few HEADs,
damage and faults never leave a bad blob behind, two processes can share it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.faultproxy import FaultProxy, Rule
from tests.registryserver import Registry


@pytest.fixture(scope="module")
def proxy(registry: Registry, pushed: dict[str, str]) -> Iterator[FaultProxy]:
    p = FaultProxy(registry.host)
    yield p
    p.close()


def _compose(proxy: FaultProxy, store: Path, work: Path, out: str, *backends: str, extra: tuple[str, ...] = ()
             ) -> dict:  # type: ignore[type-arg]
    args = [a for b in backends for a in ("--backend", b)]
    res = run_cli("compose", *args, "--image", f"min,{proxy.host}/nvidia/min:24.05",
                  "--image", f"full,{proxy.host}/nvidia/full:24.05", "--output-name", out,
                  "--work-dir", str(work), "--json", "--store-dir", str(store), *extra)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def _blob_gets(proxy: FaultProxy) -> list[str]:
    return [s.path for s in proxy.seen if s.method == "GET" and "/blobs/" in s.path]


def test_warm_new_selection_downloads_nothing_and_unchanged_rerun_is_heads(
        proxy: FaultProxy, registry: Registry, tmp_path: Path) -> None:
    store = tmp_path / "store"
    proxy.reset()
    cold = _compose(proxy, store, tmp_path, f"{proxy.host}/store/t:a", "onnxruntime")
    assert cold["stats"]["downloaded_bytes"] > 0 and _blob_gets(proxy)
    # a different selection: every full layer it needs is in the store already
    proxy.reset()
    warm = _compose(proxy, store, tmp_path, f"{proxy.host}/store/t:b", "python", "pytorch")
    assert warm["stats"]["downloaded_bytes"] == 0 and not _blob_gets(proxy), _blob_gets(proxy)
    assert warm["stats"]["store_hits"] > 0
    nostore = run_cli("compose", "--backend", "python", "--backend", "pytorch", "--image",
                      f"min,{proxy.host}/nvidia/min:24.05", "--image", f"full,{proxy.host}/nvidia/full:24.05",
                      "--output-name", f"oci:{tmp_path}/plain:x", "--work-dir", str(tmp_path), "--json", "--no-store")
    assert nostore.returncode == 0, nostore.stderr
    assert json.loads(nostore.stdout)["layers"] == warm["layers"]  # the store changes no byte
    # unchanged: only HEAD requests (and the registry API check, GET /v2/), nothing read or sent
    proxy.reset()
    again = _compose(proxy, store, tmp_path, f"{proxy.host}/store/t:b", "python", "pytorch")
    assert again["manifest_digest"] == warm["manifest_digest"] and again["stats"]["memo_hit"] == 1
    heads = [s for s in proxy.seen if (s.method, s.path) != ("GET", "/v2/")]
    assert heads and {s.method for s in heads} == {"HEAD"}
    assert len(heads) <= 6 and len(proxy.seen) - len(heads) == 1


def test_memo_retags_a_layout_that_lost_its_tag(proxy: FaultProxy, tmp_path: Path) -> None:
    store, out = tmp_path / "store", tmp_path / "out"
    first = _compose(proxy, store, tmp_path, f"oci:{out}:x", "identity")
    index = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps({**index, "manifests": []}))
    again = _compose(proxy, store, tmp_path, f"oci:{out}:x", "identity")
    assert again["stats"]["memo_hit"] == 1 and again["stats"]["retagged"] == 1
    assert json.loads((out / "index.json").read_text())["manifests"][0]["digest"] == first["manifest_digest"]


def test_damaged_store_blob_is_dropped_and_fetched_again(proxy: FaultProxy, tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = _compose(proxy, store, tmp_path, f"oci:{tmp_path}/a:x", "onnxruntime")
    blobs = sorted((store / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    victim = blobs[-1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x01
    victim.write_bytes(bytes(data))
    for memo in (store / "memo").iterdir():
        memo.unlink()
    for idx in (store / "index").iterdir():
        idx.unlink()  # force the layers to be read again
    proxy.reset()
    again = _compose(proxy, store, tmp_path, f"oci:{tmp_path}/b:x", "onnxruntime")
    assert again["manifest_digest"] != "" and again["layers"] == first["layers"]
    assert any(victim.name in p for p in _blob_gets(proxy))  # re-fetched from the registry
    from ociassemble.oci.digest import sha256_digest

    assert sha256_digest(victim.read_bytes()) == "sha256:" + victim.name  # and stored intact


def test_faulty_download_leaves_nothing_in_the_store(proxy: FaultProxy, tmp_path: Path) -> None:
    store = tmp_path / "store"
    proxy.reset(Rule("GET", r"^/v2/nvidia/full/blobs/", "corrupt", times=0))
    res = run_cli("compose", "--backend", "onnxruntime", "--image", f"min,{proxy.host}/nvidia/min:24.05",
                  "--image", f"full,{proxy.host}/nvidia/full:24.05", "--output-name", f"oci:{tmp_path}/o:x",
                  "--work-dir", str(tmp_path), "--store-dir", str(store))
    proxy.reset()
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1
    from ociassemble.oci.digest import sha256_digest

    for p in (store / "blobs/sha256").iterdir():
        assert not p.name.startswith(".part-")
        assert sha256_digest(p.read_bytes()) == "sha256:" + p.name


def test_two_processes_share_one_store(proxy: FaultProxy, tmp_path: Path) -> None:
    store = tmp_path / "store"
    procs = []
    for i in range(2):
        args = [sys.executable, "-m", "ociassemble", "compose", "--backend", "onnxruntime", "--image",
                f"min,{proxy.host}/nvidia/min:24.05", "--image", f"full,{proxy.host}/nvidia/full:24.05",
                "--output-name", f"oci:{tmp_path}/o{i}:x", "--work-dir", str(tmp_path / f"w{i}"), "--json",
                "--store-dir", str(store)]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=dict(os.environ)))
    outs = [p.communicate(timeout=300) for p in procs]
    for o in outs:
        print(o[1][-1200:])
    assert all(p.returncode == 0 for p in procs)
    digests = {json.loads(o[0])["manifest_digest"] for o in outs}
    assert len(digests) == 1


def test_store_info_and_prune(proxy: FaultProxy, tmp_path: Path) -> None:
    store = tmp_path / "store"
    _compose(proxy, store, tmp_path, f"oci:{tmp_path}/o:x", "identity")
    info = run_cli("store", "info", "--store-dir", str(store))
    assert info.returncode == 0 and " blobs, " in info.stdout
    count = int(info.stdout.split(": ")[1].split(" blobs")[0])
    assert count > 0
    pruned = run_cli("store", "prune", "--store-dir", str(store), "--max-size", "0")
    assert pruned.returncode == 0 and f"removed {count} blobs" in pruned.stdout
    assert not [p for p in (store / "blobs/sha256").iterdir()]


class _Recorder:
    def __init__(self) -> None:
        self.started: dict[str, int] = {}
        self.advanced: dict[str, int] = {}
        self.notes: dict[str, str] = {}

    def start(self, key: str, label: str, total: int) -> None:
        self.started[key] = total

    def advance(self, key: str, n: int) -> None:
        self.advanced[key] = self.advanced.get(key, 0) + n

    def finish(self, key: str, note: str = "") -> None:
        self.notes[key] = note


def test_progress_reports_each_layer_and_what_the_index_skips(proxy: FaultProxy, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from ociassemble.presets.compose import ComposeOptions, compose
    from ociassemble.progress import RichProgress

    proxy.reset()
    images = [f"min,{proxy.host}/nvidia/min:24.05", f"full,{proxy.host}/nvidia/full:24.05"]
    first = _Recorder()
    # the layer scan's events alone (the shared-library check reports its own file lists)
    compose(ComposeOptions(backends=["identity"], images=images, output_name=f"oci:{tmp_path}/a:x",
                           work_dir=str(tmp_path), store_dir=str(tmp_path / "store"), progress=first,
                           check_libs="off"))
    assert first.started and first.advanced == first.started  # every byte of every read layer counted
    assert set(first.notes) == set(first.started) and not any(first.notes.values())
    second = _Recorder()
    compose(ComposeOptions(backends=["python"], images=images, output_name=f"oci:{tmp_path}/b:x",
                           work_dir=str(tmp_path), store_dir=str(tmp_path / "store"), progress=second,
                           check_libs="off"))
    skipped = [k for k, note in second.notes.items() if "not read" in note]
    assert skipped and not set(skipped) & set(second.started)  # the wheels layer: nothing selected in it
    with RichProgress() as live:  # the terminal display renders the same events
        compose(ComposeOptions(backends=["repeat"], images=images, output_name=f"oci:{tmp_path}/c:x",
                               work_dir=str(tmp_path), no_store=True, progress=live))
    assert "full layer" in capsys.readouterr().err


def test_prune_evicts_least_recently_used_first(tmp_path: Path) -> None:
    from ociassemble.oci.digest import sha256_digest
    from ociassemble.oci.model import Descriptor
    from ociassemble.transport.store import Store

    st = Store(tmp_path / "s")
    descs = []
    for i, age in enumerate([300, 100, 200]):  # seconds since last use
        data = bytes([i]) * 1000
        d = Descriptor("application/octet-stream", sha256_digest(data), len(data))
        st.blob_path(d.digest).write_bytes(data)
        os.utime(st.blob_path(d.digest), (1_700_000_000 - age, 1_700_000_000 - age))
        descs.append(d)
    removed, freed = st.prune(2000)
    assert (removed, freed) == (1, 1000)
    assert [st.has(d) for d in descs] == [False, True, True]  # the oldest went
    st.prune(1000)
    assert [st.has(d) for d in descs] == [False, True, False]


def test_compose_keeps_the_store_under_its_limit(proxy: FaultProxy, tmp_path: Path) -> None:
    store = tmp_path / "store"
    _compose(proxy, store, tmp_path, f"oci:{tmp_path}/o:x", "identity", extra=("--store-max-size", "1k"))
    assert sum(p.stat().st_size for p in (store / "blobs/sha256").iterdir()) <= 1024


def test_layout_sources_are_indexed_but_not_copied(oci_layout: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    args = ["compose", "--backend", "identity", "--image", f"min,oci:{oci_layout}:min", "--image",
            f"full,oci:{oci_layout}:full", "--work-dir", str(tmp_path), "--json", "--store-dir", str(store)]
    first = run_cli(*args, "--output-name", f"oci:{tmp_path}/a:x")
    assert first.returncode == 0, first.stderr
    assert not list((store / "blobs/sha256").iterdir())  # a local layout is not duplicated
    assert list((store / "index").iterdir())
    second = run_cli(*args, "--output-name", f"oci:{tmp_path}/b:x", "--backend", "python")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["stats"]["index_hits"] > 0
