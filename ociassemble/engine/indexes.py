"""Layer indexes as shared artifacts: made from stored blobs, published beside the image
they describe (``subject``), found again by the next machine that composes from it.

One artifact per image manifest: for each gzip (or plain) layer, its index JSON and its
access points as two blobs, annotated with the layer digest. Found indexes are checked
(parsed, and matched to the layer digest, size and diff_id the image names) before they
enter the store, where :func:`ociassemble.engine.assemble.scan_layers` uses them.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ociassemble.errors import ManifestError, NotFound, OciAssembleError
from ociassemble.layers.layerindex import ARTIFACT_TYPE, MEDIA_TYPE, POINTS_MEDIA_TYPE, LayerIndex, build
from ociassemble.oci import model
from ociassemble.oci.digest import check_digest
from ociassemble.oci.model import Descriptor
from ociassemble.text import printable
from ociassemble.transport.referrers import fetch_blob, fetch_manifest, find, publish
from ociassemble.transport.source import ResolvedImage, Source
from ociassemble.transport.store import Store

LAYER_ANNOTATION = "org.ociassemble.layer"
LOCAL = frozenset({"local"})
INDEXABLE = (model.OCI_LAYER_GZIP, model.DOCKER_LAYER_GZIP, model.OCI_LAYER_ZSTD, model.OCI_LAYER,
             model.DOCKER_LAYER_TAR)
Log = Callable[[str], None]


def make(store: Store, image: ResolvedImage, log: Log) -> list[LayerIndex]:
    """An index for every gzip, zstd or plain layer of ``image``, from the store's copy of its blob
    (read through the store first when missing), kept in the store."""
    out = []
    for i, desc in enumerate(image.manifest.layers):
        if desc.media_type not in INDEXABLE:
            continue
        found = store.layer_index_raw(desc.digest, LOCAL)  # only one made here is published as ours
        if found is not None:
            try:
                out.append(LayerIndex.from_json(found[0], found[1], f"the store's index of {desc.digest[:19]}"))
                continue
            except OciAssembleError:
                pass
        label = f"{image.role} layer {i} ({desc.digest[:19]})"
        if image.source.local:  # a local layout's file: its digest checked, then read in place
            with image.source.open_blob(desc) as r:
                while r.read(1 << 20):
                    pass
            index = build(image.source.open_range(desc), desc.digest, desc.size, image.config.diff_ids[i], label)
        else:
            if not store.has(desc):
                with image.source.open_blob(desc) as r:  # a StoreSource keeps it as it streams by
                    while r.read(1 << 20):
                        pass
            if not store.has(desc):
                raise NotFound(f"layer {desc.digest} of {printable(image.name)} could not be kept in the store")
            index = build(store.blob_path(desc.digest), desc.digest, desc.size, image.config.diff_ids[i], label)
        store.put_layer_index_raw(desc.digest, index.to_json(), index.points)
        log(f"indexed {image.role} layer {i}: {len(index.entries)} entries, "
            f"{len(index.points or b'')} bytes of access points")
        out.append(index)
    return out


def push(image: ResolvedImage, indexes: list[LayerIndex], target: Source | None = None) -> Descriptor:
    """Publish the indexes in the image's repository (or ``target``'s) as an artifact whose
    subject is the image manifest."""
    where = (target or image.source).registry()
    if where is None:
        raise ManifestError(f"{printable((target or image.source).label)} is not a registry: layer indexes are "
                            "published to one (ociassemble index REF --push, with REF in a registry)")
    client, repo = where
    blobs: list[tuple[str, bytes, dict[str, str]]] = []
    for index in indexes:
        blobs.append((MEDIA_TYPE, index.to_json(), {LAYER_ANNOTATION: index.digest}))
        if index.points is not None:
            blobs.append((POINTS_MEDIA_TYPE, index.points, {LAYER_ANNOTATION: index.digest}))
    subject = Descriptor(image.manifest.media_type, image.digest, len(image.manifest.raw))
    return publish(client, repo, subject, ARTIFACT_TYPE, blobs, {"org.opencontainers.image.description":
                                                                 "ociassemble layer indexes"})


def discover(store: Store, image: ResolvedImage, log: Log, where: Source | None = None) -> int:
    """Find published indexes for ``image`` (in its repository, or ``where``'s) and keep the
    ones that match its layers in the store; returns how many layers got one."""
    place = (where or image.source).registry()
    if place is None:
        return 0
    client, repo = place
    mine = frozenset({"local", f"{client.host}/{repo}"})
    todo = {d.digest: i for i, d in enumerate(image.manifest.layers)
            if d.media_type in INDEXABLE and store.layer_index_raw(d.digest, mine) is None}
    if not todo:
        return 0
    got = 0
    try:
        refs = find(client, repo, image.digest, ARTIFACT_TYPE)
    except ManifestError as e:
        log(str(e))
        return 0
    for ref in refs:
        raw, _ = fetch_manifest(client, repo, ref.digest, ref.size)
        docs: dict[str, bytes] = {}
        points: dict[str, bytes] = {}
        for d in _artifact_blobs(raw, repo):
            layer = d.annotations.get(LAYER_ANNOTATION, "")
            if layer not in todo:
                continue
            data = fetch_blob(client, repo, d)
            (docs if d.media_type == MEDIA_TYPE else points)[layer] = data
        for layer, doc in docs.items():
            i = todo[layer]
            label = f"the published index of {image.role} layer {i} ({layer[:19]})"
            index = LayerIndex.from_json(doc, points.get(layer), label)
            desc = image.manifest.layers[i]
            if (index.digest, index.size, index.diff_id) != (desc.digest, desc.size, image.config.diff_ids[i]):
                raise ManifestError(f"{label} describes layer {index.digest} (diff_id {index.diff_id}), not this "
                                    "one; it is refused")
            store.put_layer_index_raw(layer, doc, points.get(layer), origin=f"{client.host}/{repo}")
            todo.pop(layer)
            got += 1
    if got:
        log(f"{image.role}: layer indexes found for {got} layer(s) in {repo}")
    return got


def _artifact_blobs(raw: bytes, repo: str) -> list[Descriptor]:
    """An artifact manifest's blobs (its layers are not image layers: no layer type check)."""
    try:
        doc = json.loads(raw)
        return [Descriptor(str(d["mediaType"]), check_digest(str(d["digest"]), "digest"), int(d["size"]),
                           annotations={str(k): str(v) for k, v in (d.get("annotations") or {}).items()})
                for d in doc["layers"]]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, ManifestError):
        raise ManifestError(f"a layer-index artifact in {repo} is malformed; it is refused") from None
