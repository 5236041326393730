"""The shared-library check (issue 12, part 3), against ELF files gcc builds here.

Small images are written with fixtures.ngc's layout writer and checked with
``check_image`` (the library behind ``ociassemble check-libs``); each way of finding a
library is tested together with the same image lacking that way, where the library must
then be reported. A Triton-shaped min/full pair goes through ``compose``: the composed
image's report names what lives only in a layer compose does not carry.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures import ngc, stacks
from fixtures.ngc import F, LayerDef, Store, image
from ociassemble.engine.libcheck import LibReport
from ociassemble.layers.elf import read_facts
from ociassemble.presets.checklibs import CheckOptions, check_image
from ociassemble.presets.index import IndexOptions, index
from tests.conftest import run_cli
from tests.oneline import assert_one_line_error
from tests.registryserver import Registry

X86 = "lib/x86_64-linux-gnu"
ROOT = "opt/tritonserver"


@dataclass
class Elfs:
    dir: Path

    def __getitem__(self, name: str) -> bytes:
        return (self.dir / name).read_bytes()


def _gcc(*args: str) -> None:
    res = subprocess.run(["gcc", *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def _lib(d: Path, soname: str, needs: tuple[str, ...] = (), runpath: str | None = None, rpath: str | None = None,
         out: str | None = None, m32: bool = False) -> None:
    """A shared library ``soname`` (file ``out``) whose DT_NEEDED are ``needs`` (files built before)."""
    src = d / "empty.c"
    src.write_text("int ociassemble_test_symbol(void) { return 0; }\n")
    args = ["-shared", "-fPIC", "-nostdlib", "-o", str(d / (out or soname)), str(src), f"-Wl,-soname,{soname}",
            "-Wl,--no-as-needed", *(["-m32"] if m32 else [])]
    args += [a for n in needs for a in ("-L", str(d), f"-l:{n}")]
    if runpath is not None:
        args.append(f"-Wl,--enable-new-dtags,-rpath,{runpath}")
    if rpath is not None:
        args.append(f"-Wl,--disable-new-dtags,-rpath,{rpath}")
    _gcc(*args)


def _exe(d: Path, out: str, needs: tuple[str, ...], rpath: str | None = None) -> None:
    """A real executable (crt files and the machine's libc), so DT_NEEDED also lists libc.so.6."""
    src = d / "main.c"
    src.write_text("int main(void) { return 0; }\n")
    args = ["-o", str(d / out), str(src), "-Wl,--no-as-needed", f"-Wl,-rpath-link,{d}"]
    args += [a for n in needs for a in ("-L", str(d), f"-l:{n}")]
    if rpath is not None:
        args.append(f"-Wl,--disable-new-dtags,-rpath,{rpath}")
    _gcc(*args)


@pytest.fixture(scope="module")
def elfs(tmp_path_factory: pytest.TempPathFactory) -> Elfs:
    if platform.machine() != "x86_64":
        pytest.skip("the fixtures are x86_64 images holding 32-bit (-m32) and 64-bit x86 libraries gcc builds here")
    if shutil.which("gcc") is None:
        pytest.fail("gcc is not installed; run .ci/run (it installs gcc and libc6-dev)")
    d = tmp_path_factory.mktemp("elfs")
    _lib(d, "libc.so.6")  # the images' libc: any 64-bit library of that name satisfies the check
    for name in ("libb.so.1", "libenv.so.1", "libconf.so.1", "libgone.so.1", "libopq.so.1", "libonlyfull.so.1",
                 "libgood_dep.so.1", "libpriv.so.1", "libtritonserver.so"):
        _lib(d, name)
    _lib(d, "libw.so.1", out="libw32.so.1", m32=True)
    _lib(d, "libw.so.1")
    _lib(d, "liba.so.1", ("libb.so.1",), runpath="$ORIGIN")  # RUNPATH
    _lib(d, "liba-rpath.so.1", ("libb.so.1",), rpath="$ORIGIN/../private")  # RPATH
    _lib(d, "libplain.so.1", ("libenv.so.1",))  # nothing of its own: default dirs, conf, LD_LIBRARY_PATH
    _lib(d, "libconfuser.so.1", ("libconf.so.1",))
    _lib(d, "libneedsw.so.1", ("libw.so.1",))
    _lib(d, "libchild.so.1", ("libpriv.so.1",))  # found only through the executable's RPATH
    _lib(d, "libchild-runpath.so.1", ("libpriv.so.1",), runpath="$ORIGIN")  # RUNPATH: the exe's RPATH no longer applies
    _lib(d, "libplugin.so", ("libtritonserver.so",), runpath="$ORIGIN")
    _lib(d, "libtriton_good.so", ("libtritonserver.so", "libgood_dep.so.1", "libenv.so.1", "libconf.so.1"),
         runpath="$ORIGIN")
    _lib(d, "libtriton_bad.so", ("libonlyfull.so.1", "libgone.so.1", "libw.so.1", "libopq.so.1"), runpath="$ORIGIN")
    _lib(d, "libneighbour.so.1")
    _lib(d, "libsym.so.1", ("libneighbour.so.1",), runpath="$ORIGIN")
    _exe(d, "linked", ("libsym.so.1",), rpath="/opt/links")
    _exe(d, "tritonserver", ("libtritonserver.so",), rpath="$ORIGIN/../lib")
    _exe(d, "app", ("libchild.so.1",), rpath="/opt/app/private")
    _exe(d, "app2", ("libchild-runpath.so.1",), rpath="/opt/app/private")
    return Elfs(d)


def _os(elfs: Elfs, *extra: F) -> list[F]:
    return [*stacks.base_layer().files, F("lib", "dir"), F(X86, "dir"), F(f"{X86}/libc.so.6", data=elfs["libc.so.6"]),
            *extra]


def _write(tmp: Path, layers: list[list[F]], env: list[str] | None = None) -> str:
    """One image ``img`` in a fresh layout; returns its reference."""
    layout = tmp / f"layout-{len(list(tmp.glob('layout-*')))}"
    st = Store(layout)
    st.refs["img"] = image(st, [LayerDef(fs, f"layer {i}") for i, fs in enumerate(layers)],
                           env or ["PATH=/usr/bin"], {}, "amd64", False)
    st.write_index()
    return f"oci:{layout}:img"


def _check(ref: str, *paths: str) -> LibReport:
    """The report, checked to be the same when the image's layers have layer indexes (issue
    16): file lists from the indexes, and only what the loader looks up read through them."""
    plain = check_image(CheckOptions(ref=ref, paths=list(paths), no_store=True))
    store = Path(ref.split(":")[1]).with_name(Path(ref.split(":")[1]).name + "-store")
    shutil.rmtree(store, ignore_errors=True)
    index(IndexOptions(ref=ref, store_dir=str(store), work_dir=str(store.parent)))
    lines: list[str] = []
    indexed = check_image(CheckOptions(ref=ref, paths=list(paths), store_dir=str(store), log=lines.append))
    assert indexed.layers == {"layer index": plain.layers.get("read", 0)}, (indexed.layers, plain.layers)
    keep = ("findings", "files_checked", "notes")
    assert {k: getattr(indexed, k) for k in keep} == {k: getattr(plain, k) for k in keep}, lines
    return plain


def _missing(report: LibReport) -> set[tuple[str, str]]:
    return {(f.file, f.soname) for f in report.missing}


# -- ways of finding a library, each with its counterpart ------------------------------------

def test_runpath_origin_and_a_symlink_chain(elfs: Elfs, tmp_path: Path) -> None:
    lib = [F("opt/app/lib/liba.so.1", data=elfs["liba.so.1"]),
           F("opt/app/lib/libb.so.1.2.3", data=elfs["libb.so.1"]),
           F("opt/app/lib/libb.so.1.2", "symlink", target="libb.so.1.2.3"),
           F("opt/app/lib/libb.so.1", "symlink", target="/opt/app/lib/libb.so.1.2")]
    ok = _check(_write(tmp_path, [_os(elfs), lib]), "/opt/app")
    assert ok.files_checked == 2 and not ok.findings, ok.lines()
    # the chain's last link missing: libb.so.1 leads nowhere
    dangling = _check(_write(tmp_path, [_os(elfs), [f for f in lib if f.path != "opt/app/lib/libb.so.1.2.3"]]),
                      "/opt/app")
    assert _missing(dangling) == {("/opt/app/lib/liba.so.1", "libb.so.1")}
    # $ORIGIN is the library's own directory, not anywhere else
    elsewhere = _check(_write(tmp_path, [_os(elfs), [lib[0], F("opt/other/libb.so.1", data=elfs["libb.so.1"])]]),
                       "/opt/app")
    assert _missing(elsewhere) == {("/opt/app/lib/liba.so.1", "libb.so.1")}


def test_rpath_dollar_origin_parent(elfs: Elfs, tmp_path: Path) -> None:
    ok = _check(_write(tmp_path, [_os(elfs), [F("opt/app/lib/liba-rpath.so.1", data=elfs["liba-rpath.so.1"]),
                                              F("opt/app/private/libb.so.1", data=elfs["libb.so.1"])]]), "/opt/app/lib")
    assert ok.files_checked == 1 and not ok.findings, ok.lines()
    bad = _check(_write(tmp_path, [_os(elfs), [F("opt/app/lib/liba-rpath.so.1", data=elfs["liba-rpath.so.1"]),
                                               F("opt/app/lib/libb.so.1", data=elfs["libb.so.1"])]]), "/opt/app/lib")
    assert _missing(bad) == {("/opt/app/lib/liba-rpath.so.1", "libb.so.1")}


def test_ld_library_path_from_the_config(elfs: Elfs, tmp_path: Path) -> None:
    layers = [_os(elfs), [F("opt/app/libplain.so.1", data=elfs["libplain.so.1"]),
                          F("opt/envlib/libenv.so.1", data=elfs["libenv.so.1"])]]
    ok = _check(_write(tmp_path, layers, ["PATH=/usr/bin", "LD_LIBRARY_PATH=/usr/local/nothing:/opt/envlib"]),
                "/opt/app")
    assert ok.files_checked == 1 and not ok.findings, ok.lines()
    without = _check(_write(tmp_path, layers), "/opt/app")
    assert _missing(without) == {("/opt/app/libplain.so.1", "libenv.so.1")}


def test_ld_so_conf_d_in_a_lower_layer(elfs: Elfs, tmp_path: Path) -> None:
    conf = [F("etc/ld.so.conf", data=b"# comment\ninclude /etc/ld.so.conf.d/*.conf\n"), F("etc/ld.so.conf.d", "dir"),
            F("etc/ld.so.conf.d/zz-app.conf", data=b"/opt/conflib\n")]
    top = [F("opt/app/libconfuser.so.1", data=elfs["libconfuser.so.1"]),
           F("opt/conflib/libconf.so.1", data=elfs["libconf.so.1"])]
    ok = _check(_write(tmp_path, [_os(elfs, *conf), top]), "/opt/app")
    assert ok.files_checked == 1 and not ok.findings, ok.lines()
    # the same file in a .conf.d that ld.so.conf does not include is not read by the loader
    no_include = [F("etc/ld.so.conf", data=b"include /etc/other/*.conf\n"), *conf[1:]]
    bad = _check(_write(tmp_path, [_os(elfs, *no_include), top]), "/opt/app")
    assert _missing(bad) == {("/opt/app/libconfuser.so.1", "libconf.so.1")}


def test_executable_rpath_applies_to_its_libraries_without_runpath(elfs: Elfs, tmp_path: Path) -> None:
    files = [F("opt/app/bin/app", data=elfs["app"], mode=0o755),
             F("opt/app/bin/app2", data=elfs["app2"], mode=0o755),
             F("opt/app/lib/libchild.so.1", data=elfs["libchild.so.1"]),
             F("opt/app/lib/libchild-runpath.so.1", data=elfs["libchild-runpath.so.1"]),
             F("opt/app/private/libpriv.so.1", data=elfs["libpriv.so.1"])]
    layers = [_os(elfs, F("usr/lib/x86_64-linux-gnu", "dir"),
                  F("usr/lib/x86_64-linux-gnu/libchild.so.1", "symlink", target="/opt/app/lib/libchild.so.1"),
                  F("usr/lib/x86_64-linux-gnu/libchild-runpath.so.1", "symlink",
                    target="/opt/app/lib/libchild-runpath.so.1")), files]
    report = _check(_write(tmp_path, layers), "/opt/app")
    assert report.files_checked == 5
    # glibc: DT_RPATH of the loading executable is searched for a library without DT_RUNPATH
    # (app starts), not for one with DT_RUNPATH (app2 would not start)
    assert _missing(report) == {("/opt/app/lib/libchild-runpath.so.1", "libpriv.so.1")}


def test_origin_of_a_library_opened_through_a_symlink_is_the_symlinks_directory(elfs: Elfs, tmp_path: Path) -> None:
    """glibc takes $ORIGIN from the path a library was opened by, symlinks unresolved."""
    base = [F("opt/app/linked", data=elfs["linked"], mode=0o755), F("opt/real/libsym.so.1.0", data=elfs["libsym.so.1"]),
            F("opt/links/libsym.so.1", "symlink", target="../real/libsym.so.1.0")]
    beside_link = _check(_write(tmp_path, [_os(elfs), [*base, F("opt/links/libneighbour.so.1",
                                                                  data=elfs["libneighbour.so.1"])]]), "/opt")
    assert beside_link.files_checked == 3 and not beside_link.findings, beside_link.lines()
    beside_file = _check(_write(tmp_path, [_os(elfs), [*base, F("opt/real/libneighbour.so.1",
                                                                  data=elfs["libneighbour.so.1"])]]), "/opt")
    assert _missing(beside_file) == {("/opt/real/libsym.so.1.0", "libneighbour.so.1")}


def test_a_plugin_may_rely_on_what_the_executable_loads(elfs: Elfs, tmp_path: Path) -> None:
    core = [F(f"{ROOT}/lib/libtritonserver.so", data=elfs["libtritonserver.so"]),
            F(f"{ROOT}/backends/x/libplugin.so", data=elfs["libplugin.so"])]
    exe = F(f"{ROOT}/bin/tritonserver", data=elfs["tritonserver"], mode=0o755)
    ok = _check(_write(tmp_path, [_os(elfs), [exe, *core]]))  # default scope of a plain image: all of it
    assert ok.files_checked == 4 and not ok.findings, ok.lines()
    alone = _check(_write(tmp_path, [_os(elfs), core]))
    assert _missing(alone) == {(f"/{ROOT}/backends/x/libplugin.so", "libtritonserver.so")}
    assert [f.component for f in alone.missing] == ["backend x"]


def test_with_layer_indexes_only_the_libraries_looked_up_are_read(elfs: Elfs, tmp_path: Path) -> None:
    """A lower layer with a layer index is known by its file list: of its thirty ELF files
    only the one the loader looks up (and finds of the wrong class, so searches on) is read."""
    junk = [F(f"usr/share/junk/lib{n}.so.1", data=elfs["libb.so.1"]) for n in range(30)]
    lower = _os(elfs, *junk, F(f"{X86}/libw.so.1", data=elfs["libw32.so.1"]), F("usr/lib/libw.so.1",
                                                                                 data=elfs["libw.so.1"]))
    ref = _write(tmp_path, [lower, [F("opt/app/libneedsw.so.1", data=elfs["libneedsw.so.1"])]])
    store = tmp_path / "store"
    index(IndexOptions(ref=ref, store_dir=str(store), work_dir=str(tmp_path)))
    lines: list[str] = []
    report = check_image(CheckOptions(ref=ref, paths=["/opt/app"], store_dir=str(store), log=lines.append))
    assert report.files_checked == 1 and not report.findings, report.lines()
    assert report.layers == {"layer index": 2}
    # round 1: the 32-bit libw.so.1 in the first default dir; round 2: the 64-bit one after it
    assert "libcheck: 2 file(s) read through layer indexes as the loader looked them up, in 2 round(s)" in lines, lines


# -- what must be reported ---------------------------------------------------------------------

def test_a_library_deleted_by_a_later_whiteout_or_opaque_directory(elfs: Elfs, tmp_path: Path) -> None:
    lower = _os(elfs, F("usr/lib/x86_64-linux-gnu", "dir"), F("usr/lib/x86_64-linux-gnu/libgone.so.1",
                                                              data=elfs["libgone.so.1"]),
                F("opt/opq", "dir"), F("opt/opq/libopq.so.1", data=elfs["libopq.so.1"]))
    top = [F("opt/app/libtriton_bad.so", data=elfs["libtriton_bad.so"]),
           F("opt/app/libonlyfull.so.1", data=elfs["libonlyfull.so.1"]), F("opt/app/libw.so.1", data=elfs["libw.so.1"])]
    env = ["PATH=/usr/bin", "LD_LIBRARY_PATH=/opt/opq"]
    ok = _check(_write(tmp_path, [lower, top], env), "/opt/app")
    assert not ok.findings, ok.lines()
    gone = _check(_write(tmp_path, [lower, [F("usr/lib/x86_64-linux-gnu/libgone.so.1", "whiteout"),
                                            F("opt/opq", "opaque"), F("opt/opq/other", data=b"x")], top], env),
                  "/opt/app")
    assert _missing(gone) == {("/opt/app/libtriton_bad.so", "libgone.so.1"),
                              ("/opt/app/libtriton_bad.so", "libopq.so.1")}


def test_a_library_of_the_wrong_class_does_not_satisfy(elfs: Elfs, tmp_path: Path) -> None:
    assert read_facts(open(elfs.dir / "libw32.so.1", "rb"), len(elfs["libw32.so.1"])).elfclass == 32  # type: ignore[union-attr]
    user = F("opt/app/libneedsw.so.1", data=elfs["libneedsw.so.1"])
    only32 = _check(_write(tmp_path, [_os(elfs, F(f"{X86}/libw.so.1", data=elfs["libw32.so.1"])), [user]]), "/opt/app")
    assert _missing(only32) == {("/opt/app/libneedsw.so.1", "libw.so.1")}
    assert "32-bit" in only32.missing[0].detail and "64-bit" in only32.missing[0].detail
    # the loader skips the 32-bit one and searches on: a 64-bit one later in the search path is found
    both = _check(_write(tmp_path, [_os(elfs, F(f"{X86}/libw.so.1", data=elfs["libw32.so.1"]),
                                        F("usr/lib/libw.so.1", data=elfs["libw.so.1"])), [user]]), "/opt/app")
    assert not both.findings, both.lines()


def test_a_malformed_elf_is_reported_not_crashed(elfs: Elfs, tmp_path: Path) -> None:
    body = elfs["liba.so.1"]
    ref = _write(tmp_path, [_os(elfs), [F("opt/app/truncated.so", data=body[:200]),
                                        F("opt/app/header-only.so", data=body[:10]),
                                        F("opt/app/liba.so.1", data=body),
                                        F("opt/app/libb.so.1", data=elfs["libb.so.1"]),
                                        F("opt/app/notes.txt", data=b"\x7fELF, said the text")]])
    report = _check(ref, "/opt/app")
    assert {f.file for f in report.malformed} == {"/opt/app/truncated.so", "/opt/app/header-only.so",
                                                  "/opt/app/notes.txt"}
    assert not report.missing and report.failed
    res = run_cli("check-libs", ref, "--path", "/opt/app", "--no-store")
    assert res.returncode == 3 and "Traceback" not in res.stderr
    assert "'/opt/app/truncated.so' is not a readable ELF file" in res.stdout


def test_names_from_the_image_are_escaped(elfs: Elfs, tmp_path: Path) -> None:
    ref = _write(tmp_path, [_os(elfs), [F("opt/app/evil\x1b[2J\nlib.so", data=elfs["libplain.so.1"])]])
    res = run_cli("check-libs", ref, "--path", "/opt/app", "--no-store")
    assert res.returncode == 3
    assert "\x1b" not in res.stdout + res.stderr and len(res.stdout.strip().splitlines()) == 1
    assert "evil\\x1b[2J\\nlib.so" in res.stdout and "'libenv.so.1' not found" in res.stdout


# -- compose, and check-libs on a registry ------------------------------------------------------

@pytest.fixture(scope="module")
def pair(elfs: Elfs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """min = an OS layer (libc, ld.so.conf.d, a 32-bit libw, libgone, libopq) and full = min's
    layer + a system layer (what LD_LIBRARY_PATH names; libgone and libopq deleted) + the
    install layer (a real tritonserver and backends good, bad, broken) + a later layer with
    libonlyfull, which compose does not carry."""
    layout = tmp_path_factory.mktemp("libcheck-pair") / "layout"
    os_layer = LayerDef(_os(elfs, F("etc/ld.so.conf", data=b"include /etc/ld.so.conf.d/*.conf\n"),
                                F("etc/ld.so.conf.d", "dir"),
                                F("etc/ld.so.conf.d/conflib.conf", data=b"/opt/conflib\n"),
                                F("opt/conflib", "dir"), F("opt/conflib/libconf.so.1", data=elfs["libconf.so.1"]),
                                F("usr/lib/x86_64-linux-gnu", "dir"),
                                F("usr/lib/x86_64-linux-gnu/libw.so.1", data=elfs["libw32.so.1"]),
                                F("usr/lib/x86_64-linux-gnu/libgone.so.1", data=elfs["libgone.so.1"]),
                                F("opt/opq", "dir"), F("opt/opq/libopq.so.1", data=elfs["libopq.so.1"])),
                        "ADD os.tar /")
    system = LayerDef([F("opt/envlib", "dir"), F("opt/envlib/libenv.so.1", data=elfs["libenv.so.1"]),
                       F("usr/lib/x86_64-linux-gnu/libgone.so.1", "whiteout"), F("opt/opq", "opaque")],
                      "RUN apt-get install ...")
    b = f"{ROOT}/backends"
    install = LayerDef([
        F(ROOT, "dir"), F(f"{ROOT}/bin", "dir"), F(f"{ROOT}/bin/tritonserver", data=elfs["tritonserver"], mode=0o755),
        F(f"{ROOT}/lib", "dir"), F(f"{ROOT}/lib/libtritonserver.so", data=elfs["libtritonserver.so"]),
        F(f"{ROOT}/LICENSE", data=b"BSD\n"), F(f"{ROOT}/TRITON_VERSION", data=b"2.46.0\n"), F(b, "dir"),
        F(f"{b}/good", "dir"), F(f"{b}/good/libtriton_good.so", data=elfs["libtriton_good.so"]),
        F(f"{b}/good/libgood_dep.so.1.0", data=elfs["libgood_dep.so.1"]),
        F(f"{b}/good/libgood_dep.so.1", "symlink", target="libgood_dep.so.1.0"),
        F(f"{b}/bad", "dir"), F(f"{b}/bad/libtriton_bad.so", data=elfs["libtriton_bad.so"]),
        F(f"{b}/broken", "dir"), F(f"{b}/broken/libtriton_broken.so", data=elfs["libtriton_bad.so"][:300]),
        F(f"{ROOT}/repoagents", "dir"), F(f"{ROOT}/caches", "dir")], "COPY tritonserver /opt/tritonserver")
    later = LayerDef([F("usr/lib/x86_64-linux-gnu/libonlyfull.so.1", data=elfs["libonlyfull.so.1"])],
                     "RUN pip install ...")
    st = Store(layout)
    min_env = [stacks.ENV[0], "LD_LIBRARY_PATH=/opt/envlib"]
    st.refs["min"] = image(st, [os_layer], min_env, {}, "amd64", False)
    st.refs["full"] = image(st, [os_layer, system, install, later], [*stacks.ENV, "LD_LIBRARY_PATH=/opt/envlib"],
                            stacks.LABELS, "amd64", False)
    st.write_index()
    return layout


def _compose(pair: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("compose", "--no-enable-gpu", "--image", f"min,oci:{pair}:min", "--image", f"full,oci:{pair}:full",
                   "--work-dir", str(tmp), "--store-dir", str(tmp / "store"), *args)


BAD = f"/{ROOT}/backends/bad/libtriton_bad.so"


def test_compose_warns_by_default_naming_what_only_uncarried_layers_hold(pair: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    res = _compose(pair, tmp_path, "--backend", "good", "--backend", "bad", "--backend", "broken", "--json",
                   "--output-name", f"oci:{out}:x")
    took = time.monotonic() - started
    assert res.returncode == 0, res.stderr
    libs = json.loads(res.stdout)["libs"]
    missing = {(m["component"], m["file"], m["soname"]) for m in libs["missing"]}
    assert missing == {("backend bad", BAD, "libonlyfull.so.1"),  # only in full's later layer, not carried
                       ("backend bad", BAD, "libgone.so.1"),  # deleted by the carried system layer's whiteout
                       ("backend bad", BAD, "libopq.so.1"),  # hidden by its opaque directory
                       ("backend bad", BAD, "libw.so.1")}  # only a 32-bit one
    assert [(m["component"], m["file"]) for m in libs["malformed"]] == [
        ("backend broken", f"/{ROOT}/backends/broken/libtriton_broken.so")]
    # tritonserver, libtritonserver.so, the three backends' libraries and good's dependency
    assert libs["files_checked"] == 6
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 5, res.stderr
    assert f"warning: backend bad: 'libonlyfull.so.1' not found, needed by '{BAD}'" in warnings
    assert not any("backend good" in w or "triton core" in w for w in warnings)
    assert (out / "index.json").is_file()  # warn publishes
    print(f"compose with the check: {took:.2f} s, check {libs['seconds']:.3f} s, layers {libs['layers']}")

    # an unchanged re-run is a memo hit and repeats the remembered warnings
    again = _compose(pair, tmp_path, "--backend", "good", "--backend", "bad", "--backend", "broken",
                     "--output-name", f"oci:{out}:x")
    assert again.returncode == 0, again.stderr
    assert [w for w in again.stderr.splitlines() if w.startswith("warning: ")] == warnings
    # and with error, the remembered report fails the run before anything is tagged again
    strict = _compose(pair, tmp_path, "--backend", "good", "--backend", "bad", "--backend", "broken",
                      "--check-libs=error", "--output-name", f"oci:{out}:x")
    assert_one_line_error(strict, r"backend bad: 'libgone\.so\.1' not found", code=3)


def test_compose_check_libs_error_fails_with_one_line_and_tags_nothing(pair: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _compose(pair, tmp_path, "--backend", "good", "--backend", "bad", "--check-libs=error",
                   "--output-name", f"oci:{out}:x")
    assert_one_line_error(res, r"backend bad: 'libgone\.so\.1' not found.*'libonlyfull\.so\.1' not found", code=3,
                          untouched=[out])
    # the clean selection passes, every way of finding a library used through the composed image
    ok = _compose(pair, tmp_path, "--backend", "good", "--check-libs=error", "--json", "--output-name", f"oci:{out}:x")
    assert ok.returncode == 0, ok.stderr
    libs = json.loads(ok.stdout)["libs"]
    assert libs["ok"] and libs["files_checked"] == 4
    assert not any(w.startswith("warning") for w in ok.stderr.splitlines())
    off = _compose(pair, tmp_path, "--backend", "bad", "--check-libs=off", "--json", "--output-name", f"oci:{out}:y")
    assert off.returncode == 0 and json.loads(off.stdout)["libs"] is None and "warning" not in off.stderr


def test_check_libs_on_a_registry_image_reports_by_name(pair: Path, registry: Registry, tmp_path: Path) -> None:
    old = os.environ.get("DOCKER_CONFIG")
    try:
        refs = ngc.push(pair, ["full"], f"{registry.host}/libcheck")
    finally:
        if old is not None:
            os.environ["DOCKER_CONFIG"] = old
    store = tmp_path / "store"
    res = run_cli("check-libs", refs["full"], "--store-dir", str(store))
    assert res.returncode == 3, res.stderr
    # a Triton image: /opt/tritonserver is checked, against the whole image (libonlyfull is there)
    lines = res.stdout.splitlines()
    assert lines[:3] == [
        f"backend bad: 'libgone.so.1' not found, needed by '{BAD}'",
        f"backend bad: 'libopq.so.1' not found, needed by '{BAD}'",
        f"backend bad: 'libw.so.1' not found, needed by '{BAD}'; '/usr/lib/x86_64-linux-gnu/libw.so.1' is 32-bit 386, "
        "not 64-bit X86_64",
    ]
    assert len(lines) == 4
    assert lines[3].startswith(f"backend broken: '/{ROOT}/backends/broken/libtriton_broken.so' is not a readable ELF")
    assert "layers: 4 read" in res.stderr
    # again: every layer's file list, ELF headers and configs come from the store, none is read
    again = run_cli("check-libs", refs["full"], "--store-dir", str(store), "--json")
    assert again.returncode == 3
    doc = json.loads(again.stdout)
    assert doc["layers"] == {"index+record": 4} and len(doc["missing"]) == 3
    # a plugin counts on what an executable loads only when that executable is checked too
    alone = run_cli("check-libs", refs["full"], "--store-dir", str(store), "--path", f"/{ROOT}/backends/good")
    assert alone.returncode == 3 and alone.stdout.splitlines() == [
        f"backend good: 'libtritonserver.so' not found, needed by '/{ROOT}/backends/good/libtriton_good.so'"]
    clean = run_cli("check-libs", refs["full"], "--store-dir", str(store), "--path", f"/{ROOT}/backends/good",
                    "--path", f"/{ROOT}/bin")
    assert clean.returncode == 0 and clean.stdout == "", clean.stdout + clean.stderr
    assert "3 ELF files checked" in clean.stderr


def test_store_prune_drops_a_layers_record_with_its_blob(tmp_path: Path) -> None:
    from ociassemble.transport.store import Store

    st = Store(tmp_path / "store")
    hexd = "ab" * 32
    (st.blobs / hexd).write_bytes(b"blob")
    (st.root / "index" / f"{hexd}.json").write_text("{}")
    (st.root / "libcheck").mkdir()
    (st.root / "libcheck" / f"{hexd}.json").write_text("{}")
    assert st.prune(0) == (1, 4)
    assert not (st.root / "libcheck" / f"{hexd}.json").exists() and not (st.root / "index" / f"{hexd}.json").exists()


def test_the_real_triton_fixture_passes_clean(tmp_path: Path) -> None:
    """A real Triton build on a real Debian rootfs (fixtures/realtriton.py, built once per
    machine and shared with tests/test_serving.py): nothing it needs is reported missing."""
    from fixtures import realtriton

    built = realtriton.ensure()
    for tag in ("full", "cpu-full"):
        report = check_image(CheckOptions(ref=f"oci:{built.layout}:{tag}", store_dir=str(tmp_path / "store")))
        assert not report.failed, report.lines()
        assert report.scope == [f"/{ROOT}"] and report.files_checked >= 40  # tritonserver, its libraries, backends


def test_check_libs_no_index_reads_the_layers_whole(elfs: Elfs, tmp_path: Path) -> None:
    ref = _write(tmp_path, [_os(elfs), [F("opt/app/liba.so.1", data=elfs["liba.so.1"]),
                                        F("opt/app/libb.so.1", data=elfs["libb.so.1"])]])
    store = tmp_path / "store"
    index(IndexOptions(ref=ref, store_dir=str(store), work_dir=str(tmp_path)))
    with_index = check_image(CheckOptions(ref=ref, paths=["/opt/app"], store_dir=str(store)))
    res = run_cli("check-libs", ref, "--path", "/opt/app", "--store-dir", str(store), "--no-index",
                  "--json")
    assert res.returncode == 0, res.stderr
    without = json.loads(res.stdout)
    assert with_index.layers == {"layer index": 2}
    assert without["layers"] == {"read": 2} and without["files_checked"] == with_index.files_checked == 2
