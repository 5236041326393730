"""Differential test: random layer stacks, composed, against umoci's view of the full image.

Hypothesis generates stacks of layers over a small path alphabet below /opt/tritonserver
(files, directories, symlinks, hardlinks, whiteouts, opaque directories, with modes,
owners, xattrs and mtimes), a random backend selection, and checks issue 3's rule with
:func:`tests.fidelity.check`. Stacks are valid by construction (no entry beneath a
symlink, hardlinks only to files that exist), because hostile stacks have tests of their own.
A third of the examples (drawn) are composed a second time from a fresh store holding the
layer indexes of full (``ociassemble index``): the very same manifest digest (or the same
refusal) must come out, with every layer of full's read through its index.

CI runs 200 examples, derandomised. For more, with fresh random seeds:

    OCIASSEMBLE_DIFF_EXAMPLES=2000 python3 -m pytest -q tests/test_differential.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.stacks import BACKENDS, ROOT, F, LayerDef
from tests import fidelity

EXAMPLES = int(os.environ.get("OCIASSEMBLE_DIFF_EXAMPLES", "0") or 0)
TOPS = ("backends/a", "backends/b", "backends/c", "backends/d", "lib")
D = f"{ROOT}/backends/d"  # made only by random ops or by a layer written as compose writes one
NAMES = ("x", "y", "z")
BIG = bytes(range(256)) * 320  # a layer past one access point of its index (below)
TARGETS = ("x", "y", "../y", "x/y", "/opt/tritonserver/backends/b", "../../lib", "../b", "missing", "../a/x")

paths = st.builds(lambda top, rest: "/".join([ROOT, top, *rest]), st.sampled_from(TOPS),
                  st.lists(st.sampled_from(NAMES), max_size=2))
attrs = st.fixed_dictionaries({
    "mode": st.sampled_from([0o644, 0o755, 0o600, 0o4755, 0o2750]),
    "uid": st.sampled_from([0, 0, 1000, 3000]),
    "gid": st.sampled_from([0, 1000]),
    "mtime": st.sampled_from([1716163200, 1600000000, 1716163201]),
})
ops = st.one_of(
    st.tuples(st.just("file"), paths, attrs, st.sampled_from([b"", b"one\n", b"two\n", b"\0" * 700, BIG]),
              st.booleans()),
    st.tuples(st.just("dir"), paths, attrs),
    st.tuples(st.just("symlink"), paths, st.sampled_from(TARGETS)),
    st.tuples(st.just("hardlink"), paths, st.integers(0, 63)),  # target: the n-th existing file
    st.tuples(st.just("whiteout"), paths),
    st.tuples(st.just("opaque"), paths, attrs),
    st.tuples(st.just("top-symlink"), st.sampled_from(BACKENDS), st.sampled_from(["b", "/opt/tritonserver/lib",
                                                                                  "../backends/c", "a"])),
)
# one layer in six is backend d exactly as compose writes its layer, which compose then
# passes through unless another layer changes d
compose_layer = st.tuples(st.just("compose-layer"), st.lists(st.sampled_from(NAMES), unique=True, max_size=3),
                          st.sampled_from([b"", b"one\n"]), st.sampled_from([1000, 1000, 0]))
layers = st.tuples(st.integers(0, 5), st.lists(ops, min_size=1, max_size=8), compose_layer).map(
    lambda t: [t[2]] if t[0] == 0 else t[1])
stacks = st.lists(layers, min_size=1, max_size=4)


class _Model:
    """Just enough of a merged filesystem to keep generated stacks valid."""

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {ROOT: "dir", f"{ROOT}/bin": "dir", f"{ROOT}/bin/tritonserver": "file",
                                      f"{ROOT}/lib": "dir", f"{ROOT}/lib/libtritonserver.so": "file",
                                      f"{ROOT}/backends": "dir"}
        for b in BACKENDS:
            self.kinds[f"{ROOT}/backends/{b}"] = "dir"
            self.kinds[f"{ROOT}/backends/{b}/libtriton_{b}.so"] = "file"

    def parents_ok(self, path: str) -> bool:
        parts = path.split("/")
        return all(self.kinds.get("/".join(parts[:i]), "dir") == "dir" for i in range(1, len(parts)))

    def drop(self, path: str) -> None:
        for k in [k for k in self.kinds if k == path or k.startswith(path + "/")]:
            del self.kinds[k]

    def put(self, path: str, kind: str) -> list[F]:
        """Record ``path``; return the parent directories the layer must write first.

        Image builders always write a new path's missing parents into the layer; what an
        unpacker does with a missing parent differs between runtimes, so it is not drawn.
        """
        if kind != "dir" or self.kinds.get(path) != "dir":
            self.drop(path)
        parts = path.split("/")
        made = []
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in self.kinds:
                self.kinds[parent] = "dir"
                made.append(F(parent, "dir"))
        self.kinds[path] = kind
        return made


def build_stack(layers: list[list[tuple]]) -> list[LayerDef]:  # type: ignore[type-arg]
    model = _Model()
    out = []
    for n, layer in enumerate(layers):
        whole = next((op for op in layer if op[0] == "compose-layer"), None)
        if whole is not None and model.parents_ok(D):
            out.append(LayerDef(_compose_layer(model, *whole[1:]), f"layer {n} as compose writes d"))
            continue
        # deletions first, as image builders write them: they act on the layers below
        front: list[F] = []
        rest: list[F] = []
        for op in sorted(layer, key=lambda o: {"whiteout": 0, "opaque": 1}.get(o[0], 2)):
            kind = op[0]
            if kind == "top-symlink":
                path = f"{ROOT}/backends/{op[1]}"
                rest += model.put(path, "symlink")
                rest.append(F(path, "symlink", target=op[2]))
                continue
            path = op[1]
            if not model.parents_ok(path):
                continue
            if kind == "whiteout":
                model.drop(path)
                front.append(F(path, "whiteout"))
            elif kind == "opaque":
                if model.kinds.get(path) not in (None, "dir"):
                    continue
                model.drop(path)
                front += [*model.put(path, "dir"), F(path, "dir", **_own(op[2])), F(path, "opaque")]
            elif kind == "file":
                rest += model.put(path, "file")
                xattrs = {"user.fixture": f"v{n}"} if op[4] else {}
                rest.append(F(path, data=op[3], xattrs=xattrs, **op[2]))
            elif kind == "dir":
                rest += model.put(path, "dir")
                rest.append(F(path, "dir", **_own(op[2])))
            elif kind == "symlink":
                rest += model.put(path, "symlink")
                rest.append(F(path, "symlink", target=op[2]))
            elif kind == "hardlink":
                files = sorted(k for k, v in model.kinds.items() if v == "file")
                target = files[op[2] % len(files)] if files else ""
                if (target == path or target.startswith(path + "/") or model.kinds.get(target) != "file"
                        or not model.parents_ok(target)):
                    continue
                rest += model.put(path, "file")
                rest.append(F(path, "hardlink", target=target))
        # a whiteout below what this same layer makes a non-directory is malformed: drop it
        front = [f for f in front if f.kind != "whiteout" or model.parents_ok(f.path)]
        if front or rest:
            out.append(LayerDef(front + rest, f"random layer {n}"))
    return out


def _compose_layer(model: _Model, names: list[str], data: bytes, owner: int) -> list[F]:
    """``backends/`` as compose's own directory (triton-server's, the image's created time,
    no owner names; or root's, a near miss), then d and its files, without owner names."""
    files = [F(f"{ROOT}/backends", "dir", uid=owner, gid=owner, uname="")]
    model.put(D, "dir")
    files.append(F(D, "dir", uname=""))
    for name in names:
        model.put(f"{D}/{name}", "file")
        files.append(F(f"{D}/{name}", data=data, uname=""))
    return files


def _own(a: dict[str, int]) -> dict[str, int]:
    return {**a, "mode": a["mode"] | 0o700}  # a directory its owner cannot enter would not unpack rootless


def _available(full_root: Path) -> set[str]:
    d = full_root / ROOT / "backends"
    return {b for b in (*BACKENDS, "d") if (d / b).is_symlink() or (d / b).is_dir()}


@pytest.mark.timeout(0 if EXAMPLES else 300)  # an on-demand run takes as long as it takes
@settings(max_examples=EXAMPLES or 200, derandomize=not EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stack=stacks, tail=st.one_of(st.none(), compose_layer),
       pick=st.lists(st.sampled_from((*BACKENDS, "d", "d")), unique=True),
       indexed=st.sampled_from((True, False, False)))
def test_random_stacks_compose_like_full(stack: list[list[tuple]], tail: tuple | None,  # type: ignore[type-arg]
                                         pick: list[str], indexed: bool) -> None:
    layers = build_stack([*stack, [tail]] if tail is not None else stack)
    with tempfile.TemporaryDirectory(prefix="ociassemble-diff-") as tmp:
        outcome = fidelity.run(Path(tmp), layers, lambda full_root: sorted(set(pick) & _available(full_root)))
        fidelity.check(outcome)
        if indexed:  # the same stack from a fresh store holding layer indexes (issue 16): the same image
            fidelity.check_indexed(outcome, fidelity.rerun_with_indexes(Path(tmp), outcome))
