"""Where the composed image goes: a registry push or an OCI image layout.

Order matters for consumers watching the destination: blobs first, then the manifest,
and the tag last, so a tag never points at something incomplete. Blobs already present
are skipped; blobs in another repository of the same registry are mounted, not re-sent.
On a failure a layout that this run created is removed again, and a registry tag is
simply never written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

from ociassemble.errors import DigestMismatch, OciAssembleError
from ociassemble.oci.digest import HashingWriter, blob_path, sha256_digest
from ociassemble.oci.model import ANNOTATION_REF_NAME, OCI_INDEX, Descriptor, canonical_json
from ociassemble.oci.reference import LayoutRef, RegistryRef
from ociassemble.transport.atomic import PART_PREFIX, flock, locked, part_file, remove_stale_parts
from ociassemble.transport.oserrors import check_writable_dir
from ociassemble.transport.registry.client import RegistryClient
from ociassemble.transport.segments import SegmentReader
from ociassemble.transport.source import LayoutSource, RegistrySource, Source

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
    def put_manifest(self, raw: bytes, media_type: str, tag: bool = True) -> None:
        """Store the manifest and point the output tag at it (the last step); ``tag=False``
        stores it by digest only (a platform's manifest, before its index)."""

    @abstractmethod
    def holds(self, manifest_digest: str) -> tuple[bool, bool]:
        """(the manifest is there by digest, the tag already names it)."""

    @abstractmethod
    def as_source(self) -> Source:
        """The destination read back, for ``--verify``."""

    def abort(self) -> None:  # noqa: B027 - optional hook, nothing to undo by default
        """Undo what can be undone after a failure."""

    def registry(self) -> tuple[RegistryClient, str] | None:
        """The registry client and repository written to, if a registry (artifacts go there too)."""
        return None


class RegistrySink(Sink):
    def __init__(self, ref: RegistryRef, client: RegistryClient):
        self.ref = ref
        self.client = client
        self.label = str(ref)
        self.stats = {"skipped": 0, "mounted": 0, "uploaded": 0, "uploaded_bytes": 0}

    def has_blob(self, desc: Descriptor) -> bool:
        return self.client.blob_exists(self.ref.repository, desc.digest, desc.size)

    def registry(self) -> tuple[RegistryClient, str] | None:
        return self.client, self.ref.repository

    def check_access(self) -> None:
        """Fail now, before any layer is read, if the credentials cannot push here."""
        self.client.check_push(self.ref.repository)

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
        origin = source.mount_origin()
        if origin is not None and origin[0] == self.client.host:
            location = self.client.mount_blob(repo, desc.digest, origin[1])
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

    def put_manifest(self, raw: bytes, media_type: str, tag: bool = True) -> None:
        digest = sha256_digest(raw)
        self.client.put_manifest(self.ref.repository, digest, raw, media_type)
        if tag and self.ref.tag:
            self.client.put_manifest(self.ref.repository, self.ref.tag, raw, media_type)


class LayoutSink(Sink):
    """Writes an OCI image layout; blobs atomically, ``index.json`` last, under a lock.

    Several runs may write one layout at once. Each holds a shared ``flock`` on the layout
    folder while it works; ``index.json`` is read, changed and replaced under an exclusive
    lock on ``index.json.lock``, which also covers creating ``oci-layout``, so no tag is
    lost and no run sees half a layout. A blob already there is checked by digest before
    it is skipped, and a damaged one is replaced (by rename). Temporary files are locked
    while written, and the ones a killed run left are removed (see :mod:`ociassemble.transport.atomic`).
    """

    LOCK = "index.json.lock"

    def __init__(self, ref: LayoutRef):
        self.ref = ref
        self.root = Path(ref.path)
        self.label = str(ref)
        self.stats = {"skipped": 0, "mounted": 0, "uploaded": 0, "uploaded_bytes": 0, "repaired": 0}
        self._new: list[Path] = []
        self._verified: set[str] = set()
        self._tagged: tuple[str, dict[str, object], dict[str, object] | None] | None = None
        self._usage = -1
        check_layout_target(self.root)
        self._created, self._usage = self._enter()
        try:
            foreign = sorted(n for n in os.listdir(self.root)
                             if n not in ("blobs", self.LOCK) and not n.startswith(PART_PREFIX))
            if foreign and not (self.root / "oci-layout").exists():
                raise OciAssembleError(
                    f"{self.root} exists and is not an OCI image layout (it holds {foreign[0]!r}); choose another "
                    "output path"
                )
            self.blobs = self.root / "blobs" / "sha256"
            self.blobs.mkdir(parents=True, exist_ok=True)
            remove_stale_parts(self.blobs)
            remove_stale_parts(self.root)
        except BaseException:
            self.abort()
            raise

    def _enter(self) -> tuple[bool, int]:
        """Create the folder if missing (and say whether this run did), holding its usage lock."""
        while True:
            try:
                self.root.mkdir(parents=True)
                created = True
            except FileExistsError:
                created = False
            try:
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # removed by a run that created it and failed: create it again
            flock(fd, fcntl.LOCK_SH)
            try:
                st, fst = os.stat(self.root), os.fstat(fd)
                if (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino):
                    return created, fd
            except FileNotFoundError:
                pass
            os.close(fd)  # removed (or replaced) before the lock: start again

    def _path(self, digest: str) -> Path:
        return blob_path(self.root, digest)

    def has_blob(self, desc: Descriptor) -> bool:
        """There, with its size and digest (the file is hashed once per run); a damaged
        copy counts as missing, and is replaced by the write that follows."""
        p = self._path(desc.digest)
        try:
            if p.stat().st_size != desc.size:
                return False
        except FileNotFoundError:
            return False
        if desc.digest in self._verified:
            return True
        if _file_digest(p) != desc.digest:
            return False
        self._verified.add(desc.digest)
        return True

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
        self._verified.add(desc.digest)
        self.stats["uploaded"] += 1
        self.stats["uploaded_bytes"] += desc.size

    def _present(self, desc: Descriptor) -> bool:
        if self.has_blob(desc):
            self.stats["skipped"] += 1
            return True
        if self._path(desc.digest).exists():
            self.stats["repaired"] += 1  # damaged: written anew below, by rename
        return False

    def put_new(self, desc: Descriptor, opener: Callable[[], SegmentReader]) -> None:
        if self._present(desc):
            return
        with opener() as body:
            whole = body.single_file
            if whole is not None and _link_into(whole, self._path(desc.digest)):
                self._new.append(self._path(desc.digest))
                self._verified.add(desc.digest)
                self.stats["uploaded"] += 1
                self.stats["uploaded_bytes"] += desc.size
                return
            with part_file(self.blobs) as (fd, tmp):
                with os.fdopen(fd, "wb", closefd=False) as out:
                    while data := body.read(CHUNK):
                        out.write(data)
                self._commit(tmp, desc)

    def copy_blob(self, desc: Descriptor, source: Source) -> None:
        if self._present(desc):
            return
        with part_file(self.blobs) as (fd, tmp):
            with os.fdopen(fd, "wb", closefd=False) as out, source.open_blob(desc) as r:
                w = HashingWriter(out)
                while data := r.read(CHUNK):
                    w.write(data)
            if w.digest != desc.digest:  # VerifyingReader already raised; belt and braces
                raise DigestMismatch(f"blob {desc.digest} arrived with digest {w.digest}")
            self._commit(tmp, desc)

    def _write_small(self, path: Path, data: bytes) -> None:
        with part_file(path.parent) as (fd, tmp):
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)

    def put_manifest(self, raw: bytes, media_type: str, tag: bool = True) -> None:
        digest = sha256_digest(raw)
        desc = Descriptor(media_type, digest, len(raw))
        if not self.has_blob(desc):
            p = self._path(digest)
            self._write_small(p, raw)
            self._new.append(p)
            self._verified.add(digest)
        if not tag:
            return
        self._tag(desc)

    def _tag(self, desc: Descriptor) -> None:
        tag = self.ref.tag or "latest"
        index_path = self.root / "index.json"
        with locked(self.root / self.LOCK):
            if not (self.root / "oci-layout").exists():  # a new layout: oci-layout first, then index.json
                self._write_small(self.root / "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
            manifests = []
            if index_path.exists():
                try:
                    doc = json.loads(index_path.read_text())
                except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
                    raise OciAssembleError(
                        f"{index_path} is not valid JSON; remove it or pick another output") from None
                manifests = (doc.get("manifests") or []) if isinstance(doc, dict) else None
                if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
                    raise OciAssembleError(
                        f"{index_path} is not an OCI image index (no list of manifests); remove it or pick another "
                        "output")
            entry: dict[str, object] = {**desc.to_json(), "annotations": {ANNOTATION_REF_NAME: tag}}
            before = next((m for m in manifests if _tag_of(m) == tag), None)
            self._write_index([m for m in manifests if _tag_of(m) != tag] + [entry])
            self._tagged = (tag, entry, before)

    def _write_index(self, manifests: list[dict[str, object]]) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        self._write_small(self.root / "index.json", canonical_json(index))

    def _untag(self) -> None:
        """Put the tag back as it was before this run (under the index lock), unless another
        run has tagged it since."""
        assert self._tagged is not None
        tag, ours, before = self._tagged
        self._tagged = None
        manifests = json.loads((self.root / "index.json").read_text()).get("manifests") or []
        if next((m for m in manifests if _tag_of(m) == tag), None) != ours:
            return
        self._write_index([m for m in manifests if _tag_of(m) != tag] + ([before] if before is not None else []))

    def abort(self) -> None:
        """Undo this run: its tag goes back to what it was (another run's later tag stays);
        then, unless another run is still writing the layout, the whole layout goes if this
        run created it and nothing is tagged in it, else the new blobs no tag refers to."""
        if self._usage < 0:
            return
        try:
            if not (self._tagged or self._new or self._created):
                return
            if self._tagged:
                with locked(self.root / self.LOCK):
                    self._untag()
            try:
                fcntl.flock(self._usage, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no other run inside
            except OSError:
                return
            with locked(self.root / self.LOCK):
                index = self.root / "index.json"
                if self._created and (not index.exists()
                                      or not json.loads(index.read_text()).get("manifests")):
                    shutil.rmtree(self.root, ignore_errors=True)
                    return
                keep = _referenced(self.root)
                for p in self._new:
                    if keep is not None and p.name not in keep:
                        p.unlink(missing_ok=True)
        except (OSError, ValueError, AttributeError):
            pass  # undoing is best effort: the error that led here is the one to report
        finally:
            self.close()

    def close(self) -> None:
        """Leave the layout (release the usage lock); the process ending does the same."""
        if self._usage >= 0:
            os.close(self._usage)
            self._usage = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit modules may be gone; the process ending unlocks anyway
            return


def check_layout_target(root: Path) -> None:
    """Fail before any work when ``root`` cannot become or be an OCI layout we can write:
    a file in the way, a read-only file system, no permission."""
    check_writable_dir(root, {"output": root})


def _referenced(root: Path) -> set[str] | None:
    """Hex digests of every blob a tag of the layout reaches (indexes, manifests, configs,
    layers); None when that cannot be read (then nothing is removed)."""
    try:
        todo = [d["digest"] for d in json.loads((root / "index.json").read_text()).get("manifests", [])]
        seen: set[str] = set()
        while todo:
            hexd = str(todo.pop()).split(":", 1)[-1]
            if hexd in seen:
                continue
            seen.add(hexd)
            doc = json.loads((root / "blobs" / "sha256" / hexd).read_bytes())
            if not isinstance(doc, dict):
                continue
            todo += [d["digest"] for d in doc.get("manifests") or []]
            if isinstance(doc.get("config"), dict):
                seen.add(str(doc["config"]["digest"]).split(":", 1)[-1])
            seen.update(str(d["digest"]).split(":", 1)[-1] for d in doc.get("layers") or [])
        return seen
    except FileNotFoundError:
        return set() if not (root / "index.json").exists() else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def _tag_of(m: object) -> object:
    return ((m.get("annotations") or {}) if isinstance(m, dict) else {}).get(ANNOTATION_REF_NAME)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(CHUNK):
            h.update(data)
    return "sha256:" + h.hexdigest()


def _link_into(src: Path, final: Path) -> bool:
    """Hardlink ``src`` to ``final`` (replacing what is there), atomically; False where
    links are not possible (another file system) or the link vanished before the rename."""
    tmp = final.with_name(f"{PART_PREFIX}{final.name[:16]}-{os.getpid()}-{threading.get_ident()}.l")
    try:
        os.link(src, tmp)
        os.replace(tmp, final)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
