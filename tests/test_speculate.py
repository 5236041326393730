"""diff_ids hashed while the source streams: taken over only where they match, always right."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from pathlib import Path

from fixtures.ngc import Store, image
from fixtures.stacks import ENV, LABELS, ROOT, F, LayerDef, base_layer, install_layer
from ociassemble.layers.compression import GZIP_LEVEL, CompressionSpec
from ociassemble.layers.speculate import Recording
from ociassemble.layers.spool import Spool
from ociassemble.layers.write import OutEntry, tar_header, write_layer
from ociassemble.oci.changeset import DIR, FILE, Entry
from ociassemble.presets.compose import ComposeOptions, compose
from ociassemble.transport.segments import SegmentReader

A, B, C = (f"{ROOT}/backends/{x}" for x in "abc")


def _data(n: int, seed: int) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1))[:n]


def _items(spool: Spool) -> list[OutEntry]:
    out = [OutEntry(Entry("opt/t", DIR, mode=0o755, mtime=5), key=(0, 0))]
    for n, size in enumerate((200_000, 10, 300_000)):
        e = Entry(f"opt/t/f{n}", FILE, size=size, mtime=5)
        e.content = spool.put(io.BytesIO(_data(size, n)), size)
        out.append(OutEntry(e, key=(1, n)))
    return out


def _record(items: list[OutEntry], upto: int, lie_at: int | None = None) -> Recording:
    """What a source layer streaming these entries would have hashed (the header of
    ``lie_at`` differing, as when a later layer replaced that file)."""
    rec = Recording()
    for i, o in enumerate(items[:upto]):
        e = o.entry
        header = tar_header(Entry(e.path, e.kind, mode=0o600, size=e.size) if i == lie_at else e)
        rec.open(header)
        if e.kind == FILE:
            rec.piece(_data(e.size, i - 1))
        rec.close(header, e.content if e.kind == FILE else None, e.size if e.kind == FILE else 0)
    return rec


def _diff_id(written: object) -> str:
    with SegmentReader(written.segments) as r:  # type: ignore[attr-defined]
        return "sha256:" + hashlib.sha256(gzip.decompress(r.read())).hexdigest()


def test_writer_takes_over_the_longest_matching_run_and_hashes_the_rest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", deflate_level=GZIP_LEVEL, hash_bodies=False)
    items = _items(spool)
    gz = CompressionSpec.parse("gzip")
    plain = write_layer(items, tmp_path / "l0.tar", spool, gz)
    assert plain.speculated == 0 and plain.diff_id == _diff_id(plain)

    whole = write_layer(items, tmp_path / "l1.tar", spool, gz, [_record(items, len(items))])
    assert whole.diff_id == plain.diff_id and whole.digest == plain.digest
    assert whole.speculated == sum(len(tar_header(o.entry)) + o.entry.size + -o.entry.size % 512 for o in items)

    # a guess wrong from the third entry on: the first two are taken over, the rest hashed here
    part = write_layer(items, tmp_path / "l2.tar", spool, gz, [_record(items, len(items), lie_at=2),
                                                              _record(items, 1)])
    assert part.diff_id == plain.diff_id
    assert part.speculated == len(tar_header(items[0].entry)) + len(tar_header(items[1].entry)) + 200_000 + 192

    # a recording of other bodies under the same names is never taken over
    other = Recording()
    other.add(tar_header(items[0].entry))
    other.add(tar_header(items[1].entry), "spool:999")
    # (the one matching entry is small: no hash state is kept after it, so it is hashed here too)
    l3 = write_layer(items, tmp_path / "l3.tar", spool, gz, [other])
    assert l3.speculated == 0 and l3.diff_id == plain.diff_id


def test_recordings_keep_a_state_after_big_bodies_and_every_64_entries(tmp_path: Path) -> None:
    """A state per entry cost ~0.3 KB per file: 200 small entries keep 4 (0, 64, 128, 192),
    a big body always gets one after it, and a match is taken over at the last state
    before it, the writer hashing the rest of the run itself."""
    from ociassemble.layers.speculate import STATE_EVERY

    rec = Recording()
    for n in range(200):
        rec.add(b"h%d" % n)
    assert [st[0] for st in rec.states] == [0, 64, 128, 192] and STATE_EVERY == 64
    assert rec.floor(150) == 128 and rec.floor(64) == 64 and rec.floor(63) == 0
    rec.open(b"big")
    rec.piece(b"x" * (70 << 10))
    rec.close(b"big", "spool:1", 70 << 10)
    assert rec.states[-1][0] == 201 and rec.floor(201) == 201


def _layer_sizes(layout: Path, digest: str) -> dict[str, tuple[str, int]]:
    """diff_id and uncompressed size of each layer of the composed image, from its blobs."""
    def blob(d: str) -> bytes:
        return (layout / "blobs" / "sha256" / d.split(":")[1]).read_bytes()

    manifest = json.loads(blob(digest))
    out = {}
    for desc in manifest["layers"]:
        tar = gzip.decompress(blob(desc["digest"]))
        out[desc["digest"]] = ("sha256:" + hashlib.sha256(tar).hexdigest(), len(tar))
    return out


def test_later_layers_replacing_deleting_and_retyping_are_foretold(tmp_path: Path) -> None:
    """The install layer streams after a later layer that replaces a big file, deletes one,
    makes a directory opaque and turns a file into a symlink (read first: with one job the
    bigger layer goes first): every diff_id is right, the replacement, the deletion and the
    opaque directory were foretold, and the type change was left to the writer."""
    big = 300_000
    inst = install_layer()
    inst.files += [F(f"{A}/big.so", data=_data(big, 1)), F(f"{A}/gone.txt", data=b"gone"),
                   F(f"{A}/z.so", data=_data(big, 2)),
                   F(f"{B}/sub", "dir"), F(f"{B}/sub/old.so", data=_data(big, 3)), F(f"{B}/zz.so", data=_data(big, 4)),
                   F(f"{C}/turns", data=_data(big, 5)), F(f"{C}/zz.so", data=_data(big, 6))]
    patch = LayerDef([F(f"{A}/big.so", data=_data(big, 7), mode=0o700), F(f"{A}/gone.txt", "whiteout"),
                      F(f"{B}/sub", "opaque"), F(f"{B}/sub/new.txt", data=b"new"),
                      F(f"{C}/turns", "symlink", target="zz.so"),
                      F("usr/share/unselected.bin", data=_data(4 * big * 4, 8))], "patch")
    layout = tmp_path / "in"
    store = Store(layout)
    base = base_layer()
    store.refs["min"] = image(store, [base], ENV[:1], {}, "amd64", False)
    store.refs["full"] = image(store, [base, inst, patch], ENV, LABELS, "amd64", False)
    store.write_index()
    lines: list[str] = []
    out = tmp_path / "out"
    res = compose(ComposeOptions(backends=["a", "b", "c"], images=[f"min,oci:{layout}:min", f"full,oci:{layout}:full"],
                                 output_name=f"oci:{out}:img", work_dir=str(tmp_path / "work"), enable_gpu=False,
                                 verify=True, jobs=1, log=lines.append))
    truth = _layer_sizes(out, res.manifest_digest)
    hashed = {m.group(1): int(m.group(2)) for line in lines
              if (m := re.match(r"wrote layer '(.*?)':.*\(diff_id: (\d+) bytes hashed while reading\)", line))}
    for layer in res.layers:
        diff_id, size = truth[str(layer["digest"])]
        assert layer["diff_id"] == diff_id
        assert hashed[str(layer["name"])] <= size
    assert hashed["backend a"] >= 2 * big  # big.so (the patched one) and z.so
    assert hashed["backend b"] >= big  # zz.so, sub/old.so skipped
    assert hashed["backend c"] < big  # stopped at the file that became a symlink
