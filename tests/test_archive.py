"""oci-archive: and docker-archive: as sources and destinations, and ociassemble copy
(issue 15, items 1 and 2), judged by podman load and skopeo."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.consumers import fingerprint, skopeo_inspect, unpack
from tests.oneline import assert_one_line_error

SEL = ["--backend", "onnxruntime", "--backend", "python"]


def _images(fx: Path) -> list[str]:
    return ["--image", f"min,oci:{fx}:min", "--image", f"full,oci:{fx}:full"]


def _ok(res: subprocess.CompletedProcess[str]) -> dict:  # type: ignore[type-arg]
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def _podman(root: Path, run: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Debian's podman with vfs storage in a folder of the test (its runroot must be short)."""
    return subprocess.run(["podman", "--root", str(root), "--runroot", str(run), "--storage-driver", "vfs",
                           "--cgroup-manager", "cgroupfs", "--events-backend", "none", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
def test_docker_archive_loads_in_podman_with_the_same_config_and_files(oci_layout: Path, tmp_path: Path) -> None:
    archive = tmp_path / "triton.tar"
    result = _ok(run_cli("compose", *SEL, *_images(oci_layout), "--output-name",
                         f"docker-archive:{archive}:example.com/me/triton:custom", "--work-dir", str(tmp_path / "w"),
                         "--json", "--verify"))
    assert archive.is_file() and result["stats"]["verified_layers"] > 0
    with tarfile.open(archive) as tf:
        names = tf.getnames()
        entries = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert entries[0]["RepoTags"] == ["example.com/me/triton:custom"] and "index.json" not in names
    run_dir = Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp"))
    pm = (tmp_path / "podman", run_dir)
    loaded = _podman(*pm, "load", "-i", str(archive))
    assert loaded.returncode == 0, loaded.stderr
    assert "example.com/me/triton:custom" in loaded.stdout + loaded.stderr
    inspect = _podman(*pm, "image", "inspect", "example.com/me/triton:custom")
    assert inspect.returncode == 0, inspect.stderr
    config = json.loads(inspect.stdout)[0]["Config"]
    # the same config as the one composed to a layout
    layout = _ok(run_cli("compose", *SEL, *_images(oci_layout), "--output-name", f"oci:{tmp_path}/lay:c",
                         "--work-dir", str(tmp_path / "w2"), "--json"))
    ours = json.loads((tmp_path / "lay/blobs/sha256" / layout["config_digest"][7:]).read_bytes())["config"]
    assert sorted(config["Env"]) == sorted(ours["Env"]) and config["WorkingDir"] == ours["WorkingDir"]
    assert config["Labels"] == ours["Labels"]
    mount = _podman(*pm, "image", "mount", "example.com/me/triton:custom")
    assert mount.returncode == 0, mount.stderr
    mounted = Path(mount.stdout.strip())
    reference = unpack(f"oci:{tmp_path}/lay:c", tmp_path / "unpacked")
    for tree in ("opt/tritonserver/backends/onnxruntime", "opt/tritonserver/lib", "usr/bin"):
        assert fingerprint(mounted, tree) == fingerprint(reference, tree), tree
    _podman(*pm, "image", "unmount", "example.com/me/triton:custom")
    shutil.rmtree(run_dir, ignore_errors=True)


def test_oci_archive_then_copy_to_the_registry_gives_the_direct_digest(registry, oci_layout: Path,  # type: ignore[no-untyped-def]
                                                                        tmp_path: Path) -> None:
    archive = tmp_path / "triton-oci.tar"
    via = _ok(run_cli("compose", *SEL, *_images(oci_layout), "--output-name", f"oci-archive:{archive}:custom",
                      "--work-dir", str(tmp_path / "w1"), "--json"))
    direct = _ok(run_cli("compose", *SEL, *_images(oci_layout), "--output-name", f"{registry.host}/air/direct:1",
                         "--work-dir", str(tmp_path / "w2"), "--json"))
    copied = _ok(run_cli("copy", f"oci-archive:{archive}:custom", f"{registry.host}/air/mirrored:1", "--json",
                         "--verify"))
    assert via["manifest_digest"] == direct["manifest_digest"] == copied["manifest_digest"]
    assert copied["stats"]["verified_blobs"] == 1 + len(skopeo_inspect(f"docker://{registry.host}/air/mirrored:1",
                                                                           raw=True)["layers"])
    # skopeo reads both archives, and copies out of the OCI one
    assert skopeo_inspect(f"oci-archive:{archive}:custom", raw=True)["layers"]
    out = subprocess.run(["skopeo", "copy", "--quiet", f"oci-archive:{archive}:custom", f"oci:{tmp_path}/sk:x"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_copy_keeps_every_platform_and_its_digests(oci_layout: Path, tmp_path: Path) -> None:
    """A whole index through an oci-archive and back; one platform through a docker archive
    (which keeps no manifest: the config and layer digests survive, the manifest's may not)."""
    first = _ok(run_cli("copy", f"oci:{oci_layout}:full", f"oci-archive:{tmp_path}/full.tar:full", "--json",
                        "--verify"))
    raw = skopeo_inspect(f"oci:{oci_layout}:full", raw=True)
    assert first["manifest_digest"].startswith("sha256:") and len(raw["manifests"]) == 2
    back = _ok(run_cli("copy", f"oci-archive:{tmp_path}/full.tar:full", f"oci:{tmp_path}/back:full", "--json"))
    assert back["manifest_digest"] == first["manifest_digest"]
    index = json.loads((tmp_path / "back/index.json").read_text())
    top = json.loads((tmp_path / "back/blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    assert [m["digest"] for m in top["manifests"]] == [m["digest"] for m in raw["manifests"]]
    arm = _ok(run_cli("copy", "--platform", "linux/arm64", f"oci:{oci_layout}:full",
                      f"docker-archive:{tmp_path}/arm.tar:nvidia/full:arm", "--json", "--verify"))
    again = _ok(run_cli("copy", f"docker-archive:{tmp_path}/arm.tar", f"oci:{tmp_path}/arm:x", "--json"))
    arm_cfg = json.loads((tmp_path / "arm/blobs/sha256" / again["manifest_digest"][7:]).read_bytes())
    assert arm_cfg["config"]["digest"] == arm["config_digest"]
    assert skopeo_inspect(f"docker-archive:{tmp_path}/arm.tar")["Architecture"] == "arm64"


def test_archive_mistakes_are_one_line(oci_layout: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("copy", f"oci:{oci_layout}:full", f"docker-archive:{tmp_path}/x.tar"),
                          r"is an index of platforms and docker-archive:.* holds one image: pick one with --platform",
                          untouched=[tmp_path / "x.tar"])
    assert_one_line_error(run_cli("copy", f"oci-archive:{tmp_path}/missing.tar", f"oci:{tmp_path}/o:x"),
                          r"missing\.tar: no such file", untouched=[tmp_path / "o"])
    (tmp_path / "not.tar").write_bytes(b"\x1f\x8b\x08\x00 not really")
    assert_one_line_error(run_cli("copy", f"oci-archive:{tmp_path}/not.tar", f"oci:{tmp_path}/o:x"),
                          r"is a compressed file; give the tar archive itself", untouched=[tmp_path / "o"])
    (tmp_path / "junk.tar").write_bytes(b"junk" * 300)
    assert_one_line_error(run_cli("copy", f"docker-archive:{tmp_path}/junk.tar", f"oci:{tmp_path}/o:x"),
                          r"junk\.tar is not a tar archive|no manifest\.json", untouched=[tmp_path / "o"])
    run_cli("copy", f"oci:{oci_layout}:min", f"oci-archive:{tmp_path}/min.tar:min")
    assert_one_line_error(run_cli("copy", f"docker-archive:{tmp_path}/min.tar", f"oci:{tmp_path}/o:x"),
                          r"is not a docker archive \(no manifest\.json\); for an OCI archive use oci-archive:",
                          untouched=[tmp_path / "o"])
    assert_one_line_error(run_cli("copy", f"oci-archive:{tmp_path}/min.tar:nope", f"oci:{tmp_path}/o:x"),
                          r"has no image tagged 'nope'; it has: min", untouched=[tmp_path / "o"])
    (tmp_path / "adir").mkdir()
    assert_one_line_error(run_cli("copy", f"oci:{oci_layout}:min", f"oci-archive:{tmp_path}/adir"),
                          r"adir is a directory; an archive destination names a file")
    # a blob that does not match its digest: nothing is left at the destination
    bad = tmp_path / "bad.tar"
    with tarfile.open(tmp_path / "min.tar") as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
            if data is not None and len(data) > 1000:
                data = bytes([data[0] ^ 1]) + data[1:]
            dst.addfile(m, __import__("io").BytesIO(data) if data is not None else None)
    assert_one_line_error(run_cli("copy", f"oci-archive:{bad}:min", f"oci-archive:{tmp_path}/out.tar", "--no-store"),
                          r"digest|sha256", untouched=[tmp_path / "out.tar"])


def test_a_name_without_a_tag_is_loadable_and_odd_archives_are_one_line(oci_layout: Path, tmp_path: Path) -> None:
    out = tmp_path / "named.tar"
    assert run_cli("copy", "--platform", "linux/amd64", f"oci:{oci_layout}:min", f"docker-archive:{out}:me/min",
                   "--no-store").returncode == 0
    with tarfile.open(out) as tf:
        assert json.load(tf.extractfile("manifest.json"))[0]["RepoTags"] == ["me/min:latest"]  # type: ignore[arg-type]
    # an archive whose manifest.json gives RepoTags that are not a list, and a layout manifest that is not one
    odd = tmp_path / "odd.tar"
    with tarfile.open(out) as src, tarfile.open(odd, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
            if m.name == "manifest.json" and data is not None:
                doc = json.loads(data)
                doc[0]["RepoTags"] = 5
                data = json.dumps(doc).encode()
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
        for name, body in (("index.json", b'{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.'
                                         b'manifest.v1+json","digest":"sha256:' + b"0" * 64 + b'","size":2}]}'),):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            dst.addfile(info, io.BytesIO(body))
    assert_one_line_error(run_cli("copy", f"docker-archive:{odd}:me/min:latest", f"oci:{tmp_path}/o:x"),
                          r"no image is tagged 'me/min:latest'; it has: no tags", untouched=[tmp_path / "o"])
    res = run_cli("copy", f"docker-archive:{odd}", f"oci:{tmp_path}/o2:x", "--no-store")
    assert res.returncode == 0, res.stderr  # the broken index.json is passed over: manifest.json serves
