"""A registry client for the OCI distribution API, written on ``requests``.

Why our own: the protocol details decide correctness here. Tokens must be scoped per
repository (pull from one, push to another, mount across both), blobs must stream in both
directions without being held in memory, manifests must be sent as the exact bytes whose
digest we computed, and every request needs a timeout. See README, "Why not oras".
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode, urljoin

import requests

from ociassemble import __version__
from ociassemble.auth import Challenge, Credential, TokenCache, parse_challenge
from ociassemble.digest import VerifyingReader, sha256_digest, verify_bytes
from ociassemble.errors import AuthError, NotFound, RegistryError
from ociassemble.model import ACCEPT_ALL, Descriptor, sniff_media_type

USER_AGENT = f"ociassemble/{__version__}"
DEFAULT_TIMEOUT = (30.0, 300.0)
MANIFEST_LIMIT = 4 << 20

Body = bytes | Callable[[], Any] | None


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


def push_scope(repo: str) -> str:
    return f"repository:{repo}:pull,push"


def _registry_message(resp: requests.Response) -> str:
    try:
        errors = resp.json().get("errors") or []
        parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors]
        if parts:
            return "; ".join(parts)
    except (ValueError, AttributeError):
        pass
    return f"HTTP {resp.status_code}"


class _RawReader:
    """Adapts a streaming response to ``read(n)`` without content decoding."""

    def __init__(self, resp: requests.Response):
        self._raw = resp.raw

    def read(self, n: int = -1) -> bytes:
        try:
            return self._raw.read(n, decode_content=False) or b""
        except requests.RequestException as e:
            raise RegistryError(f"connection broke while reading a blob: {e}") from None
        except Exception as e:  # urllib3 ProtocolError and friends
            raise RegistryError(f"connection broke while reading a blob: {e}") from None


class RegistryClient:
    """One registry host. Thread-safe: each thread gets its own HTTP session."""

    def __init__(
        self,
        host: str,
        *,
        plain_http: bool = False,
        tls_verify: bool = True,
        credential: Credential | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ):
        self.host = host
        self.base = f"{'http' if plain_http else 'https'}://{host}"
        self.tls_verify = tls_verify
        self.credential = credential
        self.timeout = timeout
        self.tokens = TokenCache()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._challenge: Challenge | None = None

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["User-Agent"] = USER_AGENT
            s.verify = self.tls_verify
            s.trust_env = False  # loopback and explicit hosts only; no surprise proxies
            self._local.session = s
        return s

    def _basic_header(self) -> str:
        assert self.credential is not None
        raw = f"{self.credential.username}:{self.credential.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _auth_header(self, scopes: tuple[str, ...]) -> str | None:
        ch = self._challenge
        if ch is None:
            return None
        if ch.scheme == "basic":
            return self._basic_header() if self.credential else None
        if ch.scheme == "bearer":
            realm, service = ch.params.get("realm", ""), ch.params.get("service", "")
            token = self.tokens.get(realm, service, scopes)
            return f"Bearer {token}" if token else None
        return None

    def _fetch_token(self, ch: Challenge, scopes: tuple[str, ...]) -> None:
        realm = ch.params.get("realm")
        if not realm:
            raise AuthError(f"registry {self.host} asked for a bearer token but named no realm")
        service = ch.params.get("service", "")
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        params.extend(("scope", s) for s in scopes)
        cred = self.credential
        try:
            if cred and cred.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": cred.identity_token,
                        "service": service, "scope": " ".join(scopes), "client_id": "ociassemble"}
                resp = self._session.post(realm, data=form, timeout=self.timeout)
            else:
                auth = (cred.username, cred.password) if cred else None
                resp = self._session.get(realm, params=params, auth=auth, timeout=self.timeout)
        except requests.RequestException as e:
            raise RegistryError(f"cannot reach the token service of {self.host}: {type(e).__name__}") from None
        if resp.status_code in (401, 403):
            who = "the configured credentials were rejected" if cred else "it requires credentials"
            raise AuthError(
                f"token service for {self.host} refused access ({who}); log in with "
                "'docker login' or check the credentials in your docker config"
            )
        if resp.status_code != 200:
            raise AuthError(f"token service for {self.host} answered HTTP {resp.status_code}")
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
            ttl = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token = None
            ttl = 0.0
        if not token:
            raise AuthError(f"token service for {self.host} answered without a token")
        self.tokens.put(realm, service, scopes, str(token), ttl)

    def request(
        self,
        method: str,
        url: str,
        scopes: tuple[str, ...],
        *,
        headers: dict[str, str] | None = None,
        body: Body = None,
        stream: bool = False,
        allow: tuple[int, ...] = (200,),
        what: str = "request",
    ) -> requests.Response:
        """Send a request, answering auth challenges once; raise on any status not allowed."""
        url = url if url.startswith(("http://", "https://")) else self.base + url
        scopes = tuple(sorted(set(scopes)))
        for attempt in range(3):
            hdrs = dict(headers or {})
            auth = self._auth_header(scopes)
            if auth:
                hdrs["Authorization"] = auth
            data: Any = body() if callable(body) else body
            try:
                resp = self._session.request(
                    method, url, headers=hdrs, data=data, stream=stream, timeout=self.timeout,
                    allow_redirects=method in ("GET", "HEAD"),
                )
            except requests.exceptions.SSLError:
                raise RegistryError(
                    f"TLS verification failed for {self.host}; install its CA certificate, or "
                    "pass --tls-verify=false if you trust the network"
                ) from None
            except requests.RequestException as e:
                raise RegistryError(
                    f"cannot reach registry {self.host} ({type(e).__name__}); check the address "
                    "and that the registry is running"
                ) from None
            finally:
                if callable(body) and hasattr(data, "close"):
                    data.close()
            if resp.status_code == 401 and attempt < 2:
                ch = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
                resp.close()
                if ch is None:
                    break
                if ch.scheme == "basic":
                    if self.credential is None:
                        raise AuthError(
                            f"registry {self.host} requires a username and password; log in "
                            "with 'docker login' (or add them to your docker config)"
                        )
                    if self._challenge is not None and self._challenge.scheme == "basic":
                        break
                    self._challenge = ch
                    continue
                if ch.scheme == "bearer":
                    wanted = set(scopes)
                    if ch.params.get("scope"):
                        wanted.update(ch.params["scope"].split(" "))
                    scopes = tuple(sorted(wanted))
                    self._challenge = ch
                    self._fetch_token(ch, scopes)
                    continue
                raise AuthError(f"registry {self.host} asks for unsupported auth scheme {ch.scheme!r}")
            if resp.status_code in allow:
                return resp
            msg = _registry_message(resp)
            resp.close()
            if resp.status_code == 401:
                raise AuthError(
                    f"registry {self.host} refused the credentials for {what} ({msg}); check "
                    "'docker login' or your docker config"
                )
            if resp.status_code == 403:
                raise AuthError(f"registry {self.host} denied {what} ({msg}); the account lacks access")
            if resp.status_code == 404:
                raise NotFound(f"{what} not found on {self.host} ({msg})")
            raise RegistryError(f"registry {self.host} failed {what}: {msg}")
        raise AuthError(
            f"registry {self.host} refused the credentials for {what}; check 'docker login' "
            "or your docker config"
        )

    # -- manifests --------------------------------------------------------------------------
    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        """Return (raw bytes, media type, digest); the digest is checked, never trusted."""
        what = f"manifest {repo}:{reference}" if ":" not in reference else f"manifest {repo}@{reference}"
        resp = self.request("GET", f"/v2/{repo}/manifests/{reference}", (pull_scope(repo),),
                            headers={"Accept": ACCEPT_ALL}, stream=True, what=what)
        with resp:
            raw = resp.raw.read(MANIFEST_LIMIT + 1, decode_content=True)
        if len(raw) > MANIFEST_LIMIT:
            raise RegistryError(f"{what} on {self.host} is larger than 4 MiB; refusing it")
        digest = sha256_digest(raw)
        if reference.startswith("sha256:"):
            verify_bytes(raw, reference, None, what)
        else:
            claimed = resp.headers.get("Docker-Content-Digest")
            if claimed and claimed.startswith("sha256:") and claimed != digest:
                raise RegistryError(
                    f"{what}: the registry says its digest is {claimed} but the bytes hash to "
                    f"{digest}; the registry or a proxy altered it"
                )
        return raw, sniff_media_type(raw, resp.headers.get("Content-Type")), digest

    def manifest_exists(self, repo: str, reference: str) -> str | None:
        resp = self.request("HEAD", f"/v2/{repo}/manifests/{reference}", (pull_scope(repo),),
                            headers={"Accept": ACCEPT_ALL}, allow=(200, 404), what="manifest check")
        resp.close()
        return resp.headers.get("Docker-Content-Digest") if resp.status_code == 200 else None

    def put_manifest(self, repo: str, reference: str, raw: bytes, media_type: str) -> None:
        resp = self.request("PUT", f"/v2/{repo}/manifests/{reference}", (push_scope(repo),),
                            headers={"Content-Type": media_type}, body=raw, allow=(200, 201),
                            what=f"pushing manifest {repo}:{reference}")
        resp.close()

    # -- blobs ------------------------------------------------------------------------------
    @contextmanager
    def open_blob(self, repo: str, desc: Descriptor) -> Iterator[VerifyingReader]:
        resp = self.request("GET", f"/v2/{repo}/blobs/{desc.digest}", (pull_scope(repo),),
                            stream=True, what=f"blob {desc.digest} of {repo}")
        try:
            yield VerifyingReader(_RawReader(resp), desc.digest, desc.size, f"blob of {repo}")
        finally:
            resp.close()

    def blob_exists(self, repo: str, digest: str) -> bool:
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", (pull_scope(repo),),
                            allow=(200, 404), what="blob check")
        resp.close()
        return resp.status_code == 200

    def _start_upload(self, repo: str, extra_scopes: tuple[str, ...] = (), query: str = "") -> requests.Response:
        return self.request("POST", f"/v2/{repo}/blobs/uploads/{query}",
                            (push_scope(repo), *extra_scopes), allow=(201, 202),
                            what=f"starting an upload to {repo}")

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> str | None:
        """Try a cross-repository mount. Returns None when mounted, else an upload URL."""
        q = "?" + urlencode({"mount": digest, "from": from_repo})
        resp = self._start_upload(repo, (pull_scope(from_repo),), q)
        resp.close()
        if resp.status_code == 201:
            return None
        return self._location(resp)

    def _location(self, resp: requests.Response) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(f"registry {self.host} started an upload without a Location header")
        return urljoin(self.base + "/", loc)

    def upload_blob(self, repo: str, desc: Descriptor, opener: Callable[[], Any],
                    location: str | None = None) -> None:
        """Monolithic upload: POST to start, PUT the whole body with ?digest=.

        ``opener`` returns a fresh body each call: a file (sent with Content-Length) or an
        iterator of chunks (sent chunked). The registry checks the digest before committing.
        """
        if location is None:
            resp = self._start_upload(repo)
            resp.close()
            location = self._location(resp)
        sep = "&" if "?" in location else "?"
        url = f"{location}{sep}{urlencode({'digest': desc.digest})}"
        resp = self.request("PUT", url, (push_scope(repo),), body=opener,
                            headers={"Content-Type": "application/octet-stream"},
                            allow=(201, 204), what=f"uploading blob {desc.digest} to {repo}")
        resp.close()
