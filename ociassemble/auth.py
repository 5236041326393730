"""Credentials and registry authentication state.

Credentials come from the docker config file (``$DOCKER_CONFIG/config.json`` or
``~/.docker/config.json``). Bearer tokens are cached per (realm, service, scope set): a
token granted for pulling one repository says nothing about pushing another, so one token
for everything (as some SDKs do) breaks pull-then-push and cross-repository mounts.

Nothing here ever formats a secret into a message or a log line.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ociassemble.errors import AuthError
from ociassemble.reference import DOCKER_HUB

_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Credential:
    username: str = field(repr=False)
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # never show secrets, even in a debugger dump
        return "Credential(<redacted>)"


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _normalise_key(key: str) -> str:
    k = re.sub(r"^[a-z]+://", "", key.strip())
    k = k.split("/", 1)[0]
    return k


def _parse_entry(entry: object, where: str, key: str) -> Credential | None:
    if not isinstance(entry, dict):
        return None
    token = entry.get("identitytoken")
    auth = entry.get("auth")
    user = entry.get("username")
    password = entry.get("password")
    if auth:
        try:
            decoded = base64.b64decode(auth, validate=False).decode()
        except (ValueError, UnicodeDecodeError):
            raise AuthError(
                f"the 'auth' value for {key!r} in {where} is not base64 of user:password; "
                "run 'docker login' again or fix the file"
            ) from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise AuthError(
                f"the 'auth' value for {key!r} in {where} does not contain user:password; "
                "run 'docker login' again or fix the file"
            )
    if token:
        return Credential(user or "<token>", "", str(token))
    if user is not None and password is not None:
        return Credential(str(user), str(password))
    return None


def load_credential(host: str, config_path: Path | None = None) -> Credential | None:
    """The credential for ``host`` from the docker config file, or None."""
    path = config_path or docker_config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AuthError(f"cannot read credentials file {path}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise AuthError(f"credentials file {path} is not valid JSON; fix or remove it") from None
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        return None
    wanted = {host}
    if host == DOCKER_HUB:
        wanted.update(_HUB_KEYS)
    for key, entry in auths.items():
        if key in wanted or _normalise_key(key) in wanted:
            cred = _parse_entry(entry, str(path), key)
            if cred:
                return cred
    return None


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

    def secrets(self) -> list[str]:
        with self._lock:
            return [t for t, _ in self._tokens.values()]
