"""Layer indexes shared through the registry, and reads of only what a selection needs
(issue 16): round trip, a registry that ignores Range, tampered indexes, the same images."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from ociassemble.layers.layerindex import ARTIFACT_TYPE, MEDIA_TYPE, POINTS_MEDIA_TYPE, LayerIndex
from ociassemble.oci.model import Descriptor
from ociassemble.oci.reference import parse_registry_ref
from ociassemble.transport.referrers import fallback_tag, find, publish
from ociassemble.transport.source import registry_client
from tests.conftest import run_cli
from tests.faultproxy import FaultProxy
from tests.oneline import assert_one_line_error

SEL = ["--backend", "onnxruntime", "--backend", "python"]
# the fixture's layers are small: access points every 64 KiB and 16 KiB Range requests show the
# partial reads a multi-GB layer gets with the defaults (4 MiB, 4 MiB)
SMALL = {"OCIASSEMBLE_INDEX_SPACING": str(64 << 10), "OCIASSEMBLE_RANGE_PIECE": str(16 << 10)}


def _ok(res) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def _compose(full: str, minimum: str, out: Path, store: Path, *extra: str, to: str | None = None) -> dict:  # type: ignore[type-arg]
    """To a layout, or (``to``) a registry repository, where carried layers are mounted, not fetched."""
    return _ok(run_cli("compose", *SEL, "--image", f"min,{minimum}", "--image", f"full,{full}", "--output-name",
                       to or f"oci:{out}:x", "--work-dir", str(out.parent / f"w-{out.name}"), "--store-dir",
                       str(store), "--json", "-v", *extra, env=SMALL))


@pytest.fixture(scope="module")
def published(registry, pushed: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """The full image copied to its own repository, indexed and the indexes published."""
    tmp = tmp_path_factory.mktemp("lindex")
    full = f"{registry.host}/indexed/full:24.05"
    _ok(run_cli("copy", pushed["full"], full, "--json", "--store-dir", str(tmp / "copy-store")))
    res = _ok(run_cli("index", full, "--push", "--json", "--store-dir", str(tmp / "indexer-store"), env=SMALL))
    return {"full": full, "min": pushed["min"], "artifact": res["artifact"], "layers": res["layers"], "tmp": tmp}


def test_index_round_trip_reads_only_what_the_selection_needs(registry, published: dict, tmp_path: Path) -> None:  # type: ignore[no-untyped-def,type-arg]
    assert str(published["artifact"]).startswith("sha256:") and published["layers"]
    proxy = FaultProxy(registry.host)
    try:
        full = str(published["full"]).replace(registry.host, proxy.host)
        minimum = str(published["min"]).replace(registry.host, proxy.host)
        # the reference: no index, every layer of full's own read whole
        # (--check-libs off: the library check reads the carried system layers for its own reasons)
        host = full.split("/", 1)[0]
        plain = _compose(full, minimum, tmp_path / "plain", tmp_path / "store-plain", "--no-index",
                         "--check-libs", "off", to=f"{host}/out/plain:1")
        whole = dict(proxy.blob_bytes_by)
        proxy.reset()
        proxy.blob_bytes_by.clear()
        # a fresh machine: the indexes found beside the image, the bodies fetched with Range
        fresh = _compose(full, minimum, tmp_path / "fresh", tmp_path / "store-fresh", "--check-libs", "off",
                         to=f"{host}/out/fresh:1")
        partial = dict(proxy.blob_bytes_by)
    finally:
        proxy.close()
    assert fresh["manifest_digest"] == plain["manifest_digest"]
    # what Range requests fetched counts as downloaded (the proxy also counts configs and the
    # index artifact's blobs, which the layer statistics leave out)
    stats = fresh["stats"]
    assert 0 < stats["range_bytes"] <= stats["downloaded_bytes"] <= sum(partial.values()), stats
    # full's own layers: the plain run fetched each whole; with the index, the system layers (nothing
    # selected) were decided on and not fetched at all, the others no more than whole
    layers = [d for d in whole if d not in _min_layers(published)]
    got = {d[:19]: (partial.get(d, 0), whole[d]) for d in layers}
    assert sum(partial.get(d, 0) for d in layers) < sum(whole[d] for d in layers), str(got)
    untouched = [d for d in layers if partial.get(d, 0) == 0]
    assert len(untouched) >= 3, str(got)  # the system layers and a later one holding nothing selected


def test_a_registry_that_ignores_range_gives_the_same_image(registry, published: dict, tmp_path: Path) -> None:  # type: ignore[no-untyped-def,type-arg]
    proxy = FaultProxy(registry.host, ignore_range=True)
    try:
        full = str(published["full"]).replace(registry.host, proxy.host)
        minimum = str(published["min"]).replace(registry.host, proxy.host)
        got = _compose(full, minimum, tmp_path / "ignored", tmp_path / "store-i")
        ranged = [s for s in proxy.seen if "/blobs/sha256:" in s.path and "Range" in s.headers]
        want = _compose(full, minimum, tmp_path / "direct", tmp_path / "store-d", "--no-index")
    finally:
        proxy.close()
    assert ranged  # Range was asked for, and answered with whole bodies
    assert got["manifest_digest"] == want["manifest_digest"]


def test_the_store_keeps_indexes_so_a_new_selection_reads_only_its_spans(published: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    store = tmp_path / "store"
    first = run_cli("compose", *SEL, "--image", f"min,{published['min']}", "--image", f"full,{published['full']}",
                    "--output-name", f"oci:{tmp_path}/a:x", "--work-dir", str(tmp_path / "wa"), "--store-dir",
                    str(store), "-v", env=SMALL)
    assert first.returncode == 0, first.stderr
    second = run_cli("compose", "--backend", "pytorch", "--image", f"min,{published['min']}", "--image",
                     f"full,{published['full']}", "--output-name", f"oci:{tmp_path}/b:x", "--work-dir",
                     str(tmp_path / "wb"), "--store-dir", str(store), "-v", env=SMALL)
    assert second.returncode == 0, second.stderr
    assert "bodies read through its layer index" in second.stderr
    assert not [line for line in second.stderr.splitlines() if line.startswith("read full layer")]
    # and the same image as a machine without any index composes
    third = run_cli("compose", "--backend", "pytorch", "--image", f"min,{published['min']}", "--image",
                    f"full,{published['full']}", "--output-name", f"oci:{tmp_path}/c:x", "--work-dir",
                    str(tmp_path / "wc"), "--no-store", "--json")
    assert third.returncode == 0, third.stderr
    assert json.loads(third.stdout)["manifest_digest"] == second.stdout.strip().split("@")[-1]


def _min_layers(published: dict) -> set[str]:  # type: ignore[type-arg]
    ref = parse_registry_ref(str(published["min"]))
    client = registry_client(ref)
    raw, _, _ = client.get_manifest(ref.repository, ref.tag or "")
    doc = json.loads(raw)
    if "manifests" in doc:
        amd = next(m["digest"] for m in doc["manifests"] if m["platform"]["architecture"] == "amd64")
        raw, _, _ = client.get_manifest(ref.repository, amd)
        doc = json.loads(raw)
    return {str(d["digest"]) for d in doc["layers"]}


def _publish_tampered(registry, full: str, change) -> str:  # type: ignore[no-untyped-def]
    """Another repository holding the same image, with indexes altered by ``change``."""
    ref = parse_registry_ref(full)
    client = registry_client(ref)
    target = f"{registry.host}/tampered/full-{abs(hash(change)) % 10000}:24.05"
    _ok(run_cli("copy", full, target, "--json", "--no-store", "--no-index", "--platform", "linux/amd64"))
    tref = parse_registry_ref(target)
    raw, mt, _ = client.get_manifest(tref.repository, tref.tag or "")
    manifest = json.loads(raw)
    (art,) = find(client, ref.repository, _subject_of(client, ref), ARTIFACT_TYPE)
    art_raw, _, _ = client.get_manifest(ref.repository, art.digest)
    blobs = []
    for d in json.loads(art_raw)["layers"]:
        with client.open_blob(ref.repository, Descriptor(d["mediaType"], d["digest"], d["size"])) as r:
            data = r.read(d["size"] + 1)
        if d["mediaType"] == MEDIA_TYPE:
            data = change(data)
        blobs.append((d["mediaType"], data, d.get("annotations") or {}))
    from ociassemble.oci.digest import sha256_digest

    subject = Descriptor(mt, sha256_digest(raw), len(raw))
    assert manifest["layers"]
    publish(client, tref.repository, subject, ARTIFACT_TYPE, blobs, {})
    assert client.get_manifest(tref.repository, fallback_tag(subject.digest))
    return target


def _subject_of(client, ref) -> str:  # type: ignore[no-untyped-def]
    from ociassemble.oci.digest import sha256_digest

    raw, _, _ = client.get_manifest(ref.repository, ref.tag or "")
    doc = json.loads(raw)
    if "manifests" in doc:  # the amd64 image of the index
        return str(next(m["digest"] for m in doc["manifests"] if m["platform"]["architecture"] == "amd64"))
    return sha256_digest(raw)


def test_tampered_indexes_are_refused_in_one_line(registry, published: dict, tmp_path: Path) -> None:  # type: ignore[no-untyped-def,type-arg]
    def wrong_body(data: bytes) -> bytes:
        index = LayerIndex.from_json(data, None, "x")
        for e in index.entries:
            if e.content and "onnxruntime" in e.path:
                e.content = "sha256:" + "0" * 64
        return index.to_json()

    def wrong_layer(data: bytes) -> bytes:
        doc = json.loads(data)
        doc["diffID"] = "sha256:" + "1" * 64
        return json.dumps(doc).encode()

    for change, pattern in ((wrong_body, r"does not match the sha256 its layer index records"),
                            (wrong_layer, r"describes layer .* not this one; it is refused")):
        target = _publish_tampered(registry, str(published["full"]), change)
        res = run_cli("compose", *SEL, "--image", f"min,{published['min']}", "--image", f"full,{target}",
                      "--output-name", f"oci:{tmp_path}/t:x", "--work-dir", str(tmp_path / "wt"), "--store-dir",
                      str(tmp_path / f"store-{change.__name__}"), env=SMALL)
        assert_one_line_error(res, pattern, untouched=[tmp_path / "t"])
    assert POINTS_MEDIA_TYPE  # both blob kinds were carried over by the tampering above


def test_copy_carries_the_indexes_to_the_mirror(registry, published: dict, tmp_path: Path) -> None:  # type: ignore[no-untyped-def,type-arg]
    mirror = f"{registry.host}/mirror/full:24.05"
    res = _ok(run_cli("copy", str(published["full"]), mirror, "--json", "--no-store"))
    assert sum("carried along" in line for line in res["plan"]) == 1  # the amd64 image: the one indexed
    used = run_cli("compose", *SEL, "--image", f"min,{published['min']}", "--image", f"full,{mirror}",
                   "--output-name", f"oci:{tmp_path}/m:x", "--work-dir", str(tmp_path / "wm"), "--store-dir",
                   str(tmp_path / "store"), "-v", env=SMALL)
    assert used.returncode == 0, used.stderr
    assert "full: layer indexes found for" in used.stderr and "in mirror/full" in used.stderr


def test_stored_indexes_are_used_only_where_trusted(published: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """--no-index uses no stored index; an index found for one repository is not applied to the
    same layer read from another; a stored index with a malformed field is refused in one line."""
    store = tmp_path / "store"
    first = run_cli("compose", *SEL, "--image", f"min,{published['min']}", "--image", f"full,{published['full']}",
                    "--output-name", f"oci:{tmp_path}/a:x", "--work-dir", str(tmp_path / "wa"), "--store-dir",
                    str(store), "-v", env=SMALL)
    assert first.returncode == 0 and "read through its layer index" in first.stderr, first.stderr
    off = run_cli("compose", "--backend", "pytorch", "--image", f"min,{published['min']}", "--image",
                  f"full,{published['full']}", "--output-name", f"oci:{tmp_path}/b:x", "--work-dir",
                  str(tmp_path / "wb"), "--store-dir", str(store), "-v", "--no-index", env=SMALL)
    assert off.returncode == 0, off.stderr
    assert "layer index" not in off.stderr
    # the same layers through another repository (pushed by min's name: nvidia/full) get no index
    other = str(published["full"]).replace("/indexed/full", "/nvidia/full")
    elsewhere = run_cli("compose", "--backend", "pytorch", "--image", f"min,{published['min']}", "--image",
                        f"full,{other}", "--output-name", f"oci:{tmp_path}/c:x", "--work-dir", str(tmp_path / "wc"),
                        "--store-dir", str(store), "-v", env=SMALL)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert "read through its layer index" not in elsewhere.stderr
    # a stored index whose entry has a mode that is not a number: one line, nothing written
    victim = next(p for p in (store / "lindex").glob("*.json") if b"backends/pytorch" in p.read_bytes())
    doc = json.loads(victim.read_bytes())
    doc["entries"][0]["mode"] = "rwx"
    victim.write_text(json.dumps(doc))
    bad = run_cli("compose", "--backend", "pytorch", "--image", f"min,{published['min']}", "--image",
                  f"full,{published['full']}", "--output-name", f"oci:{tmp_path}/d:x", "--work-dir",
                  str(tmp_path / "wd"), "--store-dir", str(store), env=SMALL)
    assert_one_line_error(bad, r"is not a usable layer index \(an entry's mode, owner, size or device numbers are "
                          r"not whole numbers\); it is refused", untouched=[tmp_path / "d"])


def _random_tar(seed: int, count: int, prefix: str, unit: int, repeats: tuple[int, int]) -> tuple[
        bytes, dict[str, bytes]]:
    """A pax tar of ``count`` files named ``prefix``NN, each a random ``unit`` bytes repeated a
    random number of times (compressible, so access points and frames fall inside bodies)."""
    import io
    import random
    import tarfile

    rng = random.Random(seed)
    tar = io.BytesIO()
    bodies = {}
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.PAX_FORMAT) as t:
        for n in range(count):
            data = bytes(rng.getrandbits(8) for _ in range(unit)) * rng.randint(*repeats)
            info = tarfile.TarInfo(f"{prefix}{n:02d}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
            bodies[info.name] = data
    return tar.getvalue(), bodies


def test_a_big_selection_is_read_by_several_readers_with_the_same_bodies(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Readers each over their own run of the layer: every body once, checked, the same bytes
    as one reader gives; runs balanced; a selection too small to share stays one run."""
    import gzip
    import hashlib

    from ociassemble.layers import layerindex
    from ociassemble.layers.spool import Spool

    monkeypatch.setattr(layerindex, "SPACING", layerindex.LEAST_SPACING)
    plain, bodies = _random_tar(16, 24, "opt/f", 2048, (20, 60))
    blob = tmp_path / "layer.gz"
    blob.write_bytes(gzip.compress(plain, 6))
    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    diff_id = "sha256:" + hashlib.sha256(plain).hexdigest()
    index = layerindex.build(blob, digest, blob.stat().st_size, diff_id, "test layer")
    assert index.points is not None
    need = [k for k, e in enumerate(index.entries) if e.kind == "file" and e.path != "opt/f03"]

    runs = layerindex.spans(index, need, 2)
    assert len(runs) == 2 and sorted(runs[0] + runs[1]) == sorted(need)
    assert max(index.offsets[k] for k in runs[0]) < min(index.offsets[k] for k in runs[1])
    sizes = [sum(index.entries[k].size for k in r) for r in runs]
    assert min(sizes) > 0.3 * sum(sizes), sizes
    assert layerindex.spans(index, need[:2], 2) == [sorted(need[:2], key=lambda k: index.offsets[k])]

    spool = Spool(tmp_path / "spool")
    got = {}
    for run in runs:
        with open(blob, "rb") as raw:
            for k, name in layerindex.read_bodies(index, raw, run, spool, "test layer"):
                with spool.open(name) as body:
                    got[index.entries[k].path] = body.read()
    assert got == {p: d for p, d in bodies.items() if p != "opt/f03"}


def _zstd_layer(tmp: Path, frames: int) -> tuple[Path, bytes, dict[str, bytes]]:
    """A tar of 16 files of ~60 KiB, as ``frames`` zstd frames cut anywhere (as zstd:chunked
    and seekable-format writers cut them, not at entry boundaries)."""

    import zstandard

    plain, bodies = _random_tar(7, 16, "opt/z", 1024, (40, 80))
    cuts = [len(plain) * i // frames for i in range(frames + 1)]
    c = zstandard.ZstdCompressor(level=3)
    blob = tmp / f"layer-{frames}.zst"
    blob.write_bytes(b"".join(c.compress(plain[a:b]) for a, b in itertools.pairwise(cuts)))
    return blob, plain, bodies


class _Counting:
    def __init__(self, f) -> None:  # type: ignore[no-untyped-def]
        self.f, self.read_bytes = f, 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.f.read(n)
        self.read_bytes += len(data)
        return data

    def seek(self, *a: int) -> int:
        return self.f.seek(*a)  # type: ignore[no-any-return]

    def tell(self) -> int:
        return self.f.tell()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.f.close()


def test_a_zstd_layer_of_many_frames_is_read_from_the_frame_before_each_entry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from ociassemble.errors import OciAssembleError
    from ociassemble.layers import layerindex
    from ociassemble.layers.spool import Spool

    monkeypatch.setattr(layerindex, "SPACING", layerindex.LEAST_SPACING)
    blob, plain, bodies = _zstd_layer(tmp_path, 12)
    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    diff_id = "sha256:" + hashlib.sha256(plain).hexdigest()
    index = layerindex.build(blob, digest, blob.stat().st_size, diff_id, "zstd layer")
    assert index.codec == "zstd" and index.seekable and index.frames is not None and len(index.frames) > 4
    again = layerindex.LayerIndex.from_json(index.to_json(), None, "zstd layer")
    assert again.frames == index.frames

    last = max(range(len(index.entries)), key=lambda k: index.offsets[k])
    spool = Spool(tmp_path / "spool")
    with open(blob, "rb") as f:
        counted = _Counting(f)
        [(_k, name)] = list(layerindex.read_bodies(again, counted, [last], spool, "zstd layer"))  # type: ignore[arg-type]
    with spool.open(name) as body:
        assert body.read() == bodies[index.entries[last].path]
    # the last entry: read from the frame before it, not from the layer's first byte
    assert counted.read_bytes < blob.stat().st_size / 3, (counted.read_bytes, blob.stat().st_size)

    # one frame: no place to start but the first byte; the body is still right
    one, plain1, _ = _zstd_layer(tmp_path, 1)
    single = layerindex.build(one, "sha256:" + hashlib.sha256(one.read_bytes()).hexdigest(), one.stat().st_size,
                              "sha256:" + hashlib.sha256(plain1).hexdigest(), "zstd layer")
    assert single.frames == [(0, 0)] and not single.seekable
    with open(one, "rb") as f:
        [(_k, name)] = list(layerindex.read_bodies(single, f, [last], spool, "zstd layer"))
    with spool.open(name) as body:
        assert body.read() == bodies[index.entries[last].path]

    # a frame offset moved into the middle of a frame: refused, not a traceback or wrong bytes
    doc = json.loads(index.to_json())
    doc["zstdFrames"][-1][0] += 7
    moved = layerindex.LayerIndex.from_json(json.dumps(doc).encode(), None, "zstd layer")
    with open(blob, "rb") as f, pytest.raises(OciAssembleError, match="index"):
        list(layerindex.read_bodies(moved, f, [last], spool, "zstd layer"))


def test_compose_through_the_indexes_of_zstd_layers_gives_the_same_image(tmp_path: Path) -> None:
    """zstd layers of many frames (and one of one frame) in full: indexed, composed through
    their indexes, the same manifest digest as composed without, the files as full has them."""
    import random

    from fixtures.stacks import ROOT, F, LayerDef
    from tests import fidelity

    rng = random.Random(9)

    def big(n: int) -> bytes:
        return bytes(rng.getrandbits(8) for _ in range(512)) * n

    stack = [LayerDef([F(f"{ROOT}/backends/d", "dir"), *(F(f"{ROOT}/backends/d/f{n}", data=big(150)) for n in range(6)),
                       F(f"{ROOT}/lib/libextra.so", data=big(200))], "zstd, frames cut anywhere", codec="zstd-multi"),
             LayerDef([F(f"{ROOT}/backends/b/late", data=big(100)), F(f"{ROOT}/backends/c/other", data=big(90))],
                      "zstd, one frame", codec="zstd")]
    outcome = fidelity.run(tmp_path, stack, ["b", "d"])
    fidelity.check(outcome)
    again = fidelity.rerun_with_indexes(tmp_path, outcome)
    fidelity.check_indexed(outcome, again)
    through = [m for m in again.log if "bodies read through its layer index" in m]
    assert any(m.startswith("full layer 2 ") and "by 2 readers" in m for m in through), again.log  # frames
    assert any(m.startswith("full layer 3 ") for m in through), again.log  # one frame: from its start


def test_indexing_a_zstd_layer_holds_no_frame_whole_in_memory(tmp_path: Path) -> None:
    """A 16 KiB frame of zeros that inflates to 256 MiB: indexing it stays in bounded memory
    (each frame is inflated through a bounded reader, not by one call that returns it all)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent('''
        import hashlib, io, resource, sys, tarfile
        import zstandard
        from pathlib import Path
        from ociassemble.layers import layerindex
        N = 256 << 20
        blob = Path(sys.argv[1])
        plain = hashlib.sha256()
        class Out(io.RawIOBase):
            def __init__(self, w): self.w = w
            def writable(self): return True
            def write(self, b): plain.update(b); self.w.write(b); return len(b)
        with open(blob, "wb") as f:
            with zstandard.ZstdCompressor(level=3).stream_writer(f, closefd=False) as z:
                with tarfile.open(fileobj=Out(z), mode="w|", format=tarfile.PAX_FORMAT) as t:
                    info = tarfile.TarInfo("opt/zeros")
                    info.size = N
                    class Zeros(io.RawIOBase):
                        left = N
                        def readable(self): return True
                        def readinto(self, b):
                            k = min(len(b), self.left); b[:k] = bytes(k); self.left -= k; return k
                    t.addfile(info, io.BufferedReader(Zeros()))
        digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        index = layerindex.build(blob, digest, blob.stat().st_size, "sha256:" + plain.hexdigest(), "zeros")
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(index.entries[0].size, blob.stat().st_size, grew // 1024)
    ''')
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "zeros.zst")], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    size, compressed, grew_mb = map(int, res.stdout.split())
    assert size == 256 << 20 and compressed < 1 << 20
    assert grew_mb < 64, f"indexing grew the process by {grew_mb} MB"


def test_a_zstd_frame_longer_than_the_spacing_is_inflated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bodies far apart inside one long frame: read on through it, not from its start again
    for each (which made reading every other entry cost many times the blob)."""
    import hashlib

    from ociassemble.layers import layerindex
    from ociassemble.layers.spool import Spool

    monkeypatch.setattr(layerindex, "SPACING", layerindex.LEAST_SPACING)
    blob, plain, bodies = _zstd_layer(tmp_path, 2)
    index = layerindex.build(blob, "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest(), blob.stat().st_size,
                             "sha256:" + hashlib.sha256(plain).hexdigest(), "zstd layer")
    assert index.frames is not None and len(index.frames) == 2
    files = sorted((k for k, e in enumerate(index.entries) if e.kind == "file"), key=lambda k: index.offsets[k])
    every_other = files[::2]
    assert all(index.offsets[b] - index.offsets[a] > layerindex.SPACING for a, b in itertools.pairwise(every_other))
    spool = Spool(tmp_path / "spool")
    with open(blob, "rb") as f:
        counted = _Counting(f)
        got = {index.entries[k].path: n for k, n in layerindex.read_bodies(index, counted, every_other, spool, "z")}  # type: ignore[arg-type]
    assert len(got) == len(every_other)
    for path, name in got.items():
        with spool.open(name) as body:
            assert body.read() == bodies[path]
    # read-ahead may take a frame twice (once on, once from its start); eight restarts took 5x
    assert counted.read_bytes <= 2 * blob.stat().st_size, (counted.read_bytes, blob.stat().st_size)
    runs = layerindex.spans(index, files, 2)  # the second reader starts at the second frame, near its body
    first = runs[1][0]
    assert len(runs) == 2 and index.start_before(index.offsets[first]) == index.frames[1][1]
    assert index.offsets[first] - index.frames[1][1] <= layerindex.SPACING


def test_the_base_images_indexes_serve_the_library_check(registry, published: dict, tmp_path: Path) -> None:  # type: ignore[no-untyped-def,type-arg]
    """min indexed and published too: a fresh machine's library check takes min's file lists
    from its indexes instead of reading min's layers, and gives the same report."""
    minimum = f"{registry.host}/indexed/min:24.05"
    _ok(run_cli("copy", str(published["min"]), minimum, "--json", "--store-dir", str(tmp_path / "copy-store")))
    _ok(run_cli("index", minimum, "--push", "--json", "--store-dir", str(tmp_path / "indexer"), env=SMALL))
    runs = {}
    for name, extra in (("indexed", ()), ("whole", ("--no-index",))):
        res = run_cli("compose", *SEL, "--image", f"min,{minimum}", "--image", f"full,{published['full']}",
                      "--output-name", f"oci:{tmp_path / name}:x", "--work-dir", str(tmp_path / f"w-{name}"),
                      "--store-dir", str(tmp_path / f"s-{name}"), "--json", "-v", *extra, env=SMALL)
        runs[name] = (_ok(res), res.stderr)
    (indexed, log), (whole, _) = runs["indexed"], runs["whole"]
    assert "min: layer indexes found" in log, log
    assert any(m.startswith("libcheck: min layer 0") and "file list from its layer index" in m
               for m in log.splitlines()), log
    assert not [m for m in log.splitlines() if m.startswith("read min layer")], log
    assert indexed["manifest_digest"] == whole["manifest_digest"]
    assert indexed["libs"]["missing"] == whole["libs"]["missing"] and indexed["libs"]["files_checked"] == \
        whole["libs"]["files_checked"]
