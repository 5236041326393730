"""Credentials and registry authentication state.

Where credentials come from is :mod:`ociassemble.transport.registry.credentials`. Bearer tokens are cached
per (realm, service, scope set): a token granted for pulling one repository says nothing
about pushing another, so one token for everything (as some SDKs do) breaks pull-then-push
and cross-repository mounts.

Nothing here ever formats a secret into a message or a log line.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Credential:
    username: str = field(repr=False)
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # never show secrets, even in a debugger dump
        return "Credential(<redacted>)"


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict[str, str]


_PARAM_RE = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


def parse_challenge(header: str) -> Challenge | None:
    """Parse one ``WWW-Authenticate`` challenge (registries send exactly one)."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM_RE.match(rest, pos)
        if not m or m.end() == pos:
            break
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value or "")
        pos = m.end()
    return Challenge(scheme.lower(), params)


class TokenCache:
    """Bearer tokens keyed by (realm, service, sorted scopes), dropped shortly before expiry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, tuple[str, ...]], tuple[str, float]] = {}

    def get(self, realm: str, service: str, scopes: tuple[str, ...]) -> str | None:
        with self._lock:
            hit = self._tokens.get((realm, service, scopes))
            if hit and hit[1] > time.monotonic():
                return hit[0]
            return None

    def put(self, realm: str, service: str, scopes: tuple[str, ...], token: str, ttl: float) -> None:
        with self._lock:
            self._tokens[(realm, service, scopes)] = (token, time.monotonic() + max(ttl - 10, 5))

