"""The fidelity oracle: compose a stack, unpack full and result with umoci, compare trees.

The expected tree is computed from umoci's unpack of the *full* image, not from our own
merge code, so a shared misunderstanding cannot hide a bug. A selected path that is a
symlink (or passes through one) is resolved here the way ``COPY`` resolves its source,
inside the unpacked root as if it were ``/``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fixtures.stacks import ROOT, LayerDef, write_pair
from ociassemble.errors import OciAssembleError
from ociassemble.layers import layerindex
from ociassemble.presets.compose import ComposeOptions, ComposeResult, compose
from ociassemble.presets.index import IndexOptions, index
from tests.consumers import fingerprint, relocated, rootless_owner

CORE = ("bin", "lib", "include", "LICENSE", "TRITON_VERSION", "NVIDIA_Deep_Learning_Container_License.pdf")


def umoci_unpack(layout: Path, tag: str, dest: Path, convert: bool = False) -> Path:
    """umoci 0.4 reads neither zstd nor Docker media types: ``convert`` has skopeo
    rewrite the image as OCI + gzip first (the tree is unchanged by that)."""
    if convert:
        conv = dest.with_name(dest.name + "-oci")
        subprocess.run(["skopeo", "copy", "--quiet", "--format", "oci", "--dest-compress-format", "gzip",
                        f"oci:{layout}:{tag}", f"oci:{conv}:{tag}"], check=True, capture_output=True, timeout=300)
        layout = conv
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:{tag}", str(dest)], check=True,
                   capture_output=True, timeout=300)
    return dest / "rootfs"


def resolve_in_root(root: Path, path: str) -> str | None:
    """COPY's view of ``path``: symlinks followed inside ``root``, ``..`` stopping at ``/``."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in (".", ""):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        cand = root.joinpath(*done, part)
        if not os.path.lexists(cand):
            return None
        if cand.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(cand)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        if parts and not cand.is_dir():
            return None
        done.append(part)
    return "/".join(done)


@dataclass
class Outcome:
    backends: list[str]
    result: ComposeResult | None
    error: str
    full_root: Path
    out_root: Path | None
    min_root: Path


def run(tmp: Path, stack: list[LayerDef], backends: list[str] | Callable[[Path], list[str]],
        docker: bool = False, compression: str = "gzip", verify: bool = True) -> Outcome:
    """Compose ``backends`` (or what the callable picks, given full's unpacked root)."""
    layout = tmp / "in"
    write_pair(layout, stack, docker=docker)
    oracle = layout
    if docker:  # same layer blobs under OCI media types, which skopeo and umoci read from a layout
        oracle = tmp / "in-oci"
        write_pair(oracle, stack, docker=False)
    convert = any(ld.codec.startswith("zstd") for ld in stack)
    full_root = umoci_unpack(oracle, "full", tmp / "full", convert)
    min_root = umoci_unpack(oracle, "min", tmp / "min", convert)
    if callable(backends):
        backends = backends(full_root)
    out = tmp / "out"
    opts = ComposeOptions(backends=backends, images=[f"min,oci:{layout}:min", f"full,oci:{layout}:full"],
                          output_name=f"oci:{out}:img", work_dir=str(tmp / "work"), enable_gpu=False,
                          compression=compression, verify=verify)
    try:
        result = compose(opts)
    except OciAssembleError as e:
        return Outcome(backends, None, str(e), full_root, None, min_root)
    return Outcome(backends, result, "", full_root,
                   umoci_unpack(out, "img", tmp / "composed", compression.startswith("zstd")), min_root)


@dataclass
class Indexed:
    digest: str  # the manifest digest ("" when compose refused)
    error: str
    log: list[str]


def rerun_with_indexes(tmp: Path, o: Outcome, compression: str = "gzip",
                       spacing: int = layerindex.LEAST_SPACING) -> Indexed:
    """The same compose again from a fresh store holding ``ociassemble index``'s layer indexes
    of full, with access points every ``spacing`` bytes (zran's least: the stacks' layers are a
    few KiB, or some 80 KiB with a big file; the default 4 MiB would leave them without any), so
    bodies are read through the indexes' offsets and access points, not by scanning the layers."""
    layout, store, lines = tmp / "in", tmp / "store-indexed", []
    saved = layerindex.SPACING
    layerindex.SPACING = spacing
    try:
        index(IndexOptions(ref=f"oci:{layout}:full", work_dir=str(tmp / "work-index"), store_dir=str(store)))
        opts = ComposeOptions(backends=o.backends, images=[f"min,oci:{layout}:min", f"full,oci:{layout}:full"],
                              output_name=f"oci:{tmp / 'out-indexed'}:img", work_dir=str(tmp / "work-indexed"),
                              store_dir=str(store), enable_gpu=False, compression=compression,
                              log=lines.append)
        try:
            return Indexed(compose(opts).manifest_digest, "", lines)
        except OciAssembleError as e:
            return Indexed("", str(e), lines)
    finally:
        layerindex.SPACING = saved


def check_indexed(o: Outcome, again: Indexed) -> None:
    """With layer indexes, the very same image (or the same refusal), every layer of full's
    own decided through its index: none scanned."""
    if o.result is None:
        assert again.error == o.error, f"with indexes: {again.error!r}, without: {o.error!r}"
        return
    assert again.digest == o.result.manifest_digest, f"with indexes a different image: {again.error}"
    through = [m for m in again.log if "layer index" in m and m.startswith("full layer")]
    scanned = [m for m in again.log if m.startswith("read full layer")]
    assert through and not scanned, f"full's layers were not read through their indexes: {again.log}"


def expected(full_root: Path, backends: list[str]) -> dict[str, tuple] | None:  # type: ignore[type-arg]
    """What the composed /opt/tritonserver must hold, or None if compose must refuse."""
    want: dict[str, tuple] = {}  # type: ignore[type-arg]
    items = [(f"{ROOT}/{c}", c in ("bin", "lib")) for c in CORE]
    items += [(f"{ROOT}/backends/{b}", True) for b in backends]
    for path, required in items:
        real = resolve_in_root(full_root, path)
        if real is None:
            if required:
                return None
            continue
        want.update(relocated(fingerprint(full_root, real), real, path) if real != path
                    else fingerprint(full_root, path))
    return want


def selected(root: Path, backends: list[str]) -> dict[str, tuple]:  # type: ignore[type-arg]
    got: dict[str, tuple] = {}  # type: ignore[type-arg]
    for c in CORE:
        got.update(fingerprint(root, f"{ROOT}/{c}"))
    for b in backends:
        got.update(fingerprint(root, f"{ROOT}/backends/{b}"))
    return got


def outside(root: Path) -> dict[str, tuple]:  # type: ignore[type-arg]
    """Everything but /opt/tritonserver: must equal min's tree."""
    return {k: v for k, v in fingerprint(root).items() if k != ROOT and not k.startswith(ROOT + "/")}


def check(o: Outcome) -> None:
    """The rule of issue 3, asserted: selected trees equal full's, the rest equals min."""
    backends = o.backends
    want = expected(o.full_root, backends)
    if want is None:
        assert o.result is None, "compose succeeded although a required tree is missing in full"
        assert o.error
        return
    assert o.result is not None, f"compose failed: {o.error}"
    assert o.out_root is not None
    got = selected(o.out_root, backends)
    diff = {k: (want.get(k), got.get(k)) for k in set(want) | set(got) if want.get(k) != got.get(k)}
    assert not diff, f"composed tree differs from full's: {sorted(diff.items())[:8]}"
    top = sorted(os.listdir(o.out_root / ROOT / "backends")) if (o.out_root / ROOT / "backends").exists() else []
    assert top == sorted(backends)
    if backends:  # compose.py's chown leaves backends/ to triton-server, whatever full had
        assert rootless_owner(o.out_root / ROOT / "backends") == (1000, 1000)
    assert outside(o.out_root) == outside(o.min_root)
