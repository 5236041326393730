"""One assertion for every bad-input case: one clear ``error:`` line, no traceback, a
non-zero exit, nothing written at the destination, no secret anywhere in the output."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path


def assert_one_line_error(res: subprocess.CompletedProcess[str], pattern: str, *, code: int | None = None,
                          secrets: Iterable[str] = (), untouched: Iterable[Path] = ()) -> None:
    """``pattern`` is a regular expression searched in the single stderr line.

    ``untouched`` are paths that must not exist after the run (the destination, a layout
    the run would have created); ``secrets`` must appear in neither stdout nor stderr.
    """
    err = res.stderr
    assert res.returncode != 0, f"exit 0 for a bad input; stdout={res.stdout!r} stderr={err!r}"
    if code is not None:
        assert res.returncode == code, (res.returncode, err)
    assert "Traceback" not in err and "Traceback" not in res.stdout, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    assert not any(ord(ch) < 32 and ch != "\t" for ch in lines[0]), f"control characters in {lines[0]!r}"
    for s in secrets:
        assert s not in err and s not in res.stdout, "a secret was printed"
    for p in untouched:
        assert not p.exists(), f"{p} was written"
