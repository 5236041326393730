"""ociassemble ls: what an image holds, without reading a file body (issue 16, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli
from tests.oneline import assert_one_line_error


def test_ls_lists_backends_with_sizes_from_headers_then_from_the_store(oci_layout: Path, tmp_path: Path) -> None:
    store = ["--store-dir", str(tmp_path / "store")]
    first = run_cli("ls", f"oci:{oci_layout}:full", "/opt/tritonserver/backends", "--json", *store)
    assert first.returncode == 0, first.stderr
    listing = json.loads(first.stdout)
    names = {e["name"]: e for e in listing["entries"]}
    assert {"onnxruntime", "python", "pytorch"} <= set(names) and all(e["kind"] == "dir" for e in names.values())
    assert listing["layers_read"] > 0
    # the directory's size is its files' (a hardlinked body counted once): the fixture's onnxruntime
    # holds libonnxruntime.so.1.17.3 and its hardlink twin, and small files
    assert 0 < names["onnxruntime"]["size"] < 10 << 20
    again = json.loads(run_cli("ls", f"oci:{oci_layout}:full", "/opt/tritonserver/backends", "--json",
                               *store).stdout)
    assert again["layers_read"] == 0 and again["entries"] == listing["entries"]  # the store's indexes alone
    text = run_cli("ls", f"oci:{oci_layout}:full", "/opt/tritonserver/lib", *store)
    assert text.returncode == 0 and "libtritonserver.so -> libtritonserver.so.2" in text.stdout
    one = json.loads(run_cli("ls", f"oci:{oci_layout}:full", "/opt/tritonserver/bin/tritonserver", "--json",
                             *store).stdout)
    assert [e["name"] for e in one["entries"]] == ["tritonserver"] and one["entries"][0]["kind"] == "file"
    assert_one_line_error(run_cli("ls", f"oci:{oci_layout}:full", "/opt/nowhere", *store),
                          r"oci:.*:full has no /opt/nowhere")


def test_index_of_a_local_layout_is_read_in_place_and_used(oci_layout: Path, tmp_path: Path) -> None:
    store = ["--store-dir", str(tmp_path / "store")]
    made = run_cli("index", f"oci:{oci_layout}:full", "--json", *store)
    assert made.returncode == 0, made.stderr
    layers = json.loads(made.stdout)["layers"]
    assert layers and all(layer["entries"] > 0 for layer in layers)
    assert not (tmp_path / "store/blobs/sha256").exists() or not list((tmp_path / "store/blobs/sha256").iterdir())
    res = run_cli("compose", "--backend", "python", "--image", f"min,oci:{oci_layout}:min", "--image",
                  f"full,oci:{oci_layout}:full", "--output-name", f"oci:{tmp_path}/o:x", "--work-dir",
                  str(tmp_path / "w"), "-v", "--json", *store)
    assert res.returncode == 0, res.stderr
    assert "read through its layer index" in res.stderr
    plain = run_cli("compose", "--backend", "python", "--image", f"min,oci:{oci_layout}:min", "--image",
                    f"full,oci:{oci_layout}:full", "--output-name", f"oci:{tmp_path}/p:x", "--work-dir",
                    str(tmp_path / "w2"), "--no-store", "--json")
    assert json.loads(plain.stdout)["manifest_digest"] == json.loads(res.stdout)["manifest_digest"]


def test_index_of_archives_reads_members_in_place(oci_layout: Path, tmp_path: Path) -> None:
    for kind in ("oci-archive", "docker-archive"):
        archive = f"{kind}:{tmp_path}/{kind}.tar"
        made = run_cli("copy", "--platform", "linux/amd64", f"oci:{oci_layout}:full", archive, "--no-store")
        assert made.returncode == 0, made.stderr
        res = run_cli("index", archive, "--json", "--store-dir", str(tmp_path / f"store-{kind}"))
        assert res.returncode == 0, res.stderr
        assert sum(layer["entries"] for layer in json.loads(res.stdout)["layers"]) > 100
