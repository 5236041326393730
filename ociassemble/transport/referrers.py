"""Artifacts that refer to an image (OCI 1.1 ``subject``): published and found.

A registry with the referrers API lists them at ``/v2/<repo>/referrers/<digest>``; one
without it (Debian's docker-registry 2.8 among them) gets the fallback the distribution
spec defines: an image index under the tag ``sha256-<hex>`` that lists them, which the
publisher keeps up to date.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

from ociassemble.errors import ManifestError, NotFound
from ociassemble.oci.digest import sha256_digest, verify_bytes
from ociassemble.oci.model import OCI_INDEX, OCI_MANIFEST, Descriptor, canonical_json
from ociassemble.transport.registry.client import RegistryClient, pull_scope

EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
LIMIT = 64 << 20


@dataclass
class Referrer:
    digest: str
    size: int
    artifact_type: str
    annotations: dict[str, str]


def fallback_tag(subject: str) -> str:
    return subject.replace(":", "-", 1)


def _put_blob(client: RegistryClient, repo: str, media_type: str, data: bytes) -> Descriptor:
    desc = Descriptor(media_type, sha256_digest(data), len(data))
    if not client.blob_exists(repo, desc.digest, desc.size):
        client.upload_blob(repo, desc, lambda: io.BytesIO(data))
    return desc


def publish(client: RegistryClient, repo: str, subject: Descriptor, artifact_type: str,
            blobs: list[tuple[str, bytes, dict[str, str]]], annotations: dict[str, str]) -> Descriptor:
    """Push an artifact (its blobs, then its manifest by digest) and list it under the
    subject: where the registry lacks the referrers API, in the fallback tag's index."""
    layers = [{**_put_blob(client, repo, mt, data).to_json(), **({"annotations": ann} if ann else {})}
              for mt, data, ann in blobs]
    config = _put_blob(client, repo, EMPTY_TYPE, EMPTY)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
                "config": config.to_json(), "layers": layers, "subject": subject.to_json(),
                "annotations": annotations}
    raw = canonical_json(manifest)
    desc = Descriptor(OCI_MANIFEST, sha256_digest(raw), len(raw))
    client.put_manifest(repo, desc.digest, raw, OCI_MANIFEST)
    attach(client, repo, subject.digest, desc, artifact_type, annotations)
    return desc


def attach(client: RegistryClient, repo: str, subject: str, desc: Descriptor, artifact_type: str,
           annotations: dict[str, str]) -> None:
    """List a pushed artifact under its subject where the registry does not do it itself:
    the fallback tag's index, read, changed and written back."""
    if _has_referrers_api(client, repo, subject):
        return
    tag = fallback_tag(subject)
    entries: list[dict[str, object]] = []
    try:
        old, _, _ = client.get_manifest(repo, tag)
        doc = json.loads(old)
        entries = [m for m in doc.get("manifests") or [] if isinstance(m, dict) and m.get("digest") != desc.digest]
    except (NotFound, ValueError):
        entries = []
    entries.append({**desc.to_json(), "artifactType": artifact_type, "annotations": annotations})
    index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    client.put_manifest(repo, tag, index, OCI_INDEX)


def _has_referrers_api(client: RegistryClient, repo: str, subject: str) -> bool:
    try:
        resp = client.request("GET", f"/v2/{repo}/referrers/{subject}", (pull_scope(repo),), allow=(200, 404),
                              what=f"the referrers of {subject}")
    except NotFound:
        return False
    ok = resp.status_code == 200 and "json" in resp.headers.get("Content-Type", "")
    resp.close()
    return ok


def find(client: RegistryClient, repo: str, subject: str, artifact_type: str) -> list[Referrer]:
    """The artifacts of one type that refer to ``subject`` (referrers API, else the fallback tag)."""
    raw = None
    resp = client.request("GET", f"/v2/{repo}/referrers/{subject}", (pull_scope(repo),), allow=(200, 404),
                          what=f"the referrers of {subject}")
    try:
        if resp.status_code == 200 and "json" in resp.headers.get("Content-Type", ""):
            raw = resp.content
    finally:
        resp.close()
    if raw is None:
        try:
            raw, _, _ = client.get_manifest(repo, fallback_tag(subject))
        except NotFound:
            return []
    try:
        doc = json.loads(raw)
        items = doc.get("manifests") or []
        found = [Referrer(str(m["digest"]), int(m["size"]), str(m.get("artifactType", "")),
                          dict(m.get("annotations") or {})) for m in items if isinstance(m, dict)]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ManifestError(f"the referrers of {subject} in {repo} are not an image index; they are ignored") \
            from None
    return [r for r in found if r.artifact_type == artifact_type]


def fetch_blob(client: RegistryClient, repo: str, desc: Descriptor) -> bytes:
    if desc.size > LIMIT:
        raise ManifestError(f"artifact blob {desc.digest} is {desc.size} bytes, more than an index should be")
    with client.open_blob(repo, desc) as r:
        data = r.read(desc.size + 1)
        r.read(1)
    return verify_bytes(data, desc.digest, desc.size, f"artifact blob of {repo}")


def fetch_manifest(client: RegistryClient, repo: str, digest: str, size: int) -> tuple[bytes, str]:
    """An artifact's manifest by digest, its bytes checked against it."""
    raw, mt, _ = client.get_manifest(repo, digest)
    return verify_bytes(raw, digest, size, f"artifact manifest of {repo}"), mt
