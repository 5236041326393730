"""``ociassemble check-libs REF``: the shared-library check of :mod:`ociassemble.libcheck`
run on any image, with Triton's defaults (check /opt/tritonserver of a Triton image, name
findings by component) when the image is one.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ociassemble.engine.indexes import discover
from ociassemble.engine.libcheck import (
    LayerInput,
    LibReport,
    Log,
    analyse_reading,
    gather,
    layer_notes,
    merged,
    shown,
    tally,
)
from ociassemble.engine.run import client_options
from ociassemble.errors import NotFound, UsageError
from ociassemble.layers.tarscan import normalise
from ociassemble.layers.tree import Node, Tree, at_or_under, resolve
from ociassemble.oci.model import Platform
from ociassemble.oci.reference import parse_reference
from ociassemble.presets.triton import KINDS, ROOT
from ociassemble.progress import Progress
from ociassemble.transport.registry.credentials import CredentialOptions
from ociassemble.transport.source import resolve_image
from ociassemble.transport.store import DEFAULT_MAX_BYTES, Store, StoreSource, default_store_dir
from ociassemble.transport.table import open_source


@dataclass
class CheckOptions:
    ref: str
    platform: str | None = None
    paths: list[str] = field(default_factory=list)  # default: see default_scope
    jobs: int = 0
    tls_verify: bool = True
    cert_dir: str | None = None
    creds: str | None = None
    authfile: str | None = None
    timeout: float | None = None
    store_dir: str | None = None
    no_store: bool = False
    store_max_bytes: int = DEFAULT_MAX_BYTES
    use_indexes: bool = True  # layer indexes published beside the image, and eStargz TOCs
    progress: Progress | None = None
    log: Log = lambda _m: None


def default_scope(config: dict[str, Any]) -> tuple[str, ...]:
    """/opt/tritonserver for a Triton image (by its config), else the whole image: in a
    Triton image the rest is the OS and CUDA, whose libraries their packages vouch for."""
    inner = config.get("config") or {}
    env = {str(e).partition("=")[0] for e in inner.get("Env") or []}
    labels = inner.get("Labels") or {}
    triton = "TRITON_SERVER_VERSION" in env or "com.nvidia.tritonserver.version" in labels
    return (ROOT,) if triton else ("",)


def component_of(path: str, scope: tuple[str, ...]) -> str:
    """Triton's components by their directories (as compose names its layers), else the
    narrowest checked prefix."""
    if at_or_under(path, ROOT) and path != ROOT:
        parts = path[len(ROOT) + 1:].split("/")
        for kind, kdir in KINDS:
            if parts[0] == kdir and len(parts) > 2:
                return f"{kind} {parts[1]}"
        return "triton core"
    best = max((p for p in scope if at_or_under(path, p)), key=len, default="")
    return "/" + best if best else "image"


def check_image(opts: CheckOptions) -> LibReport:
    """``ociassemble check-libs``: the ELF files under the checked prefixes of one image
    against the whole image."""
    started = time.monotonic()
    client = client_options(opts.tls_verify, opts.cert_dir, opts.timeout)
    platform = Platform.parse(opts.platform) if opts.platform else None
    src = open_source(parse_reference(opts.ref), options=client, creds=CredentialOptions(opts.creds, opts.authfile))
    store = None
    if not opts.no_store:
        root = Path(opts.store_dir) if opts.store_dir else default_store_dir()
        try:
            store = Store(root, opts.store_max_bytes)
        except OSError as e:
            raise UsageError(f"cannot use the store at {root} ({e.strerror}); pass --store-dir DIR or --no-store") \
                from None
    kept = StoreSource(src, store) if store is not None else src
    if not opts.use_indexes:
        if isinstance(kept, StoreSource):
            kept.index_origins = None
        else:
            kept.uses_indexes = False
    image = resolve_image("checked", kept, platform)
    config = image.config.data
    scope = tuple(dict.fromkeys(normalise(p, "--path") for p in opts.paths)) if opts.paths else default_scope(config)
    jobs = opts.jobs or 2
    layers = [LayerInput(f"layer {i} ({d.digest[:19]})", d.size, image, i, checked=scope)
              for i, d in enumerate(image.manifest.layers)]

    def checked(tree: Tree) -> Iterator[tuple[Node, str]]:
        seen: set[str] = set()
        for prefix in scope:
            real = resolve(tree, prefix) if prefix else ""
            top = tree.get(real) if real is not None else None
            if top is None:
                continue
            for node in tree.walk(top):
                if node.inode is not None and node.path not in seen:
                    seen.add(node.path)
                    yield node, component_of(node.path, scope)

    if store is not None and opts.use_indexes:  # indexes published beside it: files read only as looked up
        with contextlib.suppress(NotFound):  # an artifact listed but gone: the layers are read instead
            discover(store, image, opts.log)
    tmp = Path(tempfile.mkdtemp(prefix="ociassemble-libcheck-"))
    try:
        facts = gather(layers, store, tmp, jobs, opts.log, opts.progress)
        tree = merged(facts, [x.label for x in layers])
        report = analyse_reading(facts, config, lambda: checked(tree), tree, tmp, opts.log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.notes = layer_notes(facts) + report.notes
    report.notes += [f"the image has no {shown('/' + p)}" for p in scope if p and resolve(tree, p) is None]
    report.layers = tally(facts)
    report.scope = ["/" + p for p in scope]
    report.seconds = time.monotonic() - started
    if store is not None:
        with contextlib.suppress(OSError):
            store.prune()
    return report


__all__ = ["CheckOptions", "check_image", "component_of", "default_scope"]
