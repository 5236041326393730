"""``ociassemble copy SRC DST``: an image or a whole index between any two transports.

Manifests travel as the exact bytes they are, so digests are kept wherever the format
keeps a manifest (a registry, an OCI layout or archive); a docker archive keeps none, so
what is read back from one has a manifest made from its ``manifest.json``. Layer blobs
are never recompressed. The store, mounts between repositories of one registry, resumed
downloads and ``--verify`` work as they do for compose.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ociassemble.engine.run import Result, RunOptions, Session, translating_os_errors
from ociassemble.errors import ManifestError, UsageError
from ociassemble.layers.layerindex import ARTIFACT_TYPE
from ociassemble.oci import model
from ociassemble.oci.digest import check_digest, sha256_digest, verify_bytes
from ociassemble.oci.model import INDEX_TYPES, Descriptor, Index, Manifest, Platform
from ociassemble.text import printable
from ociassemble.transport.referrers import attach, fetch_manifest, find
from ociassemble.transport.sink import Sink
from ociassemble.transport.source import Source
from ociassemble.transport.store import StoreSource
from ociassemble.transport.table import accepts_index, open_sink

CHUNK = 1 << 20


@dataclass
class CopyOptions(RunOptions):
    source: str = ""  # an index is copied whole unless --platform picks one image


def copy(opts: CopyOptions) -> Result:
    return translating_os_errors(lambda: _copy(opts), opts)


def _copy(opts: CopyOptions) -> Result:
    with Session(opts) as s:
        raw_src = s.source(opts.source)
        src: Source = StoreSource(raw_src, s.store) if s.store is not None else raw_src
        raw, mt = src.manifest()
        if mt in INDEX_TYPES and s.platform is None and not accepts_index(s.output):
            raise UsageError(f"{printable(src.label)} is an index of platforms and {printable(str(s.output))} holds "
                             "one image: pick one with --platform")
        s.check_destination()
        lines = [f"source: {src.label} {sha256_digest(raw)}"]
        sink = open_sink(s.output, s.client)
        try:
            if mt in INDEX_TYPES and s.platform is None:
                index = Index.parse(raw, mt)
                manifests = []
                for d in index.manifests:
                    mraw, mmt = src.manifest(d.digest)
                    verify_bytes(mraw, d.digest, d.size, f"{src.label} manifest")
                    if mmt in INDEX_TYPES:
                        raise ManifestError(f"{src.label}: index {d.digest} is nested in an index; ociassemble copies "
                                            "one level")
                    _blobs(s, src, sink, _descriptors(mraw, src.label))
                    sink.put_manifest(mraw, mmt, tag=False)
                    lines += _carry_indexes(s, src, sink, d.digest)
                    manifests.append((d, mraw, mmt))
                    lines.append(f"platform {d.platform or '?'}: {d.digest}")
                sink.put_manifest(raw, mt)  # the index and the tag: last
                verified = _verify(s, sink, [(m, mt_) for _d, m, mt_ in manifests], raw) if opts.verify else {}
            else:
                if mt in INDEX_TYPES:
                    d = Index.parse(raw, mt).select(s.platform or Platform("linux", "amd64"))
                    raw, mt = src.manifest(d.digest)
                    verify_bytes(raw, d.digest, d.size, f"{src.label} manifest")
                    lines.append(f"platform {d.platform}: {d.digest}")
                _blobs(s, src, sink, _descriptors(raw, src.label))
                sink.put_manifest(raw, mt)
                lines += _carry_indexes(s, src, sink, sha256_digest(raw))
                verified = _verify(s, sink, [(raw, mt)], None) if opts.verify else {}
        except BaseException:
            sink.abort()
            raise
        stats = {"memo_hit": 0, **sink.stats, **verified}
        if s.store is not None:
            stats.update(s.store.stats)
            s.store.prune()
        top = sha256_digest(raw)
        config = "" if mt in INDEX_TYPES else Manifest.parse(raw, mt).config.digest
        return Result(sink.label, top, config, mt, [], None, lines, stats)


def _descriptors(raw: bytes, label: str) -> list[Descriptor]:
    """A manifest's config and layers as descriptors, whatever their media types (an index's
    attestation manifests hold in-toto layers, which are copied like any blob)."""
    try:
        doc = json.loads(raw)
        items = [doc["config"], *(doc.get("layers") or [])]
        return [Descriptor(str(d["mediaType"]), check_digest(str(d["digest"])), int(d["size"]),
                           urls=tuple(d.get("urls") or ())) for d in items]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ManifestError(f"{label}: a manifest is malformed (no config, or a descriptor without media type, "
                            "digest or size)") from None


def _blobs(s: Session, src: Source, sink: Sink, descs: list[Descriptor]) -> None:
    """The config and the layers, concurrently; foreign layers stay where they live."""
    blobs = [d for d in descs if d.media_type not in model.FOREIGN_LAYER_TYPES]
    with ThreadPoolExecutor(max_workers=max(1, s.jobs)) as pool:
        for f in [pool.submit(sink.copy_blob, d, src) for d in blobs]:
            f.result()


def _carry_indexes(s: Session, src: Source, sink: Sink, subject: str) -> list[str]:
    """The layer indexes published beside an image go with it when both ends are registries
    (blobs copied or mounted, the artifact manifest as its exact bytes, listed under the
    subject at the destination)."""
    here, there = src.registry(), sink.registry()
    if here is None or there is None or not s.opts.use_indexes:
        return []
    (client, repo), (dest, dest_repo) = here, there
    lines = []
    try:
        refs = find(client, repo, subject, ARTIFACT_TYPE)
    except ManifestError as e:
        s.log(str(e))
        return []
    for ref in refs:
        raw, mt = fetch_manifest(client, repo, ref.digest, ref.size)
        try:
            blobs = _descriptors(raw, f"layer-index artifact {ref.digest}")
        except ManifestError as e:
            s.log(f"{e}; not carried")
            continue
        for d in blobs:
            sink.copy_blob(d, src)
        dest.put_manifest(dest_repo, ref.digest, raw, mt)
        attach(dest, dest_repo, subject, Descriptor(mt, ref.digest, ref.size), ARTIFACT_TYPE, ref.annotations)
        lines.append(f"layer indexes of {subject[:19]} carried along: {ref.digest}")
    return lines


def _verify(s: Session, sink: Sink, manifests: list[tuple[bytes, str]], index: bytes | None) -> dict[str, int]:
    """Read what was written back: the manifests (where the destination keeps them: a
    docker archive does not) and every blob, whole, against its digest and size."""
    back = sink.as_source()
    top_raw, _ = back.manifest()
    keeps = top_raw == (index if index is not None else manifests[0][0])
    if index is not None and not keeps:
        raise ManifestError(f"{sink.label}: the index read back differs from the one written")
    count = nbytes = 0
    for raw, _mt in manifests:
        if keeps and back.manifest(sha256_digest(raw))[0] != raw:
            raise ManifestError(f"{sink.label}: manifest {sha256_digest(raw)} read back differs from the one written")
        for d in _descriptors(raw, sink.label):
            if d.media_type in model.FOREIGN_LAYER_TYPES:
                continue
            with back.open_blob(d) as r:
                while r.read(CHUNK):
                    pass
            count += 1
            nbytes += d.size
    s.log(f"verified: {count} blobs ({nbytes} bytes) read back from {printable(sink.label)}")
    return {"verified_blobs": count, "verified_bytes": nbytes}


__all__ = ["CopyOptions", "copy"]
