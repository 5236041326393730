"""Coverage-guided fuzzing of the layer path with atheris (by hand, not in CI).

A blob's bytes go where a registry's would: ``open_decompressed`` (gzip, zstd or plain, by
magic bytes) and then ``scan_layer`` (tar headers, pax records, GNU long names and sparse
maps, through the module's hardened ``tarfile`` subclass). Any exception other than the
tool's own :class:`OciAssembleError` is a crash; libFuzzer keeps the input that caused it.

    pip install atheris
    python3 fuzz/fuzz_layer.py fuzz-corpus -max_total_time=600 -rss_limit_mb=1024 -timeout=10 \
        -artifact_prefix=fuzz-crashes/

The corpus directory is seeded with a few small layers (plain, gzip, zstd; ustar, GNU and
pax headers, a sparse file) when it is empty. ``-timeout`` and ``-rss_limit_mb`` make slow
or memory-hungry inputs count as crashes too. The hypothesis tests in tests/test_fuzz.py
run in CI; this harness is for longer, coverage-guided runs.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import sys
import tarfile
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout, not an installed copy

with atheris.instrument_imports(include=["ociassemble"]):
    from ociassemble.errors import OciAssembleError
    from ociassemble.layers.compression import open_decompressed
    from ociassemble.layers.spool import Spool
    from ociassemble.layers.tarscan import scan_layer

atheris.instrument_func(tarfile.TarInfo.frombuf.__func__)  # the stdlib's header parsing, fed by tarscan
for name in ("_proc_member", "_proc_builtin", "_proc_gnulong", "_proc_gnusparse_01", "_apply_pax_info",
             "_decode_pax_field"):
    atheris.instrument_func(getattr(tarfile.TarInfo, name))
atheris.instrument_func(tarfile.nti)
atheris.instrument_func(tarfile.nts)

SPOOL = Spool(Path(tempfile.mkdtemp(prefix="ociassemble-fuzz-")), memory_cap=1 << 20)
LIMIT = 64 << 20  # inflated bytes read per input: a bomb is bounded, not a crash


class _Capped:
    def __init__(self, src: object) -> None:
        self._src = src
        self._n = 0

    def read(self, n: int = -1) -> bytes:
        if self._n >= LIMIT:
            return b""
        data = self._src.read(n)  # type: ignore[attr-defined]
        self._n += len(data)
        return data


def _fix_checksums(data: bytes) -> bytes:
    """Every 512-byte block given the checksum a header there would need: random bytes
    rarely get one right, and without it tarfile stops at the first header."""
    out = bytearray(data)
    for at in range(0, len(out) - 511, 512):
        block = out[at : at + 512]
        block[148:156] = b" " * 8
        out[at + 148 : at + 156] = b"%06o\0 " % (sum(block) & 0o777777)
    return bytes(out)


def test_one(data: bytes) -> None:
    """The first byte picks how the rest arrives: as a blob (any compression framing), or
    as a tar stream with header checksums fixed, plain or gzip-compressed."""
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    if mode:
        rest = _fix_checksums(rest)
        if mode == 2:
            rest = gzip.compress(rest, 1)
    with contextlib.suppress(OciAssembleError):
        scan_layer(_Capped(open_decompressed(io.BytesIO(rest))), lambda p: True, SPOOL, "fuzz layer")


def seeds() -> list[bytes]:
    out = []
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            for name, kind, data in (("opt", tarfile.DIRTYPE, b""), ("opt/a", tarfile.REGTYPE, b"hello"),
                                     ("opt/" + "long/" * 30 + "f", tarfile.REGTYPE, b"x" * 600),
                                     ("opt/l", tarfile.SYMTYPE, b""), ("opt/h", tarfile.LNKTYPE, b"")):
                ti = tarfile.TarInfo(name)
                ti.type, ti.size = kind, len(data)
                ti.linkname = "opt/a" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
                if fmt == tarfile.PAX_FORMAT:
                    ti.pax_headers = {"SCHILY.xattr.user.k": "v", "mtime": "1.5"}
                tf.addfile(ti, io.BytesIO(data))
        out.append(buf.getvalue())
    out.append(gzip.compress(out[2]))
    try:
        import zstandard

        out.append(zstandard.ZstdCompressor(write_checksum=True).compress(out[1]))
    except ImportError:
        pass
    return out


def main() -> None:
    for a in sys.argv[1:]:
        if a.startswith("-artifact_prefix=") and a.endswith("/"):
            Path(a.partition("=")[2]).mkdir(parents=True, exist_ok=True)
    dirs = [a for a in sys.argv[1:] if not a.startswith("-")]
    if dirs:
        corpus = Path(dirs[0])
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(corpus.iterdir()):
            for i, seed in enumerate(seeds()):
                plain = seed[257:262] == b"ustar"
                (corpus / f"seed-{i}").write_bytes(bytes([1 if plain else 0]) + seed)
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
