"""Layer compression: detection by magic bytes, streaming decompression, fixed compressors.

gzip goes through ISA-L (``isal``): measured on this project's 2-core machine on
binary-like data that compresses ~2.2x, ISA-L level 2 compresses at ~860 MB/s and
decompresses at ~950 MB/s, against zlib's 155/500 MB/s and zlib-ng's 430/850 MB/s (level 1).
Output uses a fixed level so that the same tar stream always gives the same blob.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Protocol

import zstandard
from isal import igzip, isal_zlib

from ociassemble.errors import OciAssembleError
from ociassemble.oci.digest import Readable

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
READ_CHUNK = 1 << 20
OUT_CHUNK = 4 << 20
GZIP_LEVEL = 2  # ISA-L levels are 0-3; 2 matched level 3's ratio here at 2.3x its speed
ZSTD_DEFAULT_LEVEL = 3



class CorruptLayer(OciAssembleError):
    pass


class _GzipReader:
    """Streaming gzip reader over ISA-L's own gzip reader (multi-member, zero padding after
    the last member as gzip(1) allows). It inflates into a buffer it reuses, with the GIL
    released: ~1.2 GB/s here, against ~0.75 GB/s for ``decompressobj``, whose output is a
    new bytes object per call. Reads hand out bounded pieces, so a small blob that inflates
    to gigabytes never sits in memory at once.
    """

    def __init__(self, raw: Readable, first: bytes):
        self._f = igzip.IGzipFile(fileobj=_Prefixed(first, raw), mode="rb")

    def read(self, n: int = -1) -> bytes:
        try:
            return self._f.read(OUT_CHUNK if n is None or n < 0 else n)
        except EOFError:
            raise CorruptLayer("a gzip layer ends in the middle of its data; the blob is truncated") from None
        except (igzip.BadGzipFile, isal_zlib.error) as e:
            raise CorruptLayer(f"a gzip layer is corrupt ({e})") from None


class _Prefixed:
    def __init__(self, first: bytes, raw: Readable):
        self._first = first
        self._raw = raw

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        if self._first:
            if n < 0 or n >= len(self._first):
                out, self._first = self._first, b""
                return out
            out, self._first = self._first[:n], self._first[n:]
            return out
        return self._raw.read(n)


def read_exact(src: Readable, n: int) -> bytes:
    """Exactly ``n`` bytes (fewer only at the end of the stream), whatever sizes ``src``
    returns: compressors must see the same pieces on every run for the same output bytes."""
    data = src.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = src.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def is_zstd(head: bytes) -> bool:
    """A zstd frame, or a skippable frame (magic 0x184D2A5?) that a zstd stream may start with."""
    return head == ZSTD_MAGIC or (len(head) == 4 and head[0] & 0xF0 == 0x50 and head[1:] == b"\x2a\x4d\x18")


def open_decompressed(raw: Readable) -> Readable:
    """Wrap a blob stream in the decompressor its magic bytes call for."""
    head = read_exact(raw, 4)
    if head.startswith(GZIP_MAGIC):
        return _GzipReader(raw, head)
    if is_zstd(head):
        frames = _ZstdFrames(_Prefixed(head, raw))
        reader = zstandard.ZstdDecompressor().stream_reader(frames, read_across_frames=True, read_size=READ_CHUNK)
        return _ZstdReader(reader, frames)
    return _Prefixed(head, raw)


class _ZstdFrames:
    """The compressed bytes on their way to the decompressor, with zstd's frame layout
    followed (frame and block headers only; block contents are skipped by their sizes), to
    tell whether the stream ended where a frame ends: python-zstandard's reader ends
    quietly, with what it has, on a stream cut short in the middle of a frame."""

    def __init__(self, src: Readable):
        self._src = src
        self._state = "magic"
        self._head = bytearray()  # the header being collected
        self._want = 4  # its length
        self._skip = 0  # content bytes to pass over first
        self._checksum = False

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if self._state != "unknown":
            self._follow(memoryview(data))
        return data

    def at_frame_end(self) -> bool:
        # after bytes that are not a frame, the decompressor itself has raised
        return self._state == "unknown" or (self._state == "magic" and not self._head and not self._skip)

    def _follow(self, data: memoryview) -> None:
        i = 0
        while i < len(data) and self._state != "unknown":
            if self._skip:
                k = min(self._skip, len(data) - i)
                self._skip -= k
                i += k
                continue
            k = min(self._want - len(self._head), len(data) - i)
            self._head += data[i : i + k]
            i += k
            if len(self._head) == self._want:
                self._header(int.from_bytes(self._head, "little"))
                self._head.clear()

    def _header(self, value: int) -> None:
        if self._state == "magic":
            if value == 0xFD2FB528:
                self._state, self._want = "frame", 1
            elif value & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._want = "skippable", 4
            else:
                self._state = "unknown"
        elif self._state == "skippable":  # its size, then that many bytes
            self._skip = value
            self._state, self._want = "magic", 4
        elif self._state == "frame":  # the frame header descriptor
            single = value >> 5 & 1
            self._checksum = bool(value & 4)
            self._skip = (0 if single else 1) + (0, 1, 2, 4)[value & 3] + (single, 2, 4, 8)[value >> 6]
            self._state, self._want = "block", 3
        else:  # a block header: last-block bit, type (raw, RLE, compressed), size
            last, kind, size = value & 1, value >> 1 & 3, value >> 3
            self._skip = (1 if kind == 1 else size) + (4 if last and self._checksum else 0)
            if last:
                self._state, self._want = "magic", 4


class FrameWalker(_ZstdFrames):
    """zstd's frame layout followed over one frame (or skippable frame) only: how many of the
    bytes offered belong to it, and whether it has ended, so that a frame can be handed to a
    decompressor alone and where the next starts is known exactly."""

    def __init__(self) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self.started = False
        self.ended = False

    def consume(self, data: memoryview) -> int:
        i = 0
        while i < len(data) and not self.ended:
            if self._state == "unknown":
                raise CorruptLayer("a zstd layer holds bytes that are not a zstd frame")
            if self._skip:
                k = min(self._skip, len(data) - i)
                self._skip -= k
                i += k
            else:
                k = min(self._want - len(self._head), len(data) - i)
                self._head += data[i : i + k]
                i += k
                if len(self._head) == self._want:
                    self.started = True
                    self._header(int.from_bytes(self._head, "little"))
                    self._head.clear()
            if self.started and self._state == "magic" and not self._skip and not self._head:
                self.ended = True
        return i


class _ZstdReader:
    def __init__(self, reader: zstandard.ZstdDecompressionReader, frames: _ZstdFrames):
        self._r = reader
        self._frames = frames

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._r.read(n if n >= 0 else READ_CHUNK * 8)
        except zstandard.ZstdError as e:
            raise CorruptLayer(f"a zstd layer is corrupt ({e})") from None
        if not data and n != 0 and not self._frames.at_frame_end():
            raise CorruptLayer("a zstd layer ends in the middle of a frame; the blob is truncated")
        return data


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _ZstdCompressor:
    def __init__(self, level: int, threads: int):
        self._c = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True,
                                           write_content_size=False).compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def flush(self) -> bytes:
        return self._c.flush()


class CompressionSpec:
    """What new layers are written with: ``gzip`` (default) or ``zstd[:level]``."""

    def __init__(self, kind: str = "gzip", level: int | None = None):
        self.kind = kind
        self.level = level

    @classmethod
    def parse(cls, text: str) -> CompressionSpec:
        kind, _, lvl = text.partition(":")
        if kind not in ("gzip", "zstd"):
            raise OciAssembleError(f"compression {text!r} is not gzip or zstd[:level]")
        if kind == "gzip" and lvl:
            raise OciAssembleError("gzip output uses a fixed level for reproducible digests; use plain 'gzip'")
        level = None
        if lvl:
            if not lvl.isdigit() or not 1 <= int(lvl) <= 19:
                raise OciAssembleError(f"zstd level {lvl!r} must be a number from 1 to 19")
            level = int(lvl)
        return cls(kind, level)

    def compressor(self) -> Compressor:
        if self.kind == "zstd":
            # threads=2 is fixed (not the core count): zstd's output depends on whether it
            # runs multi-threaded, so a fixed value keeps digests the same on any machine.
            return _ZstdCompressor(self.level or ZSTD_DEFAULT_LEVEL, 2)
        return isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)

    def describe(self) -> str:
        return f"zstd:{self.level or ZSTD_DEFAULT_LEVEL}" if self.kind == "zstd" else f"gzip (isal level {GZIP_LEVEL})"


class CompressingWriter:
    """Write-side pipe: bytes in, compressed bytes out to ``sink``."""

    def __init__(self, sink: BinaryIO, spec: CompressionSpec):
        self._sink = sink
        self._c = spec.compressor()
        self._buf: list[bytes] = []
        self._n = 0

    def write(self, data: bytes) -> int:
        # batch small tar headers so the compressor sees large buffers (and releases the GIL)
        self._buf.append(bytes(data))
        self._n += len(data)
        if self._n >= READ_CHUNK:
            self._emit()
        return len(data)

    def _emit(self) -> None:
        if self._buf:
            out = self._c.compress(b"".join(self._buf))
            if out:
                self._sink.write(out)
            self._buf, self._n = [], 0

    def close(self) -> None:
        self._emit()
        self._sink.write(self._c.flush())


class ReadAhead:
    """Runs a reader in its own thread, a few chunks ahead of the consumer.

    Decompression (ISA-L) and hashing release the GIL, so with a big layer one core
    inflates and hashes while the other parses tar headers and spools file bodies: the
    single largest layer otherwise bounds a compose to one core.
    """

    def __init__(self, raw: Readable, chunk: int = OUT_CHUNK, depth: int = 6):
        import queue
        import threading

        self._raw = raw
        self._chunk = chunk
        self._q: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._buf = b""
        self._done = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._raw.read(self._chunk)
                self._put(data)
                if not data:
                    return
        except BaseException as e:  # handed to the consumer, raised there
            self._put(e)

    def _put(self, item: bytes | BaseException) -> None:
        import queue

        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def read(self, n: int = -1) -> bytes:
        if not self._buf and not self._done:
            item = self._q.get()
            if isinstance(item, BaseException):
                self._done = True
                raise item
            if not item:
                self._done = True
            self._buf = item
        if n is None or n < 0:
            parts = [self._buf]
            self._buf = b""
            while chunk := self.read(self._chunk):
                parts.append(chunk)
            return b"".join(parts)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def close(self) -> None:
        """Stop the producer (when the consumer gave up early) and wait for it."""
        self._stop.set()
        self._thread.join(timeout=5)
