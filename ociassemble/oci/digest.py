"""Digests, and readers that refuse to hand out unverified bytes as final.

Blobs are content-addressed: a blob is only trusted once its sha256 and its size match the
descriptor that named it. :class:`VerifyingReader` checks both while bytes stream through,
and raises :class:`DigestMismatch` at the end of the stream (or as soon as more bytes than
promised arrive), so callers never need the whole blob in memory.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ociassemble.errors import DigestMismatch, ManifestError

_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
CHUNK = 1 << 20


class Readable(Protocol):
    """Anything read as a stream: files, HTTP bodies, decompressors, verifying readers."""

    def read(self, n: int = -1, /) -> bytes: ...


class ViewReadable(Protocol):
    """A stream whose pieces may be views of its own buffers (the inflated layer, whose
    bodies pass on without copies)."""

    def read(self, n: int = -1, /) -> bytes | memoryview: ...


def blob_path(root: Path, digest: str) -> Path:
    """Where a content-addressed root (an OCI layout, the store) keeps the blob ``digest``:
    ``blobs/<algorithm>/<hex>``, as the image-layout spec lays it out."""
    algo, _, hexd = digest.partition(":")
    return root / "blobs" / algo / hexd


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(value: str, what: str = "digest") -> str:
    """Validate a digest string; only sha256 is produced by the registries we target."""
    if not isinstance(value, str) or not _DIGEST_RE.match(value):
        raise ManifestError(
            f"{what} {value!r} is not a sha256 digest (expected 'sha256:' and 64 hex digits)"
        )
    return value


LOCAL_DAMAGE = "the file is corrupt (damaged or truncated): copy the layout again"
_REMOTE_ADVICE = "the source is corrupt or was changed while reading: retry, and report it if it stays"


def verify_bytes(data: bytes, digest: str, size: int | None, what: str, local: bool = False) -> bytes:
    """``local``: the bytes are a file on this machine, where retrying changes nothing."""
    advice = LOCAL_DAMAGE if local else _REMOTE_ADVICE
    if size is not None and len(data) != size:
        raise DigestMismatch(f"{what} {digest} has {len(data)} bytes but its descriptor says {size}; {advice}")
    actual = sha256_digest(data)
    if actual != digest:
        raise DigestMismatch(f"{what} should have digest {digest} but its bytes hash to {actual}; {advice}")
    return data


class VerifyingReader:
    """File-like reader over a byte stream that verifies size and digest as it goes.

    ``read`` returns bytes before the end is reached (that is what streaming means), so a
    consumer must treat everything it derived as provisional until ``read`` has returned
    ``b""`` without raising: that is the point where the whole blob has been verified.
    """

    def __init__(self, raw: Readable, digest: str, size: int | None, what: str = "blob", local: bool = False):
        self._raw = raw
        self.local = local  # a file here: damaged, not "cut short", and retrying changes nothing
        self.digest = digest
        self.size = size
        self.what = what
        self._hash = hashlib.sha256()
        self.count = 0
        self.verified = False

    def read(self, n: int = -1) -> bytes:
        if self.verified:
            return b""
        if n is None or n < 0:
            parts = []
            while chunk := self.read(CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        data = self._raw.read(n)
        if data:
            self.count += len(data)
            if self.size is not None and self.count > self.size:
                raise DigestMismatch(
                    f"{self.what} {self.digest} is longer than the {self.size} bytes its descriptor promises; "
                    + (LOCAL_DAMAGE if self.local else "the source is corrupt: retry, or report it")
                )
            self._hash.update(data)
            return data
        self._finish()
        return b""

    def _finish(self) -> None:
        if self.size is not None and self.count != self.size:
            raise DigestMismatch(
                f"{self.what} {self.digest} ended after {self.count} of {self.size} bytes; "
                + (LOCAL_DAMAGE if self.local else "the transfer was cut short: retry")
            )
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self.digest:
            raise DigestMismatch(
                f"{self.what} should have digest {self.digest} but its bytes hash to {actual}; "
                + (LOCAL_DAMAGE if self.local else "the source is corrupt: retry, and report it if it stays")
            )
        self.verified = True

    def drain(self) -> None:
        """Read to the end so the digest check runs even if the consumer stopped early."""
        while self.read(CHUNK):
            pass


class HashingReader:
    """Counts and hashes what is read through it (a decompressed layer, whose sha256 is its
    diff_id; a local file on its way to the spool)."""

    def __init__(self, raw: Any):
        self._raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._raw.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class HashingWriter:
    """Forwards writes to ``sink`` while counting bytes and computing sha256."""

    def __init__(self, sink: BinaryIO | None):
        self._sink = sink
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        if self._sink is not None:
            self._sink.write(data)
        return len(data)

    def flush(self) -> None:
        if self._sink is not None:
            self._sink.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def iter_file(f: BinaryIO, chunk: int = CHUNK) -> Iterator[bytes]:
    while data := f.read(chunk):
        yield data
