"""ociassemble build: a Dockerfile without a daemon, and compose's Dockerfile.compose built
to the very image compose publishes (issue 14, items 1 and 3)."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.consumers import unpack
from tests.oneline import assert_one_line_error
from tests.test_add import MYB, _mybackend

SELECTIONS = {
    "gpu": ["--backend", "onnxruntime", "--backend", "python", "--repoagent", "checksum", "--cache", "local"],
    "cpu-only": ["--no-enable-gpu", "--backend", "onnxruntime", "--backend", "python"],
    "gpu-min": ["--no-enable-gpu", "--backend", "pytorch", "--backend", "python"],
}


def _images(fx: Path, which: str) -> list[str]:
    if which == "gpu":
        return ["--image", f"min,oci:{fx}:min", "--image", f"full,oci:{fx}:full"]
    return ["--image", f"min,oci:{fx}:cpu-min", "--image", f"full,oci:{fx}:cpu-full", "--image",
            f"gpu-min,oci:{fx}:gpu-min"]


def _ok(res: subprocess.CompletedProcess[str]) -> dict:  # type: ignore[type-arg]
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def _manifest(layout: Path, digest: str) -> dict:  # type: ignore[type-arg]
    return json.loads((layout / "blobs/sha256" / digest[7:]).read_bytes())  # type: ignore[no-any-return]


@pytest.mark.parametrize("which", list(SELECTIONS))
def test_dry_run_then_build_gives_the_digest_compose_gives(oci_layout: Path, tmp_path: Path, which: str) -> None:
    sel = [*SELECTIONS[which], *_images(oci_layout, which)]
    composed = _ok(run_cli("compose", *sel, "--output-name", f"oci:{tmp_path}/out:compose", "--work-dir",
                           str(tmp_path / "w1"), "--json", "--no-store"))
    dry = run_cli("compose", "--dry-run", *sel, "--output-name", f"oci:{tmp_path}/out:compose", "--work-dir",
                  str(tmp_path / "w2"), "--no-store")
    assert dry.returncode == 0, dry.stderr
    assert not (tmp_path / "out-dry").exists()
    dockerfile = tmp_path / "w2/Dockerfile.compose"
    assert dockerfile.read_text() == (tmp_path / "w1/Dockerfile.compose").read_text()
    built = _ok(run_cli("build", "-f", str(dockerfile), "-t", f"oci:{tmp_path}/out:built", "--json", "--no-store",
                        str(tmp_path / "w2")))
    assert built["manifest_digest"] == composed["manifest_digest"]
    assert built["layers"] == composed["layers"]
    text = dockerfile.read_text()
    if which == "gpu-min":  # the CUDA lines, named after what gpu-min holds
        assert sum(line.startswith("COPY --from=min_container ") for line in text.splitlines()) >= 15
    if which == "cpu-only":  # stands on full's own base: the prepare block is carried out by carrying it
        assert "\nFROM full\n" in text and "RUN apt-get update" in text
    # the history says which Dockerfile line made each layer
    cfg = _manifest(tmp_path / "out", composed["config_digest"])
    made = [h["created_by"] for h in cfg["history"] if h.get("comment") == "ociassemble" and not h.get("empty_layer")]
    assert made == [line for line in text.splitlines() if line.startswith("COPY ")]


def test_dry_run_then_build_over_the_registry(registry, pushed: dict[str, str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sel = ["--backend", "onnxruntime", "--image", f"min,{pushed['min']}", "--image", f"full,{pushed['full']}",
           "--tls-verify=false"]
    out = f"{registry.host}/team/built:1"
    composed = _ok(run_cli("compose", *sel, "--output-name", out, "--work-dir", str(tmp_path / "w1"), "--json"))
    assert run_cli("compose", "--dry-run", *sel, "--work-dir", str(tmp_path / "w2")).returncode == 0
    built = _ok(run_cli("build", "-f", str(tmp_path / "w2/Dockerfile.compose"), "-t", f"{registry.host}/team/built:2",
                        "--tls-verify=false", "--json", "--verify", str(tmp_path / "w2")))
    assert built["manifest_digest"] == composed["manifest_digest"]
    assert built["stats"]["verified_layers"] > 0


def test_the_seeds_custom_backend_example(oci_layout: Path, tmp_path: Path) -> None:
    """Append the seed's COPY line to the dry run's file and build; compose --add gives the same."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    _mybackend(ctx)
    (ctx / "mybackend/sub/cache.pyc").write_bytes(b"compiled")
    (ctx / ".dockerignore").write_text("# compiled files stay out\n**/*.pyc\n")
    sel = ["--backend", "onnxruntime", "--backend", "python", *_images(oci_layout, "gpu")]
    assert run_cli("compose", "--dry-run", *sel, "--work-dir", str(tmp_path / "w")).returncode == 0
    dockerfile = tmp_path / "w/Dockerfile.compose"
    with dockerfile.open("a") as f:
        f.write(f"COPY ./mybackend /{MYB}\n")
    built = _ok(run_cli("build", "-f", str(dockerfile), "-t", f"oci:{tmp_path}/out:b", "--json", "--no-store",
                        str(ctx)))
    added = built["layers"][-1]
    assert added["name"] == f"add /{MYB}" and added["entries"] == 5  # dir, .so, alias, sub/, sub/model.py
    rootfs = unpack(f"oci:{tmp_path}/out:b", tmp_path / "unpacked")
    assert (rootfs / MYB / "libtriton_mybackend.so").read_bytes() == b"\x7fELF custom backend"
    assert os.readlink(rootfs / MYB / "alias.so") == "libtriton_mybackend.so"
    assert (rootfs / MYB / "sub/model.py").is_file() and not (rootfs / MYB / "sub/cache.pyc").exists()
    for name in ("onnxruntime", "python"):
        assert (rootfs / "opt/tritonserver/backends" / name).is_dir()
    # its own layer: the blob holds mybackend and nothing else
    with tarfile.open(tmp_path / "out/blobs/sha256" / added["digest"][7:]) as tf:
        assert {m.name for m in tf.getmembers()} == {MYB, f"{MYB}/alias.so", f"{MYB}/libtriton_mybackend.so",
                                                    f"{MYB}/sub", f"{MYB}/sub/model.py"}
    # compose --add of the same content (without the .pyc) gives the very same image
    (ctx / "mybackend/sub/cache.pyc").unlink()
    composed = _ok(run_cli("compose", *sel, "--add", f"./mybackend:/{MYB}", "--output-name", f"oci:{tmp_path}/out:c",
                           "--work-dir", str(tmp_path / "w2"), "--json", "--no-store", cwd=ctx))
    assert composed["manifest_digest"] == built["manifest_digest"]


def test_a_run_compose_py_did_not_write_fails_naming_its_line(oci_layout: Path, tmp_path: Path) -> None:
    assert run_cli("compose", "--dry-run", "--backend", "onnxruntime", *_images(oci_layout, "gpu"), "--work-dir",
                   str(tmp_path / "w")).returncode == 0
    dockerfile = tmp_path / "w/Dockerfile.compose"
    n = len(dockerfile.read_text().splitlines()) + 1
    with dockerfile.open("a") as f:
        f.write("RUN apt-get install -y foo\n")
    res = run_cli("build", "-f", str(dockerfile), "-t", f"oci:{tmp_path}/out:b", "--no-store", str(tmp_path / "w"))
    assert_one_line_error(res, rf"Dockerfile\.compose:{n}: RUN apt-get install -y foo needs a container runtime",
                          untouched=[tmp_path / "out"])


def _tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o640
            import io

            tf.addfile(info, io.BytesIO(data))


def test_the_instructions_users_add(oci_layout: Path, tmp_path: Path) -> None:
    """ARG, FROM AS, COPY --from (--chown, --chmod, a symlinked source followed), COPY and ADD
    from the context, ENV, LABEL, WORKDIR, USER, ENTRYPOINT, CMD, EXPOSE, --build-arg."""
    ctx = tmp_path / "ctx"
    (ctx / "conf").mkdir(parents=True)
    (ctx / "conf/a.txt").write_text("a\n")
    (ctx / "conf/secret.key").write_text("nope\n")
    (ctx / "run.sh").write_text("#!/bin/sh\n")
    (ctx / ".dockerignore").write_text("conf/*.key\n")
    _tar(ctx / "models.tar.gz", {"m1/config.pbtxt": b"name: 'm1'\n", "m1/1/model.onnx": b"onnx"})
    (ctx / "Dockerfile").write_text(f"""\
ARG BASE=oci:{oci_layout}:min
FROM oci:{oci_layout}:full AS full
FROM ${{BASE}}
ARG WHO=nobody
ENV APP=/srv/app \\
    GREETING="hello $WHO"
LABEL org.example.who="${{WHO}}" org.example.app=$APP
WORKDIR $APP
COPY --from=full --chown=1000:1001 --chmod=0750 /opt/tritonserver/backends/onnxruntime ./onnx/
COPY --from=full /opt/tritonserver/lib/libtritonserver.so /srv/lib/
COPY conf ./conf
COPY run.sh .
ADD models.tar.gz /models/
USER 1000:1001
EXPOSE 8000 8001/udp
ENTRYPOINT ["/srv/app/run.sh"]
CMD ["--model-repository", "/models"]
""")
    res = _ok(run_cli("build", "-t", f"oci:{tmp_path}/out:x", "--build-arg", "WHO=triton", "--json", "--no-store",
                      str(ctx)))
    m = _manifest(tmp_path / "out", res["manifest_digest"])
    cfg = _manifest(tmp_path / "out", m["config"]["digest"])["config"]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["APP"] == "/srv/app" and env["GREETING"] == "hello triton"
    assert cfg["Labels"]["org.example.who"] == "triton" and cfg["Labels"]["org.example.app"] == "/srv/app"
    assert cfg["WorkingDir"] == "/srv/app" and cfg["User"] == "1000:1001"
    assert set(cfg["ExposedPorts"]) == {"8000/tcp", "8001/udp"}
    assert cfg["Entrypoint"] == ["/srv/app/run.sh"] and cfg["Cmd"] == ["--model-repository", "/models"]
    assert m["annotations"]["org.opencontainers.image.base.name"] == f"oci:{oci_layout}:min"
    assert len(res["layers"]) == 5
    layout = tmp_path / "unp"
    rootfs = unpack(f"oci:{tmp_path}/out:x", layout)
    onnx = rootfs / "srv/app/onnx"
    assert (onnx / "libtriton_onnxruntime.so").is_file()
    with tarfile.open(tmp_path / "out/blobs/sha256" / res["layers"][0]["digest"][7:]) as tf:
        members = [m for m in tf.getmembers() if m.name.startswith("srv/app/onnx/") and ".wh." not in m.name]
        assert members and all((m.uid, m.gid) == (1000, 1001) for m in members)
        assert all(m.mode & 0o777 == 0o750 for m in members if not m.issym())
    lib = rootfs / "srv/lib/libtritonserver.so"  # a symlink in full: COPY follows it, as Docker does
    assert lib.is_file() and not lib.is_symlink()
    assert (rootfs / "srv/app/conf/a.txt").read_text() == "a\n" and not (rootfs / "srv/app/conf/secret.key").exists()
    assert (rootfs / "srv/app/run.sh").is_file()
    assert (rootfs / "models/m1/1/model.onnx").read_bytes() == b"onnx"  # ADD extracted the local tar
    # the context is part of the memo key: unchanged, nothing is read; a changed file, a new image
    again = _ok(run_cli("build", "-t", f"oci:{tmp_path}/out:x", "--build-arg", "WHO=triton", "--json", str(ctx)))
    memo = _ok(run_cli("build", "-t", f"oci:{tmp_path}/out:x", "--build-arg", "WHO=triton", "--json", str(ctx)))
    assert memo["stats"].get("memo_hit") == 1 and memo["manifest_digest"] == again["manifest_digest"]
    (ctx / "run.sh").write_text("#!/bin/sh\nexec tritonserver \"$@\"\n")
    changed = _ok(run_cli("build", "-t", f"oci:{tmp_path}/out:x", "--build-arg", "WHO=triton", "--json", str(ctx)))
    assert changed["stats"]["memo_hit"] == 0 and changed["manifest_digest"] != again["manifest_digest"]
    (ctx / "conf/secret.key").write_text("changed, but ignored\n")
    ignored = _ok(run_cli("build", "-t", f"oci:{tmp_path}/out:x", "--build-arg", "WHO=triton", "--json", str(ctx)))
    assert ignored["manifest_digest"] == changed["manifest_digest"]


BAD = [
    # (Dockerfile body after the FROM lines, files in the context, extra args, the one line's pattern)
    ("HEALTHCHECK CMD true\n", {}, [], r"Dockerfile:3: HEALTHCHECK is not an instruction ociassemble build carries"),
    ("COPY <<EOT /x\nhello\nEOT\n", {}, [], r"Dockerfile:3: COPY: heredocs are not supported"),
    ("COPY missing.txt /x\n", {}, [], r"Dockerfile:3: COPY: missing\.txt is not in the build context"),
    ("COPY secret.key /x\n", {"secret.key": "k", ".dockerignore": "*.key\n"}, [],
     r"secret\.key is excluded by the context's \.dockerignore"),
    ("COPY ../outside /x\n", {}, [], r"\.\./outside lies outside the build context"),
    ("COPY --chown=triton /a.txt /x\n", {"a.txt": "a"}, [], r"--chown=triton: give numeric UID\[:GID\]"),
    ("COPY --parents a.txt /x\n", {"a.txt": "a"}, [], r"Dockerfile:3: COPY --parents is not supported"),
    ("ADD https://example.com/model.onnx /models/\n", {}, [], r"is a URL; .*download it into the build context"),
    ("COPY *.txt /x/\n", {"a.txt": "a"}, [], r"wildcards in sources \(\*\.txt\) are not supported"),
    ("RUN rm -fr /opt/tritonserver/*\n", {}, [], r"Dockerfile:3: RUN: .*opaque marker in the next COPY layer"),
    ("RUN chown 1000:1000 /opt\n", {}, [], r"Dockerfile:3: RUN: ociassemble carries out RUN chown only"),
    ("RUN pip install numpy\n", {}, [], r"Dockerfile:3: RUN pip install numpy needs a container runtime"),
    ("ENV A\n", {}, [], r"Dockerfile: ENV must have two arguments"),
    ("ENV A=\"open\n", {}, [], r"Dockerfile:3: ENV: unterminated \" quote"),
    ("EXPOSE http\n", {}, [], r"Dockerfile:3: EXPOSE: http/tcp is not a port"),
    ("USER\n", {}, [], r"Dockerfile:3: USER takes one user"),
    ("COPY --from=full /opt/tritonserver/backends/nosuch /x\n", {}, [],
     r"Dockerfile:3: COPY: the full image .* has no /opt/tritonserver/backends/nosuch"),
    ("COPY --from=ful /opt/tritonserver/bin /x\n", {}, [],
     r"Dockerfile:3: COPY --from=ful names no stage \(stages: full\); to copy from an image, give its full"),
    ("COPY --from= a.txt /x\n", {"a.txt": "a"}, [], r"Dockerfile:3: COPY --from= names nothing"),
    ("COPY a.txt b.txt /x\n", {"a.txt": "a", "b.txt": "b"}, [], r"with several sources the destination must be a "
     r"directory ending in / \(/x/\)"),
    ("COPY link/hostname /x\n", {}, [], r"link/hostname leads outside the build context \(through a symlink\)"),
    ("COPY a.txt /x\n", {"a.txt": "a"}, ["--build-arg", "1X=1"], r"--build-arg 1X=1 must be NAME=VALUE"),
    ("COPY a.txt /x\n", {"a.txt": "a"}, ["--output-name", "oci:/tmp/x:y"], r"-t and --output-name name the same"),
]


@pytest.mark.parametrize(("body", "files", "extra", "pattern"), BAD, ids=[b[3][:40] for b in BAD])
def test_what_build_cannot_do_is_one_line(oci_layout: Path, tmp_path: Path, body: str, files: dict[str, str],
                                          extra: list[str], pattern: str) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for name, text in files.items():
        (ctx / name).write_text(text)
    (ctx / "link").symlink_to("/etc")
    (ctx / "Dockerfile").write_text(f"FROM oci:{oci_layout}:full AS full\nFROM oci:{oci_layout}:min\n{body}")
    res = run_cli("build", "-t", f"oci:{tmp_path}/out:x", "--no-store", *extra, str(ctx))
    assert_one_line_error(res, pattern, untouched=[tmp_path / "out"])


def test_build_refuses_a_bad_dockerfile_or_context(oci_layout: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_one_line_error(run_cli("build", "-t", f"oci:{out}:x", str(tmp_path / "nowhere")),
                          r"build context .*nowhere is not a directory", untouched=[out])
    assert_one_line_error(run_cli("build", "-t", f"oci:{out}:x", str(tmp_path)),
                          r"cannot read the Dockerfile .*/Dockerfile: No such file", untouched=[out])
    (tmp_path / "Dockerfile").write_bytes(b"FROM \xff\n")
    assert_one_line_error(run_cli("build", "-t", f"oci:{out}:x", str(tmp_path)), r"it is not UTF-8 text",
                          untouched=[out])
    (tmp_path / "Dockerfile").write_text(f"FROM oci:{oci_layout}:full AS full\nCOPY a /b\nFROM oci:{oci_layout}:min\n")
    assert_one_line_error(run_cli("build", "-t", f"oci:{out}:x", str(tmp_path)),
                          r"Dockerfile:2: COPY: stage full has instructions", untouched=[out])
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY a /a\n")
    assert_one_line_error(run_cli("build", "-t", f"oci:{out}:x", str(tmp_path)),
                          r"Dockerfile:1: FROM scratch: building from an empty image is not supported", untouched=[out])
    (tmp_path / "Dockerfile").write_text(f"FROM --platform=linux/arm64 oci:{oci_layout}:min\n")
    assert_one_line_error(run_cli("build", "-t", f"oci:{out}:x", str(tmp_path)),
                          r"Dockerfile:1: FROM --platform is not supported", untouched=[out])
    # compose.py's prepare block needs the layers of full that ran it: min is not full's base here
    dry = run_cli("compose", "--dry-run", "--backend", "onnxruntime", *_images(oci_layout, "gpu"), "--work-dir",
                  str(tmp_path / "w"))
    assert dry.returncode == 0, dry.stderr
    text = (tmp_path / "w/Dockerfile.compose").read_text().replace(f"FROM oci:{oci_layout}:min\n",
                                                                    f"FROM oci:{oci_layout}:cpu-full\n")
    (tmp_path / "w/Dockerfile.compose").write_text(text)
    n = next(k for k, line in enumerate(text.splitlines(), 1) if line.startswith("RUN userdel"))
    assert_one_line_error(run_cli("build", "-f", str(tmp_path / "w/Dockerfile.compose"), "-t", f"oci:{out}:x",
                                  "--no-store", str(tmp_path / "w")),
                          rf"Dockerfile\.compose:{n}: RUN: compose\.py's prepare step .* is not the image it was "
                          "built on", untouched=[out])


def test_the_context_is_the_users_and_copies_merge_as_dockers_do(oci_layout: Path, tmp_path: Path) -> None:
    """Run where Docker users run it (context ".", no -t: the scratch folder and the output
    layout land in the context), a COPY . of it twice: the same image, holding neither; a
    sibling directory whose name extends the context's is outside it; COPY into / writes
    no root entry; COPY --from never deletes what lies at its destination."""
    ctx = tmp_path / "ctx"
    (ctx / "app").mkdir(parents=True)
    (ctx / "app/a.txt").write_text("a\n")
    (tmp_path / "ctx-secret").mkdir()
    (tmp_path / "ctx-secret/key").write_text("SECRET\n")
    (ctx / "sneaky").symlink_to("../ctx-secret")
    (ctx / "rootfs").mkdir()
    (ctx / "rootfs/etc-extra").write_text("x\n")
    body = f"FROM oci:{oci_layout}:full AS full\nFROM oci:{oci_layout}:min\n"
    (ctx / "Dockerfile").write_text(body + "COPY app /srv/app\nCOPY rootfs/ /\n"
                                    "COPY --from=full /opt/tritonserver/backends/onnxruntime /srv/app\n")
    first = _ok(run_cli("build", "--json", "--no-store", cwd=ctx))
    second = _ok(run_cli("build", "--json", "--no-store", cwd=ctx))
    assert first["manifest_digest"] == second["manifest_digest"]
    assert not [p for p in ctx.iterdir() if p.name.startswith("ociassemble-")]
    layout = ctx / "tritonserver"
    names = set()
    for layer in first["layers"]:
        with tarfile.open(layout / "blobs/sha256" / layer["digest"][7:]) as tf:
            names |= set(tf.getnames())
    assert "etc-extra" in names and "" not in names and not [n for n in names if n.startswith("/")]
    assert not [n for n in names if ".wh." in n]  # the onnxruntime tree's deletions stay in full
    assert "srv/app/a.txt" in names and "srv/app/libtriton_onnxruntime.so" in names
    (ctx / "Dockerfile").write_text(body + "COPY sneaky/key /k\n")
    assert_one_line_error(run_cli("build", "-t", f"oci:{tmp_path}/o2:x", "--no-store", str(ctx)),
                          r"Dockerfile:3: COPY: sneaky/key leads outside the build context",
                          untouched=[tmp_path / "o2"])
    (ctx / "Dockerfile").write_text(body + "ARG TARGETARCH\nCOPY app /srv/${TARGETARCH}/\n")
    res = _ok(run_cli("build", "-t", f"oci:{tmp_path}/o3:x", "--no-store", "--build-arg", "UNUSED=1", "--json",
                      str(ctx)))
    assert res["layers"][0]["name"] == "add /srv/amd64"
    assert any("--build-arg UNUSED was not consumed" in line for line in res["plan"])


def test_copy_lands_where_docker_puts_it(oci_layout: Path, tmp_path: Path) -> None:
    """Destinations are decided against the base's tree, as Docker decides them: a file
    copied onto an existing directory goes into it, and symlinks on the way are followed
    (min's /bin is a symlink to usr/bin)."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f.txt").write_text("f\n")
    (ctx / "Dockerfile").write_text(f"FROM oci:{oci_layout}:min\nWORKDIR /usr\nCOPY f.txt bin\nCOPY f.txt /opt\n"
                                    "COPY f.txt /bin/g.txt\nCOPY f.txt /bin\n")
    res = _ok(run_cli("build", "-t", f"oci:{tmp_path}/out:x", "--no-store", "--json", str(ctx)))
    names = []
    for layer in res["layers"]:
        with tarfile.open(tmp_path / "out/blobs/sha256" / layer["digest"][7:]) as tf:
            names.append(tf.getnames())
    assert names == [["usr/bin/f.txt"], ["opt/f.txt"], ["usr/bin/g.txt"], ["usr/bin/f.txt"]]
    rootfs = unpack(f"oci:{tmp_path}/out:x", tmp_path / "unpacked")
    assert (rootfs / "opt/nvidia/nvidia_entrypoint.sh").is_file() and (rootfs / "usr/bin/f.txt").is_file()
    assert os.readlink(rootfs / "bin") == "usr/bin"
