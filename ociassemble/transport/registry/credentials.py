"""Finding the credential for a registry the way docker, podman and skopeo store them.

Order, first match wins:

1. ``--creds USER:PASSWORD`` (explicit, for one run);
2. ``OCIASSEMBLE_USERNAME`` / ``OCIASSEMBLE_PASSWORD`` (CI secrets);
3. ``NGC_API_KEY`` for nvcr.io, with NGC's fixed username ``$oauthtoken``;
4. auth files: ``--authfile``, else ``$REGISTRY_AUTH_FILE``,
   ``${XDG_RUNTIME_DIR}/containers/auth.json``, ``$DOCKER_CONFIG/config.json`` and
   ``~/.docker/config.json``, in that order. In each: ``credHelpers[host]``, then the
   ``auths`` entry (most specific key first: ``host/ns/repo`` before ``host``; URL forms
   such as ``https://host/v1/`` are normalised), then ``credsStore``.

A helper is ``docker-credential-<name> get`` with the server on stdin; a username of
``<token>`` means the secret is an identity (OAuth2 refresh) token. Nothing here formats
a secret into a message.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ociassemble.errors import AuthError, UsageError
from ociassemble.oci.reference import DOCKER_HUB
from ociassemble.text import printable, quoted
from ociassemble.transport.atomic import write_atomically
from ociassemble.transport.registry.auth import Credential

NGC_HOST = "nvcr.io"
NGC_USER = "$oauthtoken"
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
HELPER_TIMEOUT = 30
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class CredentialOptions:
    """What the command line says about credentials."""

    creds: str | None = None  # USER:PASSWORD
    authfile: str | None = None


def auth_files(authfile: str | None = None) -> list[Path]:
    if authfile:
        return [Path(authfile)]
    files = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    files.append(docker_config_path())
    return files


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def parse_creds(value: str) -> Credential:
    user, sep, password = value.partition(":")
    if not sep or not user:
        raise UsageError("--creds must be USER:PASSWORD (the password may be empty only with a token)")
    return Credential(user, password)


def find_credential(host: str, repository: str = "", opts: CredentialOptions | None = None) -> Credential | None:
    opts = opts or CredentialOptions()
    if opts.creds:
        return parse_creds(opts.creds)
    user, password = os.environ.get("OCIASSEMBLE_USERNAME"), os.environ.get("OCIASSEMBLE_PASSWORD")
    if user and password is not None:
        return Credential(user, password)
    if host == NGC_HOST and os.environ.get("NGC_API_KEY"):
        return Credential(NGC_USER, os.environ["NGC_API_KEY"])
    for path in auth_files(opts.authfile):
        cred = _from_file(path, host, repository, explicit=bool(opts.authfile))
        if cred is not None:
            return cred
    return None


def _load(path: Path, explicit: bool) -> dict[str, object] | None:
    """The file's JSON object; None when it does not exist (unless named by --authfile).

    Anything else that is not a JSON object of the docker/containers shape is one
    :class:`AuthError` naming the file (and the key), never a TypeError further down."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise UsageError(f"--authfile {printable(path)} does not exist") from None
        return None
    except OSError as e:
        raise AuthError(f"cannot read credentials file {printable(path)}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
        data = json.loads(text) if text.strip() else {}
    except (ValueError, RecursionError):
        raise AuthError(f"credentials file {printable(path)} is not valid JSON; fix or remove it") from None
    if not isinstance(data, dict):
        raise AuthError(f"credentials file {printable(path)} is not a JSON object; fix or remove it")
    for key, kind in (("auths", dict), ("credHelpers", dict), ("credsStore", str)):
        value = data.get(key)
        if value is not None and not isinstance(value, kind):
            raise AuthError(f"credentials file {printable(path)}: {key!r} is {_kind(value)}, not "
                            f"{'an object' if kind is dict else 'a string'}; fix or remove it")
    return data


def _kind(value: object) -> str:
    """What a JSON value is, for a message (never the value itself: it may be a secret)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return "an object"


def _normalise_key(key: str) -> str:
    """``https://host/v1/`` → ``host``; ``host/ns/repo`` stays (containers' namespaced keys)."""
    k = re.sub(r"^[a-z]+://", "", key.strip()).rstrip("/")
    host, _, path = k.partition("/")
    if path in ("v1", "v2") or path.startswith(("v1/", "v2/")):
        return host
    return k


def _keys_for(host: str, repository: str) -> list[str]:
    """Most specific first: host/a/b/c, host/a/b, host/a, host (and Docker Hub's aliases)."""
    hosts = [host] + ([h for h in ("docker.io", "index.docker.io", "registry-1.docker.io") if h != host]
                      if host == DOCKER_HUB else [])
    parts = [p for p in repository.split("/") if p]
    keys = []
    for h in hosts:
        keys += [h + "/" + "/".join(parts[:i]) for i in range(len(parts), 0, -1)]
    keys += hosts
    return keys


def _from_file(path: Path, host: str, repository: str, explicit: bool) -> Credential | None:
    data = _load(path, explicit)
    if not data:
        return None
    helpers = data.get("credHelpers")
    if isinstance(helpers, dict):
        for key in (host, *(_HUB_KEYS if host == DOCKER_HUB else ())):
            name = helpers.get(key)
            if name is not None and not (isinstance(name, str) and name):
                raise AuthError(f"credentials file {printable(path)}: credHelpers[{quoted(key)}] is {_kind(name)}, "
                                "not the name of a credential helper; fix or remove it")
            if name is not None:
                return run_helper(name, key)
    auths = data.get("auths")
    if isinstance(auths, dict):
        by_key: dict[str, tuple[str, object]] = {}
        for key, entry in auths.items():
            by_key.setdefault(_normalise_key(key), (key, entry))  # JSON keys are always strings
        for want in _keys_for(host, repository):
            if want in by_key:
                key, entry = by_key[want]
                cred = _parse_entry(entry, printable(path), key)
                if cred:
                    return cred
    store = data.get("credsStore")
    if isinstance(store, str) and store:
        return run_helper(store, "https://index.docker.io/v1/" if host == DOCKER_HUB else host, missing_ok=True)
    return None


def _parse_entry(entry: object, where: str, key: str) -> Credential | None:
    """One ``auths`` entry. Every field is checked for its type and ``auth`` for strict
    base64 of ``user:password``; a message names the file and the key, never a value."""
    name = f"auths[{quoted(key)}]"

    def bad(field: str, why: str) -> AuthError:
        return AuthError(f"credentials file {where}: {name}.{field} {why}; "
                         "run 'ociassemble login' again or fix the file")

    if not isinstance(entry, dict):
        raise AuthError(f"credentials file {where}: {name} is {_kind(entry)}, not an object; fix or remove it")
    for field in ("auth", "identitytoken", "username", "password"):
        value = entry.get(field)
        if value is not None and not isinstance(value, str):
            raise bad(field, f"is {_kind(value)}, not a string")
    token = entry.get("identitytoken")
    auth = entry.get("auth")
    user = entry.get("username")
    password = entry.get("password")
    if auth:
        try:
            text = "".join(auth.split())
            decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise bad("auth", "is not base64 of user:password") from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise bad("auth", "does not contain user:password")
    if token:
        return Credential(user or "<token>", "", token)
    if user and password is not None:
        return Credential(user, password)
    return None


def run_helper(name: str, server: str, missing_ok: bool = False) -> Credential | None:
    """``docker-credential-<name> get``: None when the helper has nothing for ``server``."""
    if not _HELPER_NAME.fullmatch(name):  # a name, never a path (nor a NUL byte, which exec refuses)
        raise AuthError(f"the docker config names credential helper {printable(name, 60)!r}, which is not a "
                        "helper's name (letters, digits, '.', '_', '-'); fix the file")
    exe = printable(f"docker-credential-{name}")
    try:
        proc = subprocess.run([f"docker-credential-{name}", "get"], input=server.encode(), capture_output=True,
                              timeout=HELPER_TIMEOUT)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise AuthError(f"the docker config names credential helper {name!r}, but {exe} is not on PATH; "
                        "install it or remove the credHelpers entry") from None
    except OSError as e:
        raise AuthError(f"cannot run credential helper {exe}: {e.strerror}") from None
    except subprocess.TimeoutExpired:
        raise AuthError(f"credential helper {exe} did not answer within {HELPER_TIMEOUT} s") from None
    if proc.returncode != 0:
        text = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
        if "credentials not found" in text.lower():
            return None
        raise AuthError(f"credential helper {exe} failed (exit {proc.returncode}); run it by hand to see why")
    try:
        data = json.loads(proc.stdout)
        user, secret = data["Username"], data["Secret"]
        if not isinstance(user, str) or not isinstance(secret, str):
            raise TypeError
    except (ValueError, KeyError, TypeError, RecursionError):
        raise AuthError(f"credential helper {exe} answered something that is not its JSON format") from None
    if user == "<token>":
        return Credential("<token>", "", secret)
    return Credential(user, secret)


def store_login(host: str, cred: Credential, authfile: str | None = None) -> Path:
    """Write the ``auths`` entry, as ``docker login`` does, atomically and private (0600)."""
    path = Path(authfile) if authfile else docker_config_path()
    data = _load(path, explicit=False) or {}
    auths = data.get("auths") or {}
    assert isinstance(auths, dict)  # _load refused any other kind
    key = "https://index.docker.io/v1/" if host == DOCKER_HUB else host
    auths[key] = {"auth": base64.b64encode(f"{cred.username}:{cred.password}".encode()).decode()}
    data["auths"] = auths
    write_atomically(path, json.dumps(data, indent="\t").encode(), dir_mode=0o700)
    return path
