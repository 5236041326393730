"""The bad-input catalogue, file-system side (issue 13, items 2, 6, 9, 10).

Each row of :data:`CASES` is one bad OS condition or layout/store state, made for real:
read-only and tiny (full) file systems are tmpfs mounts and read-only bind mounts (the
tests run as root, where ``chmod`` would not stop a write), unmounted after every test.
Each row names the one-line message (a regex) and the exit code, and is asserted with
:func:`tests.oneline.assert_one_line_error`: one ``error:`` line, no traceback, nothing
new at the destination; rows also say which existing files must keep their bytes.

The named tests below the table pin the behaviours that are not errors: concurrent
composes into one layout keep every tag (6), leftovers of killed runs are found and
removed while those of live runs stay (9), a damaged blob already in the output layout is
replaced, not trusted by its size (10).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.consumers import skopeo_inspect
from tests.oneline import assert_one_line_error

REPO = Path(__file__).resolve().parent.parent
REF_NAME = "org.opencontainers.image.ref.name"


# -- real mounts -----------------------------------------------------------------------------
class Mounts:
    """tmpfs and read-only bind mounts made for one test; all unmounted at its end."""

    def __init__(self) -> None:
        self.made: list[Path] = []

    def _mount(self, *args: str) -> None:
        res = subprocess.run(["mount", *args], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.fail(f"mount {' '.join(args)} failed: {res.stderr.strip()}")

    def tmpfs(self, path: Path, size: str = "1m", ro: bool = False) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        self._mount("-t", "tmpfs", "-o", f"size={size}" + (",ro" if ro else ""), "tmpfs", str(path))
        self.made.append(path)
        return path

    def read_only(self, path: Path) -> Path:
        """``path`` (a folder with content) made read-only in place by a bind mount."""
        self._mount("--bind", str(path), str(path))
        self.made.append(path)
        self._mount("-o", "remount,bind,ro", str(path))
        return path

    def close(self) -> None:
        for p in reversed(self.made):
            subprocess.run(["umount", "-l", str(p)], capture_output=True)
        self.made.clear()


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    if os.geteuid() != 0:
        pytest.skip("making read-only and full file systems needs root (mount); CI runs as root")
    m = Mounts()
    try:
        yield m
    finally:
        m.close()


# -- the table ---------------------------------------------------------------------------------
@dataclass
class Case:
    args: list[str]
    pattern: str
    code: int = 1
    untouched: list[Path] = field(default_factory=list)  # must not exist afterwards
    unchanged: list[Path] = field(default_factory=list)  # must keep their bytes
    stdin: str | None = None
    secrets: list[str] = field(default_factory=list)
    after: Callable[[], None] | None = None


@dataclass
class Env:
    tmp: Path
    fx: Path
    mounts: Mounts
    request: pytest.FixtureRequest

    def compose(self, out: str, *, work: Path | None = None, store: Path | None = None,
                backends: tuple[str, ...] = ("identity",), images: tuple[str, str] | None = None) -> list[str]:
        work = work or self.tmp / "work"
        if not work.exists():
            work.mkdir(parents=True)
        mn, full = images or (f"oci:{self.fx}:min", f"oci:{self.fx}:full")
        args = ["compose", "--image", f"min,{mn}", "--image", f"full,{full}", "--output-name", out,
                "--work-dir", str(work)]
        for b in backends:
            args += ["--backend", b]
        if store is not None:
            args += ["--store-dir", str(store)]
        return args

    def layout_with_tag(self, path: Path, tag: str = "a") -> Path:
        res = run_cli(*self.compose(f"oci:{path}:{tag}"))
        assert res.returncode == 0, res.stderr
        return path


def no_parts(root: Path) -> Callable[[], None]:
    def check() -> None:
        left = [p for p in root.rglob(".part-*")] if root.exists() else []
        assert not left, left
    return check


def no_scratch(work: Path) -> Callable[[], None]:
    def check() -> None:
        left = [p.name for p in work.iterdir() if p.name.startswith("ociassemble-")]
        assert not left, left
    return check


def _output_is_file(e: Env) -> Case:
    f = e.tmp / "file"
    f.write_bytes(b"not a layout")
    return Case(e.compose(f"oci:{f}:x"),
                r"^error: output layout \S+/file: \S+/file is a file, not a directory; choose another --output-name$",
                unchanged=[f])


def _output_below_file(e: Env) -> Case:
    f = e.tmp / "file"
    f.write_bytes(b"not a layout")
    return Case(e.compose(f"oci:{f}/sub:x"),
                r"^error: output layout \S+/file/sub: \S+/file is a file, not a directory; choose another "
                r"--output-name$",
                unchanged=[f])


def _output_read_only_new(e: Env) -> Case:
    ro = e.mounts.tmpfs(e.tmp / "ro", ro=True)
    return Case(e.compose(f"oci:{ro}/out:x"),
                r"^error: output layout \S+/ro/out: read-only file system; choose another --output-name on a "
                r"writable file system$", untouched=[ro / "out"])


def _output_read_only_existing(e: Env) -> Case:
    lay = e.layout_with_tag(e.tmp / "lay")
    e.mounts.read_only(lay)
    return Case(e.compose(f"oci:{lay}:b", backends=("python",)),
                r"^error: output layout \S+/lay: read-only file system; choose another --output-name",
                unchanged=[lay / "index.json", lay / "oci-layout"])


def _output_full_new(e: Env) -> Case:
    full = e.mounts.tmpfs(e.tmp / "full", size="64k")
    return Case(e.compose(f"oci:{full}/out:x"),
                r"^error: output layout \S+/full/out: no space left on device \(at blobs/sha256\); free space there "
                r"or choose another --output-name$", untouched=[full / "out"])


def _output_full_existing(e: Env) -> Case:
    full = e.mounts.tmpfs(e.tmp / "full", size="1200k")
    lay = e.layout_with_tag(full / "lay")
    fd = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)  # the rest of the file system
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)

    def after() -> None:
        no_parts(lay)()
        skopeo_inspect(f"oci:{lay}:a")  # the tag that was there still is, whole
    return Case(e.compose(f"oci:{lay}:b", backends=("pytorch", "python")),
                r"^error: output layout \S+/lay: no space left on device \(at blobs/sha256\); free space there or "
                r"choose another --output-name$", unchanged=[lay / "index.json"], after=after)


def _output_not_a_layout(e: Env) -> Case:
    d = e.tmp / "docs"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    return Case(e.compose(f"oci:{d}:x"), r"^error: \S+/docs exists and is not an OCI image layout .*notes\.txt",
                unchanged=[d / "notes.txt"], untouched=[d / "blobs", d / "index.json"])


def _output_index_not_json(e: Env) -> Case:
    lay = e.layout_with_tag(e.tmp / "lay")
    (lay / "index.json").write_text("{broken")
    return Case(e.compose(f"oci:{lay}:b", backends=("python",)), r"index\.json is not valid JSON",
                unchanged=[lay / "index.json"])


def _output_blobs_is_a_file(e: Env) -> Case:
    lay = e.layout_with_tag(e.tmp / "lay")
    shutil.rmtree(lay / "blobs")
    (lay / "blobs").write_bytes(b"damaged layout")
    return Case(e.compose(f"oci:{lay}:b", backends=("python",)),
                r"^error: output layout \S+/lay: \S+/lay/blobs is a file, not a directory; choose another "
                r"--output-name$", unchanged=[lay / "index.json", lay / "blobs"])


def _output_index_is_a_directory(e: Env) -> Case:
    lay = e.layout_with_tag(e.tmp / "lay")
    (lay / "index.json").unlink()
    (lay / "index.json").mkdir()
    return Case(e.compose(f"oci:{lay}:b", backends=("python",)),
                r"^error: output layout \S+/lay: is a directory, not a file \(at index\.json\); choose another "
                r"--output-name$", untouched=[lay / "index.json" / "x"])


def _output_index_not_an_index(e: Env) -> Case:
    lay = e.layout_with_tag(e.tmp / "lay")
    (lay / "index.json").write_text('[{"manifests": 1}]')
    return Case(e.compose(f"oci:{lay}:b", backends=("python",)),
                r"index\.json is not an OCI image index \(no list of manifests\)", unchanged=[lay / "index.json"])


def _output_name_too_long(e: Env) -> Case:
    long = e.tmp / ("x" * 300)

    def after() -> None:
        assert not [p for p in e.tmp.iterdir() if p.name.startswith("x")]
    return Case(e.compose(f"oci:{long}:t"),
                r"^error: output layout \S+: file name too long; choose another --output-name$", after=after)


def _work_read_only(e: Env) -> Case:
    ro = e.mounts.tmpfs(e.tmp / "ro", ro=True)
    return Case(e.compose(f"oci:{e.tmp}/out:x", work=ro),
                r"^error: work dir \S+/ro: read-only file system.*; pass another --work-dir on a writable file system$",
                untouched=[e.tmp / "out"])


def _work_is_file(e: Env) -> Case:
    f = e.tmp / "file"
    f.write_bytes(b"x")
    return Case(e.compose(f"oci:{e.tmp}/out:x", work=f),
                r"^error: work dir \S+/file: \S+/file is a file, not a directory; pass another --work-dir$",
                untouched=[e.tmp / "out"], unchanged=[f])


def _work_full(e: Env) -> Case:
    full = e.mounts.tmpfs(e.tmp / "full", size="16k")
    return Case(e.compose(f"oci:{e.tmp}/out:x", work=full, backends=("pytorch", "python")),
                r"^error: work dir \S+/full: no space left on device.*; free space there or pass another --work-dir$",
                untouched=[e.tmp / "out"], after=no_scratch(full))


def _store_read_only(e: Env) -> Case:
    ro = e.mounts.tmpfs(e.tmp / "ro", ro=True)
    return Case(e.compose(f"oci:{e.tmp}/out:x", store=ro),
                r"^error: store \S+/ro: read-only file system( \(at blobs\S*\))?; pass another --store-dir on a "
                r"writable file system "
                r"\(or --no-store\)$", untouched=[e.tmp / "out"])


def _store_is_file(e: Env) -> Case:
    f = e.tmp / "file"
    f.write_bytes(b"x")
    return Case(e.compose(f"oci:{e.tmp}/out:x", store=f),
                r"^error: store \S+/file: \S+/file is a file, not a directory; pass another --store-dir "
                r"\(or --no-store\)$", untouched=[e.tmp / "out"], unchanged=[f])


def _store_full_indexes(e: Env) -> Case:
    """Layout sources: the store takes only layer indexes, and even those do not fit."""
    full = e.mounts.tmpfs(e.tmp / "full", size="8k")
    return Case(e.compose(f"oci:{e.tmp}/out:x", store=full / "st"),
                r"^error: store \S+/full/st: no space left on device \(at index/\S+\.json\); free space there or pass "
                r"another --store-dir \(or --no-store\)$", untouched=[e.tmp / "out"], after=no_parts(full))


def _store_full_blobs(e: Env) -> Case:
    """Registry sources: the blobs streaming into the store fill it."""
    pushed = e.request.getfixturevalue("pushed")
    full = e.mounts.tmpfs(e.tmp / "full", size="200k")
    return Case(e.compose(f"oci:{e.tmp}/out:x", store=full / "st", images=(pushed["min"], pushed["full"])),
                r"^error: store \S+/full/st: no space left on device \(at (blobs/sha256|index/\S+)\); free space there "
                r"or pass another --store-dir \(or --no-store\)$", untouched=[e.tmp / "out"], after=no_parts(full))


def _store_info_file(e: Env) -> Case:
    f = e.tmp / "file"
    f.write_bytes(b"x")
    return Case(["store", "info", "--store-dir", str(f)],
                r"^error: store \S+/file: \S+/file is a file, not a directory", unchanged=[f])


def _store_prune_file(e: Env) -> Case:
    f = e.tmp / "file"
    f.write_bytes(b"x")
    return Case(["store", "prune", "--store-dir", str(f)],
                r"^error: store \S+/file: \S+/file is a file, not a directory", unchanged=[f])


def _login_authfile_read_only(e: Env) -> Case:
    registry = e.request.getfixturevalue("registry")
    ro = e.mounts.tmpfs(e.tmp / "ro", ro=True)
    return Case(["login", registry.host, "-u", "someone", "--password-stdin", "--authfile", f"{ro}/auth.json"],
                r"^error: auth file \S+/ro/auth\.json: read-only file system; pass another --authfile on a writable "
                r"file system$", stdin="Sekr3t-pw\n", secrets=["Sekr3t-pw"], untouched=[ro / "auth.json"])


CASES: dict[str, Callable[[Env], Case]] = {
    "output-is-a-file": _output_is_file,
    "output-below-a-file": _output_below_file,
    "output-read-only-new": _output_read_only_new,
    "output-read-only-existing-layout": _output_read_only_existing,
    "output-disk-full-new": _output_full_new,
    "output-disk-full-existing-layout": _output_full_existing,
    "output-dir-not-a-layout": _output_not_a_layout,
    "output-index-not-json": _output_index_not_json,
    "output-index-not-an-index": _output_index_not_an_index,
    "output-name-too-long": _output_name_too_long,
    "output-blobs-is-a-file": _output_blobs_is_a_file,
    "output-index-json-is-a-directory": _output_index_is_a_directory,
    "work-dir-read-only": _work_read_only,
    "work-dir-is-a-file": _work_is_file,
    "work-dir-disk-full": _work_full,
    "store-read-only": _store_read_only,
    "store-is-a-file": _store_is_file,
    "store-disk-full-indexes": _store_full_indexes,
    "store-disk-full-blobs": _store_full_blobs,
    "store-info-store-is-a-file": _store_info_file,
    "store-prune-store-is-a-file": _store_prune_file,
    "login-authfile-read-only": _login_authfile_read_only,
}


@pytest.mark.parametrize("name", list(CASES))
def test_os_condition_is_one_line(name: str, oci_layout: Path, tmp_path: Path, mounts: Mounts,
                                  request: pytest.FixtureRequest) -> None:
    case = CASES[name](Env(tmp_path, oci_layout, mounts, request))
    before = {p: p.read_bytes() for p in case.unchanged}
    res = run_cli(*case.args, stdin=case.stdin)
    assert_one_line_error(res, case.pattern, code=case.code, secrets=case.secrets, untouched=case.untouched)
    for p, data in before.items():
        assert p.read_bytes() == data, f"{p} changed"
    if case.after is not None:
        case.after()


# -- item 6: concurrent composes into one layout -----------------------------------------------
def _tags(layout: Path) -> set[str]:
    return {m["annotations"][REF_NAME] for m in json.loads((layout / "index.json").read_text())["manifests"]}


def test_concurrent_composes_into_one_layout_keep_every_tag(oci_layout: Path, tmp_path: Path) -> None:
    """Four composes at once with different tags into one layout, new (racing to create it)
    and existing: every run succeeds, every tag is there and whole. (The race on index.json
    itself is narrow at this pace, about 1 in 15 rounds before the lock; the test below
    hammers it.)"""
    env = Env(tmp_path, oci_layout, Mounts(), None)  # type: ignore[arg-type]
    base = dict(os.environ)
    for rnd in range(2):
        lay = tmp_path / f"lay{rnd}"
        if rnd % 2:
            env.layout_with_tag(lay, "first")
        procs = []
        for i in range(4):
            args = env.compose(f"oci:{lay}:t{i}", work=tmp_path / f"w{rnd}-{i}")
            procs.append(subprocess.Popen([sys.executable, "-m", "ociassemble", *args, "-q"], env=base, cwd=REPO,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for p in procs:
            _out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
        want = {f"t{i}" for i in range(4)} | ({"first"} if rnd % 2 else set())
        assert _tags(lay) == want
        for t in want:
            skopeo_inspect(f"oci:{lay}:{t}")


_HAMMER = r"""
import sys
from pathlib import Path
from ociassemble.oci.reference import LayoutRef
from ociassemble.transport.sink import LayoutSink
root, worker, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    tag = f"w{worker}-{i}"
    sink = LayoutSink(LayoutRef(str(root), tag))
    sink.put_manifest(('{"schemaVersion":2,"tag":"%s"}' % tag).encode(), "application/vnd.oci.image.manifest.v1+json")
    sink.close()
"""


def test_many_processes_updating_one_index_lose_no_tag(tmp_path: Path) -> None:
    """The index.json read-modify-write itself, hammered by six processes that also race to
    create the layout. Without the lock (the code before issue 13) one round keeps about 50
    of the 120 tags, and some processes fail outright."""
    workers, each = 6, 20
    root = tmp_path / "lay"
    procs = [subprocess.Popen([sys.executable, "-c", _HAMMER, str(root), str(w), str(each)], cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for w in range(workers)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    assert _tags(root) == {f"w{w}-{i}" for w in range(workers) for i in range(each)}
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert not list(root.rglob(".part-*"))


# -- item 9: leftovers of killed runs ------------------------------------------------------------
_HOLDER = r"""
import sys, time
from pathlib import Path
from ociassemble.transport.atomic import part_file, scratch_dir
kind, where = sys.argv[1], Path(sys.argv[2])
cm = part_file(where) if kind == "part" else scratch_dir(where)
with cm as got:
    if kind == "part":
        import os
        os.write(got[0], b"half a blob")
        print(got[1], flush=True)
    else:
        (got / "spool").mkdir()
        (got / "spool" / "body").write_bytes(b"x" * 1000)
        print(got, flush=True)
    time.sleep(600)
"""


class Holder:
    """A real process holding a part file or scratch folder, as compose does; ``kill()``
    leaves it behind exactly as a SIGKILLed compose would."""

    def __init__(self, kind: str, where: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, kind, str(where)], cwd=REPO,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.path = Path(self.proc.stdout.readline().strip())
        assert self.path.exists()

    def kill(self) -> Path:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return self.path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()


def test_leftovers_of_killed_runs_are_shown_and_removed_live_ones_kept(oci_layout: Path, tmp_path: Path) -> None:
    store, work, lay = tmp_path / "store", tmp_path / "work", tmp_path / "lay"
    env = Env(tmp_path, oci_layout, Mounts(), None)  # type: ignore[arg-type]
    env.layout_with_tag(lay)
    first = run_cli("store", "info", "--store-dir", str(store))  # makes nothing
    assert first.returncode == 0, first.stderr
    for d in (store / "blobs" / "sha256", store / "index", work):
        d.mkdir(parents=True, exist_ok=True)
    holders = []
    try:
        dead_store = [Holder("part", store / "blobs" / "sha256").kill(), Holder("part", store / "index").kill()]
        live_store = Holder("part", store / "blobs" / "sha256")
        dead_scratch = Holder("scratch", work).kill()
        live_scratch = Holder("scratch", work)
        dead_out = Holder("part", lay / "blobs" / "sha256").kill()
        live_out = Holder("part", lay / "blobs" / "sha256")
        holders = [live_store, live_scratch, live_out]
        mine = [work / "ociassemble-notmine1", work / "ociassemble-abcdefgh"]  # a user's folders
        for m in mine:
            m.mkdir()
            (m / "keep.txt").write_text("mine")

        info = run_cli("store", "info", "--store-dir", str(store))
        assert info.returncode == 0, info.stderr
        assert "2 partial files left by killed runs (22 bytes)" in info.stdout, info.stdout
        assert all(p.exists() for p in dead_store)  # info shows, never removes

        pruned = run_cli("store", "prune", "--store-dir", str(store), "--max-size", "50G")
        assert pruned.returncode == 0, pruned.stderr
        assert "2 partial files left by killed runs" in pruned.stdout, pruned.stdout
        assert not any(p.exists() for p in dead_store)
        assert live_store.path.exists()

        res = run_cli(*env.compose(f"oci:{lay}:b", work=work, store=store))
        assert res.returncode == 0, res.stderr
        assert not dead_scratch.exists() and not dead_out.exists()
        assert live_scratch.path.exists() and live_out.path.exists()
        assert all((m / "keep.txt").exists() for m in mine)
        assert _tags(lay) == {"a", "b"}
    finally:
        for h in holders:
            h.stop()
    # once their processes are gone they are leftovers too
    assert run_cli("store", "prune", "--store-dir", str(store), "--max-size", "50G").returncode == 0
    assert not live_store.path.exists()
    assert run_cli(*env.compose(f"oci:{lay}:c", work=work, store=store)).returncode == 0
    assert not live_scratch.path.exists() and not live_out.path.exists()


def test_killed_run_leaves_a_layout_the_next_run_completes(oci_layout: Path, tmp_path: Path) -> None:
    """A new layout whose first run died after its first blobs (no oci-layout, no index.json
    yet) is not "not an OCI image layout" to the next run."""
    lay = tmp_path / "lay"
    (lay / "blobs" / "sha256").mkdir(parents=True)
    Holder("part", lay / "blobs" / "sha256").kill()
    env = Env(tmp_path, oci_layout, Mounts(), None)  # type: ignore[arg-type]
    res = run_cli(*env.compose(f"oci:{lay}:x"))
    assert res.returncode == 0, res.stderr
    assert _tags(lay) == {"x"} and not list(lay.rglob(".part-*"))


# -- item 10: damaged blobs in the output layout ---------------------------------------------------
def test_damaged_blob_in_output_layout_is_replaced(oci_layout: Path, tmp_path: Path) -> None:
    lay = tmp_path / "lay"
    env = Env(tmp_path, oci_layout, Mounts(), None)  # type: ignore[arg-type]
    env.layout_with_tag(lay)
    manifest = skopeo_inspect(f"oci:{lay}:a", raw=True)
    victim = lay / "blobs" / "sha256" / manifest["layers"][0]["digest"][7:]  # a min layer
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))  # same size, one bit off
    res = run_cli(*env.compose(f"oci:{lay}:b", backends=("python",)), "--verify", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["stats"]["repaired"] == 1
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == victim.name
    for tag in ("a", "b"):  # umoci checks every layer's gzip stream and diff_id
        out = tmp_path / f"u-{tag}"
        done = subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{lay}:{tag}", str(out)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert not list(lay.rglob(".part-*"))


def test_store_info_on_a_read_only_store_reads_it(oci_layout: Path, tmp_path: Path, mounts: Mounts) -> None:
    """Reading a store needs no write access: info works on a read-only one."""
    store = tmp_path / "store"
    env = Env(tmp_path, oci_layout, mounts, None)  # type: ignore[arg-type]
    assert run_cli(*env.compose(f"oci:{tmp_path}/o:x", store=store)).returncode == 0
    mounts.read_only(store)
    info = run_cli("store", "info", "--store-dir", str(store))
    assert info.returncode == 0 and "layer indexes" in info.stdout, info.stderr
