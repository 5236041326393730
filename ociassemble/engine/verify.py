"""``--verify``: read the result back from where it was written and check it.

The reference point is what was recorded while the sources streamed: each new layer's
entries, with the sha256 of every file body as it came out of the verified source layer.
Verification downloads only the new layers (the full image is not read again), checks
their blob digest, size and diff_id, re-parses them and compares entry by entry; it checks
that the manifest and config come back as the exact bytes whose digests were computed,
that the tag points at that manifest, and that every reused blob is present with its size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from ociassemble.engine.assemble import DiffIdReader, NewLayer
from ociassemble.errors import OciAssembleError
from ociassemble.layers.compression import open_decompressed
from ociassemble.layers.tarscan import scan_layer
from ociassemble.layers.write import entry_record
from ociassemble.oci.digest import Readable, sha256_digest
from ociassemble.oci.model import Descriptor, Manifest
from ociassemble.transport.sink import Sink


class VerifyError(OciAssembleError):
    """What was read back differs from what was written."""

    exit_code = 3


class _BodyHasher:
    """Stands in for the spool: hashes bodies, keeps nothing."""

    def put(self, src: Readable, size: int) -> str:
        h = hashlib.sha256()
        left = size
        while left:
            data = src.read(min(1 << 20, left))
            if not data:
                raise VerifyError("a file body in a written layer ends early")
            h.update(data)
            left -= len(data)
        return "sha256:" + h.hexdigest()


def verify_output(sink: Sink, manifest_raw: bytes, config_raw: bytes, new: list[NewLayer],
                  log: Callable[[str], None], tagged: bool = True) -> dict[str, int]:
    """The result read back from the destination: the manifest (and that the tag names it,
    unless it is one platform of an index), the config, every new layer entry by entry."""
    where = sink.label
    source = sink.as_source()
    digest = sha256_digest(manifest_raw)
    manifest = Manifest.parse(manifest_raw)
    if source.keeps_manifests:
        raw, _ = source.manifest(digest)
        if raw != manifest_raw:
            raise VerifyError(f"verify: the manifest read back from {where} is not the one written; do not use it")
        top, _ = source.manifest() if tagged else (manifest_raw, "")
        if sha256_digest(top) != digest:
            raise VerifyError(f"verify: {where} points at {sha256_digest(top)}, not the manifest written "
                              f"({digest})")
    else:  # a docker archive: its manifest.json must name the config and layers written
        back = Manifest.parse(*source.manifest())
        if back.config.digest != manifest.config.digest or \
                [d.digest for d in back.layers] != [d.digest for d in manifest.layers]:
            raise VerifyError(f"verify: {where} names other config or layers than the ones written")
    if source.read_blob(manifest.config) != config_raw:
        raise VerifyError(f"verify: the config read back from {where} differs from the one written")
    by_digest = {n.written.digest: n for n in new}
    checked = read = 0
    for desc in manifest.layers:
        layer = by_digest.get(desc.digest)
        if layer is None:
            if not sink.has_blob(desc):
                raise VerifyError(f"verify: {where} lacks layer {desc.digest} ({desc.size} bytes) that the "
                                  "manifest lists")
            checked += 1
            continue
        read += _verify_layer(source, desc, layer, where)
        checked += 1
        log(f"verified layer '{layer.spec.name}': digest, diff_id and {len(layer.written.records)} entries")
    return {"verified_layers": checked, "verified_bytes": read}


def _verify_layer(source: Any, desc: Descriptor, layer: NewLayer, where: str) -> int:
    label = f"new layer '{layer.spec.name}' at {where}"
    try:
        with source.open_blob(desc) as blob:
            plain = DiffIdReader(open_decompressed(blob))
            entries = scan_layer(plain, lambda _p: True, _BodyHasher(), label)  # type: ignore[arg-type]
            while plain.read(1 << 20):
                pass
            blob.drain()
    except VerifyError:
        raise
    except OciAssembleError as e:
        raise VerifyError(f"verify: {label} cannot be read back intact ({e}); do not use the result") from None
    if plain.digest != layer.written.diff_id:
        raise VerifyError(f"verify: {label} decompresses to {plain.digest}, not the diff_id {layer.written.diff_id}")
    got = [entry_record(e) for e in entries]
    want = layer.written.records
    if got != want:
        first = next((i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w), min(len(got), len(want)))
        g = got[first] if first < len(got) else "nothing"
        w = want[first] if first < len(want) else "nothing"
        raise VerifyError(f"verify: {label} differs from what was written at entry {first}: expected {w}, found {g}")
    return desc.size
