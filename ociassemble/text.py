"""Text from images and servers, made safe to print.

Names that come from an image (paths, directory names, link targets, tags) or from a
server (registry error messages) are data, not text for the terminal: a newline in one
would forge a second ``error:`` line, an escape sequence would recolour or clear the
screen, a bidi override would reorder what is read. :func:`printable` keeps every
printable character and shows every other one escaped, the way Python literals spell
them (``\\n``, ``\\x1b``, ``\\u202e``); a byte that was not UTF-8 (kept by
``surrogateescape`` decoding) is shown as ``\\xNN``, its value.

Messages format such names through :func:`printable` where they are built, and the CLI
passes every line it prints through it once more (it is idempotent: its output holds
only printable characters), so nothing from an image reaches the terminal raw.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a raw byte kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: object, limit: int | None = None) -> str:
    """``text`` with every non-printable character escaped; cut to ``limit`` characters
    (of the escaped form, marked with ``...``) when given."""
    s = str(text)
    if not s.isprintable():
        s = "".join(ch if ch.isprintable() else _escape(ch) for ch in s)
    if limit is not None and len(s) > limit:
        s = s[: max(0, limit - 3)] + "..."
    return s


def quoted(text: object) -> str:
    """``printable`` in single quotes, for a name inside a sentence."""
    return "'" + printable(text) + "'"
