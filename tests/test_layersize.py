"""--max-layer-size: registries that refuse big layers (Triton #7314), issue 15 item 4."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import run_cli
from tests.consumers import fingerprint, unpack
from tests.oneline import assert_one_line_error

SEL = ["--backend", "onnxruntime", "--backend", "python", "--backend", "pytorch"]


def _compose(fx: Path, tmp: Path, out: str, *extra: str) -> dict:  # type: ignore[type-arg]
    res = run_cli("compose", *SEL, "--image", f"min,oci:{fx}:min", "--image", f"full,oci:{fx}:full", "--output-name",
                  f"oci:{tmp}/{out}:x", "--work-dir", str(tmp / f"w-{out}"), "--json", "--no-store", *extra)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def test_no_new_layer_over_the_cap_and_the_same_filesystem(oci_layout: Path, tmp_path: Path) -> None:
    cap = 400 << 10
    whole = _compose(oci_layout, tmp_path, "whole")
    capped = _compose(oci_layout, tmp_path, "capped", "--max-layer-size", "400K", "--verify")
    parts = [layer["name"] for layer in capped["layers"] if "(part " in str(layer["name"])]
    assert parts == ["backend pytorch (part 1 of 3)", "backend pytorch (part 2 of 3)", "backend pytorch (part 3 of 3)"]
    assert all(int(layer["size"]) <= cap for layer in capped["layers"])
    assert capped["stats"]["verified_layers"] > 0
    assert len(capped["layers"]) == len(whole["layers"]) + 2
    # umoci's merged filesystem is the very one of the image without the cap
    a = unpack(f"oci:{tmp_path}/whole:x", tmp_path / "u-whole")
    b = unpack(f"oci:{tmp_path}/capped:x", tmp_path / "u-capped")
    assert fingerprint(a) == fingerprint(b)
    # each part has its history entry
    cfg = json.loads((tmp_path / "capped/blobs/sha256" / capped["config_digest"][7:]).read_bytes())
    comments = [h.get("comment") for h in cfg["history"] if "backends/pytorch" in h.get("created_by", "")]
    assert comments == ["ociassemble (part 1 of 3)", "ociassemble (part 2 of 3)", "ociassemble (part 3 of 3)"]
    # the same cap, the same image (and the dry run then build route gives it too)
    again = _compose(oci_layout, tmp_path, "again", "--max-layer-size", "400K")
    assert again["manifest_digest"] == capped["manifest_digest"]


def test_a_file_over_the_cap_and_reused_layers_over_it_are_named(oci_layout: Path, tmp_path: Path) -> None:
    res = run_cli("compose", *SEL, "--image", f"min,oci:{oci_layout}:min", "--image", f"full,oci:{oci_layout}:full",
                  "--output-name", f"oci:{tmp_path}/o:x", "--work-dir", str(tmp_path / "w"), "--max-layer-size", "200K")
    assert_one_line_error(res, r"/opt/tritonserver/lib/libtritonserver\.so\.2\.46\.0 in layer "
                          r"'/opt/tritonserver/lib' is 300000 bytes: one file bigger than --max-layer-size 204800 "
                          r"cannot be split",
                          untouched=[tmp_path / "o"])
    assert_one_line_error(run_cli("compose", *SEL, "--max-layer-size", "1K", "--image", f"min,oci:{oci_layout}:min",
                                  "--image", f"full,oci:{oci_layout}:full"), r"--max-layer-size 1K is too small")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "small.txt").write_text("x\n")
    (ctx / "Dockerfile").write_text(f"FROM oci:{oci_layout}:min\nCOPY small.txt /srv/\n")
    out = run_cli("build", "-t", f"oci:{tmp_path}/b:x", "--max-layer-size", "98K", "--no-store", str(ctx))
    assert out.returncode == 0, out.stderr
    warned = [line for line in out.stderr.splitlines() if line.startswith("warning: layer sha256:")]
    assert len(warned) == 2 and all("carried as it is" in w and "over --max-layer-size 100352" in w for w in warned)
    subprocess.run(["skopeo", "inspect", f"oci:{tmp_path}/b:x"], check=True, capture_output=True, timeout=60)


def test_split_reused_rewrites_carried_layers_as_the_same_changeset(tmp_path: Path) -> None:
    """min's own layer (random bodies: it does not compress) over the cap, holding a
    whiteout, a hardlink pair and an opaque directory: --split-reused writes it as several
    layers, each within the cap, whose union umoci unpacks to the very same filesystem."""
    import os as _os

    from fixtures.ngc import F, LayerDef, Store, image
    from fixtures.stacks import ENV, LABELS, base_layer, install_layer

    big = LayerDef([F("srv", "dir"), F("srv/data", "dir"), F("etc/old", data=b"x"),
                    *[F(f"srv/data/blob-{k:02}", data=_os.urandom(30_000)) for k in range(12)],
                    F("srv/data/same", data=b"linked body"),
                    F("srv/data/same-link", "hardlink", target="srv/data/same"),
                    F("etc/gone", "whiteout"), F("usr/bin", "opaque"), F("usr/bin/tool", data=b"#!sh\n", mode=0o755)],
                   "COPY data /srv/data")
    store = Store(tmp_path / "in")
    store.refs["min"] = image(store, [base_layer(), big], ENV[:1], {}, "amd64", False)
    store.refs["full"] = image(store, [base_layer(), big, install_layer()], ENV, LABELS, "amd64", False)
    store.write_index()
    args = ["--no-enable-gpu", "--backend", "a", "--image", f"min,oci:{tmp_path}/in:min", "--image",
            f"full,oci:{tmp_path}/in:full", "--no-store", "--json"]
    plain = run_cli("compose", *args, "--output-name", f"oci:{tmp_path}/plain:x", "--work-dir", str(tmp_path / "w1"))
    split = run_cli("compose", *args, "--max-layer-size", "128K", "--split-reused", "--verify", "--output-name",
                    f"oci:{tmp_path}/split:x", "--work-dir", str(tmp_path / "w2"))
    assert plain.returncode == 0, plain.stderr
    assert split.returncode == 0, split.stderr
    result = json.loads(split.stdout)
    manifest = json.loads((tmp_path / "split/blobs/sha256" / result["manifest_digest"][7:]).read_bytes())
    sizes = [d["size"] for d in manifest["layers"]]
    assert max(sizes) <= 128 << 10 and len(sizes) >= len(json.loads(
        (tmp_path / "plain/blobs/sha256" / json.loads(plain.stdout)["manifest_digest"][7:]).read_bytes())["layers"]) + 2
    a = unpack(f"oci:{tmp_path}/plain:x", tmp_path / "u-plain")
    b = unpack(f"oci:{tmp_path}/split:x", tmp_path / "u-split")
    assert fingerprint(a) == fingerprint(b)
    assert (b / "srv/data/same").stat().st_ino == (b / "srv/data/same-link").stat().st_ino
    cfg = json.loads((tmp_path / "split/blobs/sha256" / result["config_digest"][7:]).read_bytes())
    assert len(cfg["rootfs"]["diff_ids"]) == len(sizes)
    assert len([h for h in cfg["history"] if not h.get("empty_layer")]) == len(sizes)
    assert_one_line_error(run_cli("compose", *args, "--split-reused"), r"--split-reused splits at --max-layer-size")
