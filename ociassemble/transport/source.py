"""Where images come from: a registry or an OCI image layout, behind one interface.

The engine asks a :class:`Source` for manifests and verified blob streams and never needs
to know where they live.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ociassemble.errors import ManifestError, NotFound, OciAssembleError
from ociassemble.oci.digest import VerifyingReader, blob_path, sha256_digest, verify_bytes
from ociassemble.oci.model import (
    ANNOTATION_REF_NAME,
    INDEX_TYPES,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    sniff_media_type,
)
from ociassemble.oci.reference import LayoutRef, RegistryRef
from ociassemble.text import printable
from ociassemble.transport.registry.auth import Credential
from ociassemble.transport.registry.client import ClientOptions, RegistryClient
from ociassemble.transport.registry.credentials import CredentialOptions, find_credential

CONFIG_LIMIT = 16 << 20


class Source(ABC):
    """Where an image's manifests and blobs come from. What the engine must know of a
    transport is asked here (``local``, ``mount_origin``, ``index``), never by its type."""

    label: str
    local = False  # blobs are files on this machine already: a store need not copy them
    keeps_manifests = True  # False: the manifest read is made from other files (a docker archive)

    @abstractmethod
    def manifest(self, reference: str | None = None) -> tuple[bytes, str]:
        """Raw bytes and media type of the manifest named by ``reference`` (default: own ref)."""

    @abstractmethod
    @contextmanager
    def open_blob(self, desc: Descriptor) -> Iterator[VerifyingReader]:
        """A stream of the blob that verifies digest and size as it is read."""

    def top_digest(self) -> str | None:
        """The digest the reference names now (index or manifest), as cheaply as possible."""
        return None

    def mount_origin(self) -> tuple[str, str] | None:
        """(registry host, repository) a destination on that host could mount blobs from."""
        return None

    def index(self, digest: str) -> list[Any] | None:
        """A layer's entries (headers) remembered from an earlier read, if any."""
        return None

    def registry(self) -> tuple[RegistryClient, str] | None:
        """The registry client and repository behind this source, if it is one (artifacts
        that refer to its images are looked for and published there)."""
        return None

    def layer_index(self, digest: str) -> tuple[bytes, bytes | None] | None:
        """A layer's full index (offsets, body hashes, access points) where one is known: its
        JSON and access points as stored (see ociassemble/layers/layerindex.py)."""
        return None

    uses_indexes = True  # may layer indexes (and eStargz TOCs) serve this source? (not with --no-index)

    def open_range(self, desc: Descriptor) -> Any:
        """The blob as a seekable file whose bytes are fetched as read (partial reads)."""
        return RangeFile(lambda a, b: self._range(desc, a, b), desc.size)

    def _range(self, desc: Descriptor, start: int, end: int) -> bytes:
        with self.open_blob(desc) as r:  # no partial reads here: the bytes before are read and dropped
            left = start
            while left:
                left -= len(r.read(min(left, 1 << 20)))
            return bytes(r.read(end - start))

    def put_index(self, digest: str, diff_id: str, entries: list[Any]) -> None:  # noqa: B027 - optional
        """Remember a layer's entries after a verified read (a store keeps them)."""

    def read_blob(self, desc: Descriptor, limit: int = CONFIG_LIMIT) -> bytes:
        if desc.size > limit:
            raise ManifestError(f"{self.label}: blob {desc.digest} is {desc.size} bytes, too large for a config")
        with self.open_blob(desc) as r:
            data = r.read()
        return verify_bytes(data, desc.digest, desc.size, f"{self.label} blob")


class RegistrySource(Source):
    def __init__(self, ref: RegistryRef, client: RegistryClient):
        self.ref = ref
        self.client = client
        self.label = str(ref)

    def manifest(self, reference: str | None = None) -> tuple[bytes, str]:
        raw, mt, _ = self.client.get_manifest(self.ref.repository, reference or self.ref.reference)
        return raw, mt

    def top_digest(self) -> str | None:
        if self.ref.digest:
            return self.ref.digest
        return self.client.manifest_exists(self.ref.repository, self.ref.reference)  # one HEAD

    def mount_origin(self) -> tuple[str, str] | None:
        return self.client.host, self.ref.repository

    @contextmanager
    def open_blob(self, desc: Descriptor) -> Iterator[VerifyingReader]:
        with self.client.open_blob(self.ref.repository, desc) as r:
            yield r

    def _range(self, desc: Descriptor, start: int, end: int) -> bytes:
        return self.client.get_range(self.ref.repository, desc, start, end)

    def registry(self) -> tuple[RegistryClient, str] | None:
        return self.client, self.ref.repository


class LayoutSource(Source):
    local = True

    def __init__(self, ref: LayoutRef):
        self.ref = ref
        self.root = Path(ref.path)
        self.label = str(ref)
        if not (self.root / "index.json").is_file():
            raise NotFound(f"{ref.path} is not an OCI image layout (no index.json); check the path")

    def _blob_path(self, digest: str) -> Path:
        return blob_path(self.root, digest)

    def manifest(self, reference: str | None = None) -> tuple[bytes, str]:
        if reference and reference.startswith("sha256:"):
            raw = self._read(reference, what="manifest")
            return raw, sniff_media_type(raw, None)
        if self.ref.digest and reference is None:
            raw = self._read(self.ref.digest, what="manifest")
            return raw, sniff_media_type(raw, None)
        index_raw, index = self._index()
        tag = reference or self.ref.tag
        matches = [d for d in index.manifests
                   if (tag is None or d.annotations.get(ANNOTATION_REF_NAME) == tag)]
        if not matches:
            have = sorted({str(d.annotations.get(ANNOTATION_REF_NAME, "")) for d in index.manifests} - {""})
            raise NotFound(
                f"OCI layout {self.root} has no image tagged {tag!r}; it has: "
                f"{', '.join(printable(h) for h in have) or 'none'}"
            )
        if len(matches) > 1 and tag is None:
            if all(d.platform for d in matches):
                # an untagged multi-platform layout behaves like an index
                return index_raw, "application/vnd.oci.image.index.v1+json"
            raise ManifestError(f"OCI layout {self.root} holds several images; name one with oci:PATH:TAG")
        d = matches[0]
        raw = self._read(d.digest, d.size, f"the manifest tagged {tag!r}" if tag else "the manifest")
        return raw, sniff_media_type(raw, d.media_type)

    def _index(self) -> tuple[bytes, Index]:
        """index.json, parsed; a broken one is named as the file it is."""
        path = self.root / "index.json"
        raw = path.read_bytes()
        try:
            return raw, Index.parse(raw)
        except ManifestError as e:
            raise ManifestError(f"{path}: {e}") from None

    def top_digest(self) -> str | None:
        if self.ref.digest:
            return self.ref.digest
        try:
            index = Index.parse((self.root / "index.json").read_bytes())
        except (OSError, ManifestError):
            return None
        hits = [d.digest for d in index.manifests if d.annotations.get(ANNOTATION_REF_NAME) == self.ref.tag]
        return hits[0] if len(hits) == 1 else None

    def _missing(self, digest: str, what: str) -> NotFound:
        return NotFound(f"OCI layout {self.root} lacks {what} {digest} (no file {self._blob_path(digest)}); "
                        "the layout is incomplete: copy the image into it again")

    def _read(self, digest: str, size: int | None = None, what: str = "blob") -> bytes:
        p = self._blob_path(digest)
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            raise self._missing(digest, what) from None
        return verify_bytes(raw, digest, size, f"{self.label} blob", local=True)

    def open_range(self, desc: Descriptor) -> Any:
        try:
            return open(self._blob_path(desc.digest), "rb")
        except FileNotFoundError:
            raise self._missing(desc.digest, "blob") from None

    @contextmanager
    def open_blob(self, desc: Descriptor) -> Iterator[VerifyingReader]:
        p = self._blob_path(desc.digest)
        try:
            f = open(p, "rb")
        except FileNotFoundError:
            raise self._missing(desc.digest, "blob") from None
        with f:
            yield VerifyingReader(f, desc.digest, desc.size, f"{self.label} blob", local=True)


@dataclass
class ResolvedImage:
    """One platform's image: its manifest, config, and where its blobs come from."""

    role: str
    source: Source
    manifest: Manifest
    config: ImageConfig
    index_digest: str | None

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def name(self) -> str:
        return self.source.label


Clients = dict[tuple[str, Credential | None], RegistryClient]


def registry_client(ref: RegistryRef, *, options: ClientOptions | None = None, creds: CredentialOptions | None = None,
                    clients: Clients | None = None, credential: Credential | None = None) -> RegistryClient:
    """One client per (host, credential), shared so that tokens and sessions are reused
    (and one token can hold pull on a source and push on a target for mounts).
    ``credential`` overrides the lookup (``login`` checks the one it was given)."""
    credential = credential or find_credential(ref.host, ref.repository, creds)
    key = (ref.host, credential)
    if clients is not None and key in clients:
        return clients[key]
    # loopback: probe for HTTPS first and fall back to plain HTTP, as docker does
    client = RegistryClient(ref.host, plain_http=None if ref.is_loopback else False, credential=credential,
                            options=options)
    if clients is not None:
        clients[key] = client
    return client


def resolve_image(role: str, source: Source, platform: Platform | None) -> ResolvedImage:
    """Fetch the manifest (choosing a platform from an index) and the config."""
    try:
        raw, mt = source.manifest()
    except NotFound as e:
        raise NotFound(f"{role} image {source.label}: {e}") from None
    index_digest = None
    if mt in INDEX_TYPES:
        index = Index.parse(raw, mt)
        index_digest = sha256_digest(raw)
        desc = index.select(platform or Platform("linux", "amd64"))
        raw, mt = source.manifest(desc.digest)
        verify_bytes(raw, desc.digest, desc.size, f"{role} manifest")
    try:
        manifest = Manifest.parse(raw, mt)
    except ManifestError as e:
        raise ManifestError(f"{role} image {source.label}: {e}") from None
    try:
        config = ImageConfig.parse(source.read_blob(manifest.config))
    except OciAssembleError as e:
        raise type(e)(f"{role} image {source.label}: config: {e}") from None
    if len(config.diff_ids) != len(manifest.layers):
        raise ManifestError(
            f"{role} image {source.label} lists {len(manifest.layers)} layers but its config has "
            f"{len(config.diff_ids)} diff_ids; the image is malformed"
        )
    if platform is not None and index_digest is None:
        have = config.platform
        if (have.os, have.architecture) != (platform.os, platform.architecture):
            raise ManifestError(
                f"{role} image {source.label} is for {have}, not the requested {platform}; pick a "
                "matching image or --platform"
            )
    return ResolvedImage(role, source, manifest, config, index_digest)


class Positioned:
    """A read-only file with a position and a known size (``read`` is the subclass's)."""

    size: int
    _pos: int = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset if whence == 0 else self._pos + offset if whence == 1 else self.size + offset
        return self._pos

    def read(self, n: int = -1) -> bytes:
        raise NotImplementedError

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        """Nothing to let go of by default."""

    def __enter__(self) -> Positioned:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class RangeFile(Positioned):
    """A blob as a seekable read-only file whose bytes are fetched in aligned pieces as they
    are read (what an access point of a layer index needs), the last few pieces kept."""

    PIECE = int(os.environ.get("OCIASSEMBLE_RANGE_PIECE", 4 << 20))  # bytes a Range request asks for

    def __init__(self, fetch: Any, size: int, keep_bytes: int = 8 << 20):
        self._fetch = fetch
        self.size = size
        self._pos = 0
        self._pieces: dict[int, bytes] = {}
        # the inflater goes back to an access point before each body: recent pieces are kept
        # (bounded memory) so that bodies close together cost one fetch
        self._keep = max(3, keep_bytes // self.PIECE)  # an access point is at most a spacing (a piece) back
        self.fetched = 0

    def span(self, start: int, end: int) -> bytes:
        """Exactly these bytes, in one request of their own (a footer, a table of contents:
        small reads that aligned pieces would make whole pieces of)."""
        got = self._fetch(start, min(end, self.size))
        self.fetched += len(got)
        return got  # type: ignore[no-any-return]

    def _piece(self, k: int) -> bytes:
        got = self._pieces.pop(k, None)
        if got is not None:
            self._pieces[k] = got  # most recently used last
        else:
            start = k * self.PIECE
            got = self._fetch(start, min(self.size, start + self.PIECE))
            self.fetched += len(got)
            if len(self._pieces) >= self._keep:
                self._pieces.pop(next(iter(self._pieces)))
            self._pieces[k] = got
        return got

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self._pos + n)
        out = bytearray()
        while self._pos < end:
            k, at = divmod(self._pos, self.PIECE)
            piece = self._piece(k)
            chunk = piece[at:at + (end - self._pos)]
            if not chunk:
                break
            out += chunk
            self._pos += len(chunk)
        return bytes(out)

    def close(self) -> None:
        self._pieces.clear()
