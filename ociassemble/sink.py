"""Where the composed image goes: a registry push or an OCI image layout.

Order matters for consumers watching the destination: blobs first, then the manifest,
and the tag last, so a tag never points at something incomplete. Blobs already present
are skipped; blobs in another repository of the same registry are mounted, not re-sent.
On a failure a layout that this run created is removed again, and a registry tag is
simply never written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

from ociassemble.digest import HashingWriter, sha256_digest
from ociassemble.errors import DigestMismatch, OciAssembleError
from ociassemble.model import ANNOTATION_REF_NAME, OCI_INDEX, Descriptor, canonical_json
from ociassemble.reference import LayoutRef, RegistryRef
from ociassemble.registry import RegistryClient
from ociassemble.segments import SegmentReader
from ociassemble.source import LayoutSource, RegistrySource, Source

CHUNK = 1 << 20


class Sink(ABC):
    label: str
    stats: dict[str, int]

    @abstractmethod
    def has_blob(self, desc: Descriptor) -> bool: ...

    @abstractmethod
    def put_new(self, desc: Descriptor, opener: Callable[[], SegmentReader]) -> None:
        """Store a blob we wrote ourselves; ``opener`` gives a fresh reader of its bytes."""

    @abstractmethod
    def copy_blob(self, desc: Descriptor, source: Source) -> None:
        """Bring a source blob over (mounting where possible); verified on the way."""

    @abstractmethod
    def put_manifest(self, raw: bytes, media_type: str) -> None:
        """Store the manifest and point the output tag at it (the last step)."""

    @abstractmethod
    def holds(self, manifest_digest: str) -> tuple[bool, bool]:
        """(the manifest is there by digest, the tag already names it)."""

    @abstractmethod
    def as_source(self) -> Source:
        """The destination read back, for ``--verify``."""

    def abort(self) -> None:  # noqa: B027 - optional hook, nothing to undo by default
        """Undo what can be undone after a failure."""


class RegistrySink(Sink):
    def __init__(self, ref: RegistryRef, client: RegistryClient):
        self.ref = ref
        self.client = client
        self.label = str(ref)
        self.stats = {"skipped": 0, "mounted": 0, "uploaded": 0, "uploaded_bytes": 0}

    def has_blob(self, desc: Descriptor) -> bool:
        return self.client.blob_exists(self.ref.repository, desc.digest)

    def as_source(self) -> Source:
        return RegistrySource(self.ref, self.client)

    def holds(self, manifest_digest: str) -> tuple[bool, bool]:
        repo = self.ref.repository
        there = self.client.manifest_exists(repo, manifest_digest) is not None
        return there, there and self.client.manifest_exists(repo, self.ref.reference) == manifest_digest

    def put_new(self, desc: Descriptor, opener: Callable[[], SegmentReader]) -> None:
        if self.has_blob(desc):
            self.stats["skipped"] += 1
            return
        self.client.upload_blob(self.ref.repository, desc, opener)
        self.stats["uploaded"] += 1
        self.stats["uploaded_bytes"] += desc.size

    def copy_blob(self, desc: Descriptor, source: Source) -> None:
        repo = self.ref.repository
        if self.has_blob(desc):
            self.stats["skipped"] += 1
            return
        location = None
        origin = getattr(source, "inner", source)  # the registry behind a store, for mounting
        if isinstance(origin, RegistrySource) and origin.client.host == self.client.host:
            location = self.client.mount_blob(repo, desc.digest, origin.ref.repository)
            if location is None:
                self.stats["mounted"] += 1
                return

        def body() -> Iterator[bytes]:
            with source.open_blob(desc) as r:
                while data := r.read(CHUNK):
                    yield data

        # streamed through; the registry refuses the PUT if the digest does not match,
        # and our own VerifyingReader raises (aborting the upload) before that
        self.client.upload_blob(repo, desc, body, location)
        self.stats["uploaded"] += 1
        self.stats["uploaded_bytes"] += desc.size

    def put_manifest(self, raw: bytes, media_type: str) -> None:
        digest = sha256_digest(raw)
        self.client.put_manifest(self.ref.repository, digest, raw, media_type)
        if self.ref.tag:
            self.client.put_manifest(self.ref.repository, self.ref.tag, raw, media_type)


class LayoutSink(Sink):
    """Writes an OCI image layout; blobs atomically, ``index.json`` last."""

    def __init__(self, ref: LayoutRef):
        self.ref = ref
        self.root = Path(ref.path)
        self.label = str(ref)
        self.stats = {"skipped": 0, "mounted": 0, "uploaded": 0, "uploaded_bytes": 0}
        self._created = not self.root.exists()
        if self.root.exists() and not (self.root / "oci-layout").exists() and any(self.root.iterdir()):
            raise OciAssembleError(
                f"{self.root} exists and is not an OCI image layout; choose another output path"
            )
        self.blobs = self.root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self._new: list[Path] = []

    def _path(self, digest: str) -> Path:
        return self.blobs / digest.split(":", 1)[1]

    def has_blob(self, desc: Descriptor) -> bool:
        p = self._path(desc.digest)
        return p.exists() and p.stat().st_size == desc.size

    def as_source(self) -> Source:
        return LayoutSource(self.ref)

    def holds(self, manifest_digest: str) -> tuple[bool, bool]:
        if not self._path(manifest_digest).is_file() or not (self.root / "index.json").is_file():
            return False, False
        tagged = LayoutSource(dataclasses.replace(self.ref, tag=self.ref.tag or "latest")).top_digest()
        return True, tagged == manifest_digest

    def _commit(self, tmp: Path, desc: Descriptor) -> None:
        final = self._path(desc.digest)
        os.replace(tmp, final)
        self._new.append(final)
        self.stats["uploaded"] += 1
        self.stats["uploaded_bytes"] += desc.size

    def put_new(self, desc: Descriptor, opener: Callable[[], SegmentReader]) -> None:
        if self.has_blob(desc):
            self.stats["skipped"] += 1
            return
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".part-")
        os.close(fd)
        try:
            with opener() as body:
                whole = body.single_file
                if whole is None or not _link_over(whole, tmp):
                    with open(tmp, "wb") as out:
                        while data := body.read(CHUNK):
                            out.write(data)
            self._commit(Path(tmp), desc)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def copy_blob(self, desc: Descriptor, source: Source) -> None:
        if self.has_blob(desc):
            self.stats["skipped"] += 1
            return
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out, source.open_blob(desc) as r:
                w = HashingWriter(out)
                while data := r.read(CHUNK):
                    w.write(data)
            if w.digest != desc.digest:  # VerifyingReader already raised; belt and braces
                raise DigestMismatch(f"blob {desc.digest} arrived with digest {w.digest}")
            self._commit(Path(tmp), desc)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_manifest(self, raw: bytes, media_type: str) -> None:
        digest = sha256_digest(raw)
        desc = Descriptor(media_type, digest, len(raw))
        p = self._path(digest)
        if not p.exists():
            tmp = p.with_name(".part-" + p.name)
            tmp.write_bytes(raw)
            os.replace(tmp, p)
            self._new.append(p)
        layout = self.root / "oci-layout"
        if not layout.exists():
            layout.write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        index_path = self.root / "index.json"
        manifests = []
        if index_path.exists():
            try:
                manifests = json.loads(index_path.read_text()).get("manifests") or []
            except ValueError:
                raise OciAssembleError(f"{index_path} is not valid JSON; remove it or pick another output") from None
        tag = self.ref.tag or "latest"
        manifests = [m for m in manifests if (m.get("annotations") or {}).get(ANNOTATION_REF_NAME) != tag]
        entry = desc.to_json()
        entry["annotations"] = {ANNOTATION_REF_NAME: tag}
        manifests.append(entry)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        tmp = index_path.with_name(".index.json.part")
        tmp.write_bytes(canonical_json(index))
        os.replace(tmp, index_path)

    def abort(self) -> None:
        if self._created:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            for p in self._new:
                p.unlink(missing_ok=True)


def _link_over(src: Path, dest: str) -> bool:
    """Hardlink ``src`` in place of ``dest``, atomically; False where links are not possible."""
    try:
        os.link(src, dest + ".l")
        os.replace(dest + ".l", dest)
        return True
    except OSError:
        return False
