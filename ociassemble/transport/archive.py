"""Images in tar files: ``oci-archive:`` (an OCI layout, tarred) and ``docker-archive:``
(what ``docker save`` writes and ``docker load``/``podman load`` take).

Reading never unpacks: the archive's headers are read once to learn where each member's
bytes lie, and a blob is then read in place, verified like any other. Writing is one
streaming pass into a temporary file beside the destination, renamed into place only
when complete: blobs in a fixed order (so the same image gives the same archive), then
the manifests, then the index. A docker-archive holds no manifest, only ``manifest.json``
naming the config and layer files (``blobs/sha256/HEX``, as Docker 25 names them); the
manifest read from one is made from it (Docker schema 2, each layer's digest its file's),
so an image's manifest digest can change on its way through a docker archive (its config
and layers cannot). One that is also an OCI layout (Docker 25's ``docker save``) is read
through its own manifest.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ociassemble.errors import ManifestError, NotFound, OciAssembleError, UsageError
from ociassemble.oci import model
from ociassemble.oci.changeset import normalise
from ociassemble.oci.digest import HashingWriter, VerifyingReader, sha256_digest, verify_bytes
from ociassemble.oci.model import (
    ANNOTATION_REF_NAME,
    INDEX_TYPES,
    OCI_INDEX,
    Descriptor,
    Index,
    canonical_json,
    sniff_media_type,
)
from ociassemble.oci.reference import ArchiveRef, parse_registry_ref
from ociassemble.text import printable
from ociassemble.transport.atomic import part_file
from ociassemble.transport.oserrors import check_writable_dir
from ociassemble.transport.segments import SegmentReader
from ociassemble.transport.sink import Sink
from ociassemble.transport.source import Positioned, Source

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class TarIndex:
    """Where each member of an uncompressed tar file lies, from its headers alone."""

    def __init__(self, path: Path, label: str):
        self.path = path
        self.label = label
        self.members: dict[str, tuple[int, int]] = {}  # name -> (offset of the data, size)
        try:
            with open(path, "rb") as f:
                head = f.read(4)
                if head.startswith(GZIP_MAGIC) or head.startswith(ZSTD_MAGIC):
                    raise UsageError(f"{label} is a compressed file; give the tar archive itself (decompress it "
                                     "first)")
                f.seek(0)
                links: dict[str, str] = {}
                with tarfile.open(fileobj=f, mode="r:") as tf:
                    for m in tf:
                        name = normalise(m.name, f"{label} member")
                        if m.isfile():
                            self.members[name] = (m.offset_data, m.size)
                        elif m.issym() or m.islnk():  # docker save links repeated layers
                            target = m.linkname if m.islnk() else os.path.join(os.path.dirname(name), m.linkname)
                            links[name] = normalise(target, f"{label} link")
                for name, target in links.items():
                    if target in self.members:
                        self.members[name] = self.members[target]
        except FileNotFoundError:
            raise NotFound(f"{label}: no such file") from None
        except IsADirectoryError:
            raise UsageError(f"{label} is a directory, not an archive (for a layout directory write oci:PATH)") \
                from None
        except tarfile.TarError as e:
            raise ManifestError(f"{label} is not a tar archive ({e})") from None

    def has(self, name: str) -> bool:
        return name in self.members

    def size(self, name: str) -> int:
        return self.members[name][1]

    def read(self, name: str, limit: int = 64 << 20) -> bytes:
        offset, size = self.members[name]
        if size > limit:
            raise ManifestError(f"{self.label}: {printable(name)} is {size} bytes, too big for what it should be")
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def open(self, name: str) -> _Member:
        """A member as a seekable file read in place (a context manager)."""
        return _Member(self.path, *self.members[name])


class _Member(Positioned):
    """One member of a tar file as a seekable read-only file (reads in place, no copy)."""

    def __init__(self, path: Path, offset: int, size: int):
        self._f = open(path, "rb")
        self._base = offset
        self.size = size
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        n = self.size - self._pos if n is None or n < 0 else min(n, self.size - self._pos)
        if n <= 0:
            return b""
        self._f.seek(self._base + self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def close(self) -> None:
        self._f.close()


def _blob_name(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


class _ArchiveSource(Source):
    """Blobs that are members of a tar file, found by digest (:meth:`_member_of`)."""

    local = True
    tar: TarIndex

    def _member_of(self, digest: str) -> str | None:
        raise NotImplementedError

    def _found(self, digest: str) -> str:
        name = self._member_of(digest)
        if name is None or not self.tar.has(name):
            raise NotFound(f"{self.label} lacks blob {digest}; the archive is incomplete")
        return name

    def open_range(self, desc: Descriptor) -> Any:
        return self.tar.open(self._found(desc.digest))

    @contextmanager
    def open_blob(self, desc: Descriptor) -> Iterator[VerifyingReader]:
        with self.tar.open(self._found(desc.digest)) as f:
            yield VerifyingReader(f, desc.digest, desc.size, f"{self.label} blob", local=True)


class OciArchiveSource(_ArchiveSource):
    """An OCI layout in a tar file, read in place."""

    def __init__(self, ref: ArchiveRef):
        self.ref = ref
        self.label = str(ref)
        self.tar = TarIndex(Path(ref.path), self.label)
        if not self.tar.has("index.json"):
            raise NotFound(f"{self.label} is not an OCI archive (no index.json); for what docker save writes use "
                           "docker-archive:")

    def _index(self) -> tuple[bytes, Index]:
        raw = self.tar.read("index.json")
        try:
            return raw, Index.parse(raw)
        except ManifestError as e:
            raise ManifestError(f"{self.label}: index.json: {e}") from None

    def manifest(self, reference: str | None = None) -> tuple[bytes, str]:
        if reference and reference.startswith("sha256:"):
            raw = self._blob(reference, None, "manifest")
            return raw, sniff_media_type(raw, None)
        raw_index, index = self._index()
        tag = reference or self.ref.name
        matches = [d for d in index.manifests if tag is None or d.annotations.get(ANNOTATION_REF_NAME) == tag]
        if not matches:
            have = sorted({str(d.annotations.get(ANNOTATION_REF_NAME, "")) for d in index.manifests} - {""})
            raise NotFound(f"{self.label} has no image tagged {tag!r}; it has: "
                           f"{', '.join(printable(h) for h in have) or 'none'}")
        if len(matches) > 1:
            if all(d.platform for d in matches):
                return raw_index, OCI_INDEX
            raise ManifestError(f"{self.label} holds several images; name one with oci-archive:PATH:TAG")
        d = matches[0]
        raw = self._blob(d.digest, d.size, "manifest")
        return raw, sniff_media_type(raw, d.media_type)

    def top_digest(self) -> str | None:
        try:
            raw, _mt = self.manifest()
        except OciAssembleError:
            return None
        return sha256_digest(raw)

    def _blob(self, digest: str, size: int | None, what: str) -> bytes:
        name = _blob_name(digest)
        if not self.tar.has(name):
            raise NotFound(f"{self.label} lacks {what} {digest}; the archive is incomplete")
        return verify_bytes(self.tar.read(name), digest, size, f"{self.label} blob", local=True)

    def _member_of(self, digest: str) -> str | None:
        return _blob_name(digest)


class DockerArchiveSource(_ArchiveSource):
    """``docker save``'s format: ``manifest.json`` names each image's config and layer files.

    Where the archive is also an OCI layout holding a manifest for that config (Docker 25,
    or ociassemble), that manifest is used as it is; otherwise one is made: Docker schema 2,
    each layer's digest its file's (hashed once when the path does not carry it).
    """

    keeps_manifests = False

    def __init__(self, ref: ArchiveRef):
        self.ref = ref
        self.label = str(ref)
        self.tar = TarIndex(Path(ref.path), self.label)
        if not self.tar.has("manifest.json"):
            raise NotFound(f"{self.label} is not a docker archive (no manifest.json); for an OCI archive use "
                           "oci-archive:")
        try:
            entries = json.loads(self.tar.read("manifest.json"))
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise ValueError("not a list of images")
        except (ValueError, RecursionError) as e:
            raise ManifestError(f"{self.label}: manifest.json is not docker save's format ({e})") from None
        entry = self._pick(entries)
        self.names: dict[str, str] = {}  # digest -> member
        config_name = self._member(entry.get("Config"), "Config")
        config_raw = self.tar.read(config_name)
        config_digest = self._digest_of(config_name, config_raw)
        self.names[config_digest] = config_name
        layer_names = entry.get("Layers")
        if not isinstance(layer_names, list):
            raise ManifestError(f"{self.label}: manifest.json lists no Layers")
        raw = self._from_layout(config_digest)
        if raw is None:
            raw = self._made(config_digest, len(config_raw), [self._member(n, "Layers") for n in layer_names])
        self.raw = raw
        self.digest = sha256_digest(raw)
        self.media_type = sniff_media_type(raw, None)

    def _pick(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        def tags(e: dict[str, Any]) -> list[str]:
            found = e.get("RepoTags")
            return [str(x) for x in found] if isinstance(found, list) else []

        if self.ref.name:
            want = _normal(self.ref.name)
            hits = [e for e in entries if any(_normal(x) == want for x in tags(e))]
            if not hits:
                have = sorted(x for e in entries for x in tags(e))
                raise NotFound(f"{self.label}: no image is tagged {self.ref.name!r}; it has: "
                               f"{', '.join(printable(h) for h in have) or 'no tags'}")
            return hits[0]
        if len(entries) != 1:
            raise ManifestError(f"{self.label} holds {len(entries)} images; name one with docker-archive:PATH:NAME:TAG")
        return entries[0]

    def _member(self, name: object, what: str) -> str:
        if not isinstance(name, str) or not name:
            raise ManifestError(f"{self.label}: manifest.json has a {what} entry that is not a file name")
        path = normalise(name, f"{self.label} manifest.json {what}")
        if not self.tar.has(path):
            raise NotFound(f"{self.label}: manifest.json names {printable(path)}, which the archive lacks")
        return path

    def _digest_of(self, name: str, data: bytes | None = None) -> str:
        """From a ``blobs/sha256/HEX`` path (checked when read), else by hashing the member."""
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "blobs" and len(parts[2]) == 64:
            return f"{parts[1]}:{parts[2]}"
        if data is not None:
            return sha256_digest(data)
        w = HashingWriter(None)
        with self.tar.open(name) as f:
            while chunk := f.read(CHUNK):
                w.write(chunk)
        return w.digest

    def _from_layout(self, config_digest: str) -> bytes | None:
        if not self.tar.has("index.json"):
            return None
        try:
            index = Index.parse(self.tar.read("index.json"))
        except ManifestError:
            return None
        for d in index.manifests:
            name = _blob_name(d.digest)
            if d.media_type in INDEX_TYPES or not self.tar.has(name):
                continue
            raw = verify_bytes(self.tar.read(name), d.digest, d.size, f"{self.label} manifest", local=True)
            try:
                doc = json.loads(raw)
                if doc["config"]["digest"] != config_digest:
                    continue
                layers = [str(layer["digest"]) for layer in doc.get("layers") or []]
            except (ValueError, KeyError, TypeError, RecursionError):
                continue  # not a manifest for this config: the one made from manifest.json serves
            for digest in layers:
                self.names[digest] = _blob_name(digest)
            return raw
        return None

    def _made(self, config_digest: str, config_size: int, layers: list[str]) -> bytes:
        descs = []
        for name in layers:
            with self.tar.open(name) as f:
                head = f.read(4)
            if head.startswith(ZSTD_MAGIC):
                raise ManifestError(f"{self.label}: layer {printable(name)} is zstd, which docker archives do not hold")
            media_type = model.DOCKER_LAYER_GZIP if head.startswith(GZIP_MAGIC) else model.DOCKER_LAYER_TAR
            digest = self._digest_of(name)
            self.names[digest] = name
            descs.append({"mediaType": media_type, "size": self.tar.size(name), "digest": digest})
        return canonical_json({
            "schemaVersion": 2, "mediaType": model.DOCKER_MANIFEST,
            "config": {"mediaType": model.DOCKER_CONFIG, "size": config_size, "digest": config_digest},
            "layers": descs,
        })

    def manifest(self, reference: str | None = None) -> tuple[bytes, str]:
        if reference and reference.startswith("sha256:") and reference != self.digest:
            raise NotFound(f"{self.label} holds no manifest {reference}")
        return self.raw, self.media_type

    def top_digest(self) -> str | None:
        return self.digest

    def _member_of(self, digest: str) -> str | None:
        return self.names.get(digest)


def _normal(name: str) -> str:
    try:
        ref = parse_registry_ref(name)
    except OciAssembleError:
        return name  # another image's malformed tag: it names nothing we look for
    return f"{ref.host}/{ref.repository}:{ref.tag}"


def open_archive_source(ref: ArchiveRef) -> Source:
    return OciArchiveSource(ref) if ref.kind == "oci-archive" else DockerArchiveSource(ref)


# -- writing ----------------------------------------------------------------------------------------------

class ArchiveSink(Sink):
    """Collects what the run publishes, and writes the archive in one pass when the tag
    (the last step) comes: nothing is at the destination before that, and a failure
    leaves it as it was."""

    def __init__(self, ref: ArchiveRef):
        self.ref = ref
        self.path = Path(ref.path)
        self.label = str(ref)
        self.stats = {"skipped": 0, "mounted": 0, "uploaded": 0, "uploaded_bytes": 0}
        self._blobs: dict[str, tuple[Descriptor, Callable[[], Any]]] = {}
        self._manifests: list[tuple[Descriptor, bytes]] = []
        self._written = False
        self._index: TarIndex | None = None
        check_archive_target(self.path)

    def has_blob(self, desc: Descriptor) -> bool:
        """Before the write nothing is there (every archive is written whole); after it, the
        archive's own members answer (``--verify`` asks for the blobs it does not re-read)."""
        if not self._written:
            return False
        if self._index is None:
            self._index = TarIndex(self.path, self.label)
        name = _blob_name(desc.digest)
        return self._index.has(name) and self._index.size(name) == desc.size

    def put_new(self, desc: Descriptor, opener: Callable[[], SegmentReader]) -> None:
        self._blobs.setdefault(desc.digest, (desc, opener))

    def copy_blob(self, desc: Descriptor, source: Source) -> None:
        self._blobs.setdefault(desc.digest, (desc, lambda: source.open_blob(desc)))

    def put_manifest(self, raw: bytes, media_type: str, tag: bool = True) -> None:
        desc = Descriptor(media_type, sha256_digest(raw), len(raw))
        if all(d.digest != desc.digest for d, _ in self._manifests):
            self._manifests.append((desc, raw))
        if tag:
            self._write(desc)

    def holds(self, manifest_digest: str) -> tuple[bool, bool]:
        if not self.path.is_file():
            return False, False
        try:
            src = open_archive_source(self.ref)
            there = src.top_digest() == manifest_digest
        except OciAssembleError:
            return False, False
        return there, there

    def as_source(self) -> Source:
        return open_archive_source(self.ref)

    def abort(self) -> None:
        """A failure after the archive was renamed into place (``--verify``): it goes."""
        if self._written:
            with contextlib.suppress(OSError):
                self.path.unlink()

    # -- the one pass ---------------------------------------------------------------------------------

    def _order(self) -> list[str]:
        """Blob digests in the order the manifests name them (config, then layers), so the
        same image gives the same archive whatever order the run produced them in."""
        order: list[str] = []
        for _desc, raw in self._manifests:
            doc = json.loads(raw)
            if isinstance(doc.get("config"), dict):
                order.append(str(doc["config"]["digest"]))
            order += [str(d["digest"]) for d in doc.get("layers") or []]
        return [*dict.fromkeys(d for d in order if d in self._blobs),
                *sorted(set(self._blobs) - set(order))]

    def _write(self, top: Descriptor) -> None:
        docker = self.ref.kind == "docker-archive"
        if docker and top.media_type in INDEX_TYPES:
            raise UsageError(f"{self.label}: a docker archive holds one image, not an index of platforms; pick one "
                             "with --platform")
        with part_file(self.path.parent) as (fd, tmp):
            with os.fdopen(fd, "wb", closefd=False) as out, tarfile.open(fileobj=out, mode="w",
                                                                          format=tarfile.PAX_FORMAT) as tf:
                if not docker:
                    _add_bytes(tf, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
                for d in ("blobs", "blobs/sha256"):
                    _add_dir(tf, d)
                for digest in self._order():
                    desc, opener = self._blobs[digest]
                    if docker and desc.media_type == model.OCI_LAYER_ZSTD:
                        raise UsageError(f"{self.label}: docker load cannot read zstd layers; write gzip layers "
                                         "(--compression gzip) for a docker archive")
                    with opener() as body:
                        _add_stream(tf, _blob_name(digest), desc.size, body)
                    self.stats["uploaded"] += 1
                    self.stats["uploaded_bytes"] += desc.size
                if docker:  # docker load reads manifest.json alone (the manifest itself is not kept)
                    _add_bytes(tf, "manifest.json", self._docker_manifest(top))
                else:
                    for desc, raw in self._manifests:
                        _add_bytes(tf, _blob_name(desc.digest), raw)
                    entry: dict[str, object] = top.to_json()
                    if self.ref.name:
                        entry = {**entry, "annotations": {ANNOTATION_REF_NAME: self.ref.name}}
                    _add_bytes(tf, "index.json", canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                                 "manifests": [entry]}))
            os.fsync(fd)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
            self._written = True

    def _docker_manifest(self, top: Descriptor) -> bytes:
        raw = next(r for d, r in self._manifests if d.digest == top.digest)
        doc = json.loads(raw)
        name = self.ref.name or ""
        if name and ":" not in name.rsplit("/", 1)[-1]:
            name += ":latest"  # docker load wants NAME:TAG
        tags = [name] if name else []
        return json.dumps([{"Config": _blob_name(str(doc["config"]["digest"])), "RepoTags": tags,
                            "Layers": [_blob_name(str(d["digest"])) for d in doc.get("layers") or []]}],
                          separators=(",", ":")).encode()


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime = kind, size, 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def _add_dir(tf: tarfile.TarFile, name: str) -> None:
    tf.addfile(_info(name, tarfile.DIRTYPE))


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    tf.addfile(_info(name, size=len(data)), io.BytesIO(data))


def _add_stream(tf: tarfile.TarFile, name: str, size: int, body: Any) -> None:
    """A member of known size from a stream (read in chunks; a verifying reader raises on
    a wrong digest at its end, before the archive is renamed into place)."""
    tf.addfile(_info(name, size=size), _Exact(body, size))


class _Exact:
    """Exactly ``size`` bytes of ``body`` (tarfile reads what the header says), and then its end."""

    def __init__(self, body: Any, size: int):
        self._body = body
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            if self._body.read(1):
                raise OciAssembleError("a blob is longer than its descriptor says")
            return b""
        data: bytes = self._body.read(min(CHUNK, self._left) if n is None or n < 0 else min(n, self._left))
        if not data:
            raise OciAssembleError("a blob ended before the size its descriptor gives")
        self._left -= len(data)
        if self._left == 0:
            self._body.read(1)  # let a verifying reader see its end (and check the digest)
        return data


def check_archive_target(path: Path) -> None:
    """Fail before any work when ``path`` cannot become an archive: a directory in the way,
    a parent that is missing or not writable."""
    if path.is_dir():
        raise UsageError(f"{path} is a directory; an archive destination names a file (for a layout use oci:PATH)")
    check_writable_dir(path.parent if str(path.parent) else Path("."), {"output": path})


__all__ = ["ArchiveSink", "DockerArchiveSource", "OciArchiveSource", "TarIndex", "open_archive_source"]
