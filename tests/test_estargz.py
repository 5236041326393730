"""eStargz layers read through their own table of contents (issue 16, item 3): no artifact.

The eStargz images are made by the real converter: Debian's ``ctr-remote`` (stargz-snapshotter)
against a ``containerd`` started here on a socket of its own, from the fixture's full image in
the test registry, gzip chunks as it writes them by default and with small chunks
(``--estargz-chunk-size``, files cut into many gzip members). Compose through the TOC must
give the very digest it gives reading the layers whole (``--no-index``), fetching less; a TOC
that is not the one the manifest names is refused in one line.
"""

from __future__ import annotations

import itertools
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


# -- the TOC reader against layers written here in eStargz's form ------------------------------
# (the converter above writes only the lossy form; BuildKit writes the lossless one, whose own
# end-of-archive blocks come before the TOC's tar, and hostile TOCs need a matching digest)

def _footer(off: int) -> bytes:
    return (b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x1a\x00SG\x16\x00" + f"{off:016x}STARGZ".encode()
            + b"\x01\x00\x00\xff\xff" + bytes(8))


def _esgz(files: list[tuple[str, bytes]], lossless: bool, edit=None) -> tuple[bytes, str, bytes]:  # type: ignore[no-untyped-def]
    """(blob, TOC digest, the whole inflated stream): each body starts a gzip member."""
    import gzip
    import hashlib
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        d = tarfile.TarInfo("opt/")
        d.type, d.mode, d.mtime, d.uname, d.gname = tarfile.DIRTYPE, 0o755, 1716163200, "root", "root"
        t.addfile(d)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uname, info.gname = len(data), 0o644, 1716163200, "root", "root"
            t.addfile(info, io.BytesIO(data))
    stream = buf.getvalue()
    members = tarfile.open(fileobj=io.BytesIO(stream)).getmembers()  # read back: offsets are set when read
    end = members[-1].offset_data + members[-1].size + (-members[-1].size % 512)
    if not lossless:
        stream = stream[:end]  # Go's tar writer, never closed: no end-of-archive blocks
    cuts = [0] + [m.offset_data for m in members if m.isreg() and m.size] + [len(stream)]
    blob, offsets = b"", []
    for a, b in itertools.pairwise(cuts):
        offsets.append(len(blob))
        blob += gzip.compress(stream[a:b], mtime=0)
    toc = {"version": 1, "entries": [{"name": "opt/", "type": "dir", "mode": 0o755, "modtime": "2024-05-20T00:00:00Z",
                                      "userName": "root", "groupName": "root"}]}
    k = 1
    for name, data in files:
        ent = {"name": name, "type": "reg", "size": len(data), "mode": 0o644, "modtime": "2024-05-20T00:00:00Z"}
        if data:
            ent.update(offset=offsets[k], digest="sha256:" + hashlib.sha256(data).hexdigest())
            k += 1
        toc["entries"].append(ent)
    if edit is not None:
        edit(toc)
    raw = json.dumps(toc).encode()
    tocbuf = io.BytesIO()
    with tarfile.open(fileobj=tocbuf, mode="w", format=tarfile.GNU_FORMAT) as t:
        info = tarfile.TarInfo("stargz.index.json")
        info.size = len(raw)
        t.addfile(info, io.BytesIO(raw))
    off = len(blob)
    blob += gzip.compress(tocbuf.getvalue(), mtime=0) + _footer(off)
    return blob, "sha256:" + hashlib.sha256(raw).hexdigest(), stream + tocbuf.getvalue()


def _index(blob: bytes, toc: str, plain: bytes):  # type: ignore[no-untyped-def]
    import hashlib
    import io

    from ociassemble.layers.estargz import index_from_toc

    return index_from_toc(io.BytesIO(blob), "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob),
                          "sha256:" + hashlib.sha256(plain).hexdigest(), toc, "layer 0")


def _scanned(plain: bytes) -> list[str]:
    import io

    from ociassemble.layers.tarscan import scan_layer

    class Drop:
        def put(self, src, size):  # type: ignore[no-untyped-def]
            src.read(size)
            return ""

    return [e.path for e in scan_layer(io.BytesIO(plain), lambda p: False, Drop(), "layer")]  # type: ignore[arg-type]


@pytest.mark.parametrize("lossless", [False, True])
def test_the_toc_gives_what_reading_the_layer_whole_gives(lossless: bool, tmp_path: Path) -> None:
    """Lossy (estargz.Build): the TOC's own tar follows the last entry and a whole read lists
    stargz.index.json; lossless (BuildKit): end-of-archive blocks come first and it does not.
    The bodies read through the TOC are the files'."""
    from ociassemble.layers.layerindex import read_bodies
    from ociassemble.layers.spool import Spool

    files = [("opt/a", b"alpha" * 1000), ("opt/empty", b""), ("opt/b", bytes(range(256)) * 300)]
    blob, toc, plain = _esgz(files, lossless)
    index = _index(blob, toc, plain)
    assert [e.path for e in index.entries] == _scanned(plain)
    assert ("stargz.index.json" in _scanned(plain)) is (not lossless)
    spool = Spool(tmp_path / "spool")
    want = [k for k, e in enumerate(index.entries) if e.path in ("opt/a", "opt/b")]
    import io

    got = {}
    for k, name in read_bodies(index, io.BytesIO(blob), want, spool, "layer 0"):  # type: ignore[arg-type]
        with spool.open(name) as body:
            got[index.entries[k].path] = body.read()
    assert got == {"opt/a": files[0][1], "opt/b": files[2][1]}


def _refused(blob: bytes, toc: str, plain: bytes, pattern: str) -> None:
    from ociassemble.errors import OciAssembleError

    with pytest.raises(OciAssembleError, match=pattern) as info:
        _index(blob, toc, plain)
    assert "\n" not in str(info.value)


def test_hostile_tocs_are_refused_in_one_line(tmp_path: Path) -> None:
    import io

    from ociassemble.errors import OciAssembleError
    from ociassemble.layers.layerindex import read_bodies
    from ociassemble.layers.spool import Spool

    files = [("opt/a", b"alpha" * 1000), ("opt/b", b"beta" * 500)]
    blob, toc, plain = _esgz(files, False)
    _refused(blob, "sha256:" + "0" * 64, plain, "not the one its manifest names")
    _refused(blob[-40:], toc, plain, "smaller than an eStargz footer")
    _refused(blob[:-51] + _footer(len(blob) * 2), toc, plain, "footer does not give")

    def edit(fn):  # type: ignore[no-untyped-def]
        b, t, p = _esgz(files, False, fn)
        return b, t, p

    _refused(*edit(lambda d: d["entries"][1].update(name=None)), "malformed")
    _refused(*edit(lambda d: d["entries"][1].update(offset=-5)), "malformed offset")
    _refused(*edit(lambda d: d["entries"][1].update(digest="md5:x")), "no sha256")
    _refused(*edit(lambda d: d["entries"][1].update(type="socket")), "type")
    _refused(*edit(lambda d: d["entries"][1].update(name="../../etc/passwd")), r"\.\.")
    _refused(*edit(lambda d: d.update(version=2)), "version 1")
    # an offset that is not where a member starts: the last body's is caught as the TOC is read
    # (its member is inflated to see what follows it), another one's when the body is read
    _refused(*edit(lambda d: d["entries"][2].update(offset=d["entries"][2]["offset"] + 3)), "malformed")
    b, t, p = edit(lambda d: d["entries"][1].update(offset=d["entries"][1]["offset"] + 3))
    index = _index(b, t, p)
    k = next(k for k, e in enumerate(index.entries) if e.path == "opt/a")
    with pytest.raises(OciAssembleError, match="does not start at a gzip member") as info:
        list(read_bodies(index, io.BytesIO(b), [k], Spool(tmp_path / "s"), "layer 0"))  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    # a wrong sha256 for a body: refused as any index's
    b, t, p = edit(lambda d: d["entries"][1].update(digest="sha256:" + "1" * 64))
    index = _index(b, t, p)
    k = next(k for k, e in enumerate(index.entries) if e.path == "opt/a")
    with pytest.raises(OciAssembleError, match="sha256"):
        list(read_bodies(index, io.BytesIO(b), [k], Spool(tmp_path / "s2"), "layer 0"))  # type: ignore[arg-type]
    # names that are not UTF-8 (JSON has U+FFFD for them): no index, the layer is read whole
    assert _index(*edit(lambda d: d["entries"][1].update(name="opt/\ufffd"))) is None


def test_a_toc_longer_than_a_piece_of_the_tar_reader_is_read_whole() -> None:
    """A TOC of 6,000 entries (some 700 KB): the tar reader hands its body over in pieces, and
    all of them make the TOC (the first piece alone once failed the digest check)."""
    files = [(f"opt/f{n:05d}-" + "x" * 80, b"data%d" % n) for n in range(6000)]
    blob, toc, plain = _esgz(files, False)
    index = _index(blob, toc, plain)
    assert [e.path for e in index.entries] == _scanned(plain)
