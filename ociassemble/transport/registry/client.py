"""A registry client for the OCI distribution API, written on ``requests``.

Why our own: the protocol details decide correctness here. Tokens must be scoped per
repository (pull from one, push to another, mount across both), blobs must stream in both
directions without being held in memory, manifests must be sent as the exact bytes whose
digest we computed, and every request needs a timeout. See README, "Why not oras".

Flaky networks: connection errors, 429 (honouring ``Retry-After``) and 500/502/503/504
are retried with jittered exponential backoff, a bounded number of times, for requests
that can be replayed. A blob download that breaks resumes with ``Range`` from the byte it
reached (the digest is still checked over the whole blob); a chunked upload that breaks
asks the registry how far it got and continues from there. Redirects (to blob storage)
are followed by hand so that ``Authorization`` never goes to another host.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import requests

from ociassemble import __version__
from ociassemble.errors import AuthError, NotARegistry, NotFound, RegistryError
from ociassemble.oci.digest import VerifyingReader, sha256_digest, verify_bytes
from ociassemble.oci.model import ACCEPT_ALL, Descriptor, sniff_media_type
from ociassemble.text import printable
from ociassemble.transport.registry.auth import Challenge, Credential, TokenCache, parse_challenge
from ociassemble.transport.registry.tlsconfig import TlsMaterial, tls_material

USER_AGENT = f"ociassemble/{__version__}"
MANIFEST_LIMIT = 4 << 20
RETRY_STATUSES = (429, 500, 502, 503, 504)
MIN_CHUNK = 5 << 20  # ECR's minimum for every chunk but the last
TIMEOUT_ATTEMPTS = 2  # a server silent for a whole read timeout is asked once more, not four times
ERROR_BODY_LIMIT = 64 << 10  # of an error answer, only this much is read (for its message)
API_VERSION_HEADER = "Docker-Distribution-API-Version"

Body = bytes | Callable[[], Any] | None


@dataclass(frozen=True)
class ClientOptions:
    """How to talk to registries; the defaults suit CI runners on real networks."""

    tls_verify: bool = True
    cert_dir: str | None = None
    connect_timeout: float = 30.0
    read_timeout: float = 60.0  # per read: a registry silent this long is retried once, then given up on
    attempts: int = 5  # per request, including the first
    backoff: float = 0.5  # seconds, doubled per retry, with jitter, capped at 20 s
    chunk_size: int = 64 << 20  # blobs larger than this are uploaded in chunks of this size


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


def push_scope(repo: str) -> str:
    return f"repository:{repo}:pull,push"


def _registry_message(resp: requests.Response) -> str:
    """The registry's own error text (its ``errors`` list), escaped and cut short: it is
    the server's text, not ours, and goes into a one-line message."""
    try:
        body = next(resp.iter_content(ERROR_BODY_LIMIT), b"")
        errors = json.loads(body).get("errors") or []
        parts = [printable(f"{e.get('code', '')}: {e.get('message', '')}".strip(": "), 200) for e in errors[:5]]
        if parts:
            return printable("; ".join(parts), 400)
    except (ValueError, AttributeError, TypeError, RecursionError, requests.RequestException):
        pass
    return f"HTTP {resp.status_code}"


def not_a_registry(host: str, why: str) -> NotARegistry:
    return NotARegistry(f"{host} does not answer as an OCI registry: {why}; check the host and port")


def api_check_problem(status: int, headers: Any, body: bytes) -> str | None:
    """What is wrong with an answer to ``GET /v2/`` for an OCI registry, or None.

    The distribution spec's API check: a registry answers ``/v2/`` with 200 (no auth
    needed) or 401 (with a challenge). The rule, robust against a web server that answers
    200 to everything and a proxy's login page:

    - a ``Docker-Distribution-API-Version: registry/2.x`` header (every registry we know
      sends it: distribution, Harbor, Quay, GHCR, ECR, GAR, ACR, Artifactory, Nexus, zot)
      with 200, 401 or 403 is a registry;
    - without that header, 200 counts only with a JSON body (``{}``, as the spec shows);
      401 only with a Basic challenge or a Bearer challenge naming a realm;
    - anything else (404, an HTML page, an empty 200, a 401 without a usable challenge,
      another API version) is not a registry.

    ``headers`` is a case-insensitive mapping; ``body`` the start of the answer.
    """
    version = (headers.get(API_VERSION_HEADER) or "").strip()
    if version:
        if not version.lower().startswith("registry/2."):
            return f"GET /v2/ names API version {printable(version, 60)!r}, not registry/2.0"
        if status in (200, 401, 403):
            return None
    if status == 200:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, dict) or data is True:
            return None
        ctype = printable(headers.get("Content-Type") or "no content type", 60)
        kind = "an empty body" if not body.strip() else f"a body that is not JSON ({ctype})"
        return f"GET /v2/ answered 200 with {kind} and no {API_VERSION_HEADER} header"
    if status == 401:
        from ociassemble.transport.registry.auth import parse_challenge

        ch = parse_challenge(headers.get("WWW-Authenticate") or "")
        if ch is not None and (ch.scheme == "basic" or (ch.scheme == "bearer" and ch.params.get("realm"))):
            return None
        return "GET /v2/ answered 401 without a Basic or Bearer challenge"
    return f"GET /v2/ answered HTTP {status}"


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
# a URL (a token realm, a redirect's or an upload's Location: the server's words) or a
# header requests will not send: its InvalidURL, InvalidSchema, MissingSchema and
# InvalidHeader, and urllib.parse's errors (a 3xx's Location is parsed even without
# following it), are all ValueErrors. Never retried; the exception's text (which may quote
# a header, a token) is not shown
_UNSENDABLE = (ValueError,)


class _Transient(Exception):
    """A failure worth retrying (kept apart from the user-facing errors)."""

    def __init__(self, what: str, timeout: bool = False):
        super().__init__(what)
        self.timeout = timeout


class RegistryClient:
    """One registry host. Thread-safe: each thread gets its own HTTP session."""

    def __init__(
        self,
        host: str,
        *,
        plain_http: bool | None = False,
        credential: Credential | None = None,
        options: ClientOptions | None = None,
    ):
        self.host = host
        self.options = options or ClientOptions()
        self._scheme: str | None = None if plain_http is None else ("http" if plain_http else "https")
        self.credential = credential
        self.range_requests = self.range_ignored = self.range_bytes = 0  # partial reads (layer indexes)
        self.timeout = (self.options.connect_timeout, self.options.read_timeout)
        self.tokens = TokenCache()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._check_lock = threading.Lock()
        self._checked = False
        self._challenge: Challenge | None = None
        self._tls: TlsMaterial = tls_material(host, self.options.tls_verify, self.options.cert_dir)

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def base(self) -> str:
        if self._scheme is None:
            with self._lock:
                if self._scheme is None:
                    self._scheme = self._probe_scheme()
        return f"{self._scheme}://{self.host}"

    def _probe_scheme(self) -> str:
        """Loopback registries: HTTPS if they speak it, else plain HTTP (as docker does)."""
        try:
            self._session.get(f"https://{self.host}/v2/", timeout=self.timeout).close()
            return "https"
        except requests.exceptions.SSLError as e:
            text = str(e).lower()
            if "wrong version number" in text or "record layer failure" in text or "http request" in text:
                return "http"
            raise self._tls_error() from None
        except requests.RequestException:
            return "http"

    def _tls_error(self) -> RegistryError:
        return RegistryError(
            f"TLS verification failed for {self.host}; put its CA certificate in "
            f"/etc/containers/certs.d/{self.host}/ca.crt (or pass --cert-dir), or pass "
            "--tls-verify=false if you trust the network"
        )

    @property
    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["User-Agent"] = USER_AGENT
            self._tls.mount(s)
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

    def _sleep(self, attempt: int, resp: requests.Response | None = None) -> None:
        delay = _retry_after(resp) if resp is not None else None
        if delay is None:
            delay = min(20.0, self.options.backoff * (2 ** attempt)) * random.uniform(0.5, 1.0)
        time.sleep(min(delay, 60.0))

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
        resp = None
        timeouts = 0
        for attempt in range(self.options.attempts):
            try:
                if cred and cred.identity_token:
                    form = {"grant_type": "refresh_token", "refresh_token": cred.identity_token,
                            "service": service, "scope": " ".join(scopes), "client_id": "ociassemble"}
                    resp = self._session.post(realm, data=form, timeout=self.timeout)
                else:
                    auth = (cred.username, cred.password) if cred else None
                    resp = self._session.get(realm, params=params, auth=auth, timeout=self.timeout)
            except _UNSENDABLE:
                raise AuthError(f"registry {self.host} names a token service at {printable(realm, 100)!r}, which is "
                                "not an http(s) URL that can be requested") from None
            except _TRANSIENT as e:
                timeouts += isinstance(e, requests.Timeout)
                if attempt + 1 < self.options.attempts and timeouts < TIMEOUT_ATTEMPTS:
                    self._sleep(attempt)
                    continue
                raise RegistryError(f"cannot reach the token service of {self.host} ({type(e).__name__}, "
                                    f"{attempt + 1} attempts); check the network (and --timeout)") from None
            if resp.status_code in RETRY_STATUSES and attempt + 1 < self.options.attempts:
                self._sleep(attempt, resp)
                continue
            break
        assert resp is not None
        if resp.status_code in (401, 403):
            who = "the configured credentials were rejected" if cred else "it requires credentials"
            raise AuthError(
                f"token service for {self.host} refused access ({who}); log in with "
                "'ociassemble login' or check the credentials in your auth file"
            )
        if resp.status_code != 200:
            raise AuthError(f"token service for {self.host} answered HTTP {resp.status_code}")
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
            ttl = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError, OverflowError, RecursionError):
            token = None
            ttl = 0.0
        if not token:
            raise AuthError(f"token service for {self.host} answered without a token")
        if not isinstance(token, str) or not re.fullmatch(r"[\x21-\x7e]+", token):  # it goes into a header
            raise AuthError(f"token service for {self.host} answered a token that is not printable ASCII")
        self.tokens.put(realm, service, scopes, str(token), ttl)

    def _send(self, method: str, url: str, headers: dict[str, str], data: Any, stream: bool) -> requests.Response:
        """One exchange; redirects followed here, dropping Authorization on a host change."""
        origin = urlsplit(url).netloc
        for _ in range(10):
            try:
                resp = self._session.request(method, url, headers=headers, data=data, stream=stream,
                                             timeout=self.timeout, allow_redirects=False)
            except requests.exceptions.SSLError as e:
                if "wrong version number" in str(e).lower():
                    raise RegistryError(f"{self.host} does not speak TLS on that port; if it is a plain-HTTP "
                                        "registry, reach it on a loopback address") from None
                raise self._tls_error() from None
            except _TRANSIENT as e:
                raise _Transient(type(e).__name__, isinstance(e, requests.Timeout)) from None
            except _UNSENDABLE as e:
                raise RegistryError(f"registry {self.host}: cannot send {method} {printable(url, 100)} "
                                    f"({type(e).__name__}); the registry gave an address that is not an http(s) "
                                    "URL") from None
            if resp.status_code not in (301, 302, 303, 307, 308) or method not in ("GET", "HEAD"):
                return resp
            location = resp.headers.get("Location")
            resp.close()
            if not location:
                raise RegistryError(f"registry {self.host} redirected without a Location")
            try:
                url = urljoin(url, location)
                netloc = urlsplit(url).netloc
            except ValueError:
                raise RegistryError(f"registry {self.host} redirected to {printable(location, 100)!r}, which is not "
                                    "a URL") from None
            if netloc != origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        raise RegistryError(f"registry {self.host} redirected more than 10 times")

    def _unreachable(self, what: str, e: _Transient, attempts: int) -> RegistryError:
        if e.timeout:
            return RegistryError(
                f"cannot reach registry {self.host} for {what}: no answer within {self.options.read_timeout:g} s "
                f"({attempts} attempts); if it is only slow, pass a larger --timeout, else check that it is running"
            )
        return RegistryError(
            f"cannot reach registry {self.host} for {what} ({e}, {attempts} attempts); check the "
            "address, the network, and that the registry is running"
        )

    def _give_up(self, e: _Transient, attempt: int, timeouts: int) -> bool:
        """After a transient failure: stop retrying? (a silent server gets fewer retries)"""
        return attempt + 1 >= self.options.attempts or (e.timeout and timeouts >= TIMEOUT_ATTEMPTS)

    def check_api(self) -> None:
        """``GET /v2/``, once per client before anything else: is this an OCI registry at
        all? (See :func:`api_check_problem` for the rule.) A server that fails it is never
        sent a credential, and nothing it says is taken for a registry's answer."""
        if self._checked:
            return
        with self._check_lock:
            if self._checked:
                return
            url = self.base + "/v2/"
            timeouts = 0
            for attempt in range(self.options.attempts):
                try:
                    resp = self._send("GET", url, {}, None, True)
                except _Transient as e:
                    timeouts += e.timeout
                    if self._give_up(e, attempt, timeouts):
                        raise self._unreachable("its API check (GET /v2/)", e, attempt + 1) from None
                    self._sleep(attempt)
                    continue
                if resp.status_code in RETRY_STATUSES and attempt + 1 < self.options.attempts:
                    resp.close()
                    self._sleep(attempt, resp)
                    continue
                break
            with resp:
                try:
                    body = resp.raw.read(ERROR_BODY_LIMIT, decode_content=True) or b""
                except Exception:  # a body that breaks off is judged by what arrived
                    body = b""
            if resp.status_code in RETRY_STATUSES:
                raise RegistryError(f"registry {self.host} failed its API check (GET /v2/): HTTP {resp.status_code}")
            problem = api_check_problem(resp.status_code, resp.headers, body)
            if problem:
                raise not_a_registry(self.host, problem)
            self._checked = True

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
        retry: bool = True,
    ) -> requests.Response:
        """Send a request: answer auth challenges, retry what is transient; raise on any
        status not in ``allow``."""
        self.check_api()
        url = url if url.startswith(("http://", "https://")) else self.base + url
        scopes = _canonical(scopes)
        auth_rounds = 0
        attempt = 0
        timeouts = 0
        while True:
            hdrs = dict(headers or {})
            auth = self._auth_header(scopes)
            if auth:
                hdrs["Authorization"] = auth
            data: Any = body() if callable(body) else body
            try:
                resp = self._send(method, url, hdrs, data, stream)
            except _Transient as e:
                timeouts += e.timeout
                if retry and not self._give_up(e, attempt, timeouts):
                    self._sleep(attempt)
                    attempt += 1
                    continue
                raise self._unreachable(what, e, attempt + 1) from None
            finally:
                if callable(body) and hasattr(data, "close"):
                    data.close()
            if resp.status_code in RETRY_STATUSES and retry and attempt + 1 < self.options.attempts:
                resp.close()
                self._sleep(attempt, resp)
                attempt += 1
                continue
            if resp.status_code == 401 and auth_rounds < 2:
                auth_rounds += 1
                ch = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
                resp.close()
                if ch is None:
                    break
                if ch.scheme == "basic":
                    if self.credential is None:
                        raise AuthError(
                            f"registry {self.host} requires a username and password; log in "
                            "with 'ociassemble login' (or pass --creds, or set OCIASSEMBLE_USERNAME/_PASSWORD)"
                        )
                    if self._challenge is not None and self._challenge.scheme == "basic":
                        break
                    self._challenge = ch
                    continue
                if ch.scheme == "bearer":
                    if ch.params.get("scope"):  # insufficient_scope names what it needs
                        scopes = _canonical((*scopes, *ch.params["scope"].split(" ")))
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
                    "'ociassemble login' or your auth file"
                )
            if resp.status_code == 403:
                raise AuthError(f"registry {self.host} denied {what} ({msg}); the account lacks access")
            if resp.status_code == 404:
                raise NotFound(f"{what} not found on {self.host} ({msg})")
            raise RegistryError(f"registry {self.host} failed {what}: {msg}")
        raise AuthError(
            f"registry {self.host} refused the credentials for {what}; check 'ociassemble login' "
            "or your auth file"
        )

    # -- manifests --------------------------------------------------------------------------
    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        """Return (raw bytes, media type, digest); the digest is checked, never trusted."""
        what = f"manifest {repo}:{reference}" if ":" not in reference else f"manifest {repo}@{reference}"
        for attempt in range(self.options.attempts):
            resp = self.request("GET", f"/v2/{repo}/manifests/{reference}", (pull_scope(repo),),
                                headers={"Accept": ACCEPT_ALL}, stream=True, what=what)
            try:
                with resp:
                    raw = resp.raw.read(MANIFEST_LIMIT + 1, decode_content=True)
                break
            except Exception:  # the body broke off: a manifest is small, just ask again
                if attempt + 1 == self.options.attempts:
                    raise RegistryError(f"{what}: the connection broke while reading it") from None
                self._sleep(attempt)
        if len(raw) > MANIFEST_LIMIT:
            raise RegistryError(f"{what} on {self.host} is larger than 4 MiB; refusing it")
        digest = sha256_digest(raw)
        if reference.startswith("sha256:"):
            verify_bytes(raw, reference, None, what)
        else:
            claimed = resp.headers.get("Docker-Content-Digest")
            if claimed and claimed.startswith("sha256:") and claimed != digest:
                raise RegistryError(
                    f"{what}: the registry says its digest is {printable(claimed, 80)} but the bytes hash to "
                    f"{digest}; the registry or a proxy altered it"
                )
        return raw, sniff_media_type(raw, resp.headers.get("Content-Type")), digest

    def manifest_exists(self, repo: str, reference: str) -> str | None:
        """The digest ``reference`` names (a HEAD), or None when it is not there or the
        registry does not say. Asked by digest, the registry must not name another one."""
        resp = self.request("HEAD", f"/v2/{repo}/manifests/{reference}", (pull_scope(repo),),
                            headers={"Accept": ACCEPT_ALL}, allow=(200, 404), what="manifest check")
        resp.close()
        if resp.status_code != 200:
            return None
        claimed = (resp.headers.get("Docker-Content-Digest") or "").strip()
        by_digest = reference.startswith("sha256:")
        if by_digest and claimed and claimed != reference:
            raise not_a_registry(self.host, f"HEAD of manifest {repo}@{reference} named digest "
                                            f"{printable(claimed, 80)}")
        if by_digest:
            return reference
        return claimed if _is_digest(claimed) else None

    def put_manifest(self, repo: str, reference: str, raw: bytes, media_type: str) -> None:
        """PUT the exact bytes; a ``Docker-Content-Digest`` in the answer must be theirs."""
        resp = self.request("PUT", f"/v2/{repo}/manifests/{reference}", (push_scope(repo),),
                            headers={"Content-Type": media_type}, body=raw, allow=(200, 201),
                            what=f"pushing manifest {repo}:{reference}")
        resp.close()
        claimed = (resp.headers.get("Docker-Content-Digest") or "").strip()
        digest = sha256_digest(raw)
        if claimed and claimed != digest:
            raise not_a_registry(self.host, f"it answered the PUT of manifest {digest} to {repo}:{reference} "
                                            f"with digest {printable(claimed, 80)}")

    def check_push(self, repo: str) -> None:
        """Is there write access to ``repo``? An upload session is started and cancelled:
        the registry's own answer with the credentials and token scope a push will use,
        so wrong credentials or a read-only account fail before any layer is read."""
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", (push_scope(repo),), allow=(200, 201, 202),
                            what=f"checking write access to {repo}")
        resp.close()
        location = resp.headers.get("Location")
        if resp.status_code != 202 or not location:
            raise not_a_registry(self.host, f"it answered the start of an upload to {repo} with HTTP "
                                            f"{resp.status_code}{'' if location else ' and no Location'}, not 202")
        with contextlib.suppress(RegistryError):  # an upload left open expires; cancelling is a courtesy
            self.request("DELETE", urljoin(self.base + "/", location), (push_scope(repo),),
                         allow=(200, 202, 204, 404, 405), what="cancelling the write check", retry=False).close()

    # -- blobs ------------------------------------------------------------------------------
    @contextmanager
    def open_blob(self, repo: str, desc: Descriptor) -> Iterator[VerifyingReader]:
        reader = _ResumingReader(self, repo, desc)
        try:
            yield VerifyingReader(reader, desc.digest, desc.size, f"blob of {repo}")
        finally:
            reader.close()

    def get_range(self, repo: str, desc: Descriptor, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of a blob, asked for with ``Range``; a
        registry that ignores it (200 and the whole body) is read up to ``end`` and cut."""
        self.range_requests += 1
        resp = self.request("GET", f"/v2/{repo}/blobs/{desc.digest}", (pull_scope(repo),),
                            headers={"Range": f"bytes={start}-{end - 1}"}, stream=True, allow=(200, 206),
                            what=f"bytes {start}-{end - 1} of blob {desc.digest} of {repo}")
        try:
            skip = start
            if resp.status_code == 206:
                m = re.match(r"bytes (\d+)-(\d+)", resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != start:
                    raise RegistryError(f"registry {self.host} answered a range request with the wrong range")
                skip = 0
            else:
                self.range_ignored += 1
            out = bytearray()
            want = end - start
            while len(out) < want:
                data = resp.raw.read(min(1 << 20, skip or (want - len(out))), decode_content=False)
                if not data:
                    raise RegistryError(f"registry {self.host} ended blob {desc.digest} before byte {end}")
                if skip:
                    cut = min(skip, len(data))
                    skip -= cut
                    data = data[cut:]
                out += data
            self.range_bytes += len(out)
            return bytes(out[:want])
        finally:
            resp.close()

    def blob_exists(self, repo: str, digest: str, size: int | None = None) -> bool:
        """HEAD of a blob. A 200 must describe that blob: its ``Content-Length`` (when
        ``size`` is known) and ``Docker-Content-Digest``, where sent, must be what was asked."""
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", (pull_scope(repo),),
                            allow=(200, 404), what="blob check")
        resp.close()
        if resp.status_code != 200:
            return False
        claimed = (resp.headers.get("Docker-Content-Digest") or "").strip()
        if claimed and claimed != digest:
            raise not_a_registry(self.host, f"HEAD of blob {digest} in {repo} named digest {printable(claimed, 80)}")
        length = (resp.headers.get("Content-Length") or "").strip()
        if size is not None and length and length != str(size):
            raise not_a_registry(self.host, f"HEAD of blob {digest} in {repo} says {printable(length, 20)} bytes, "
                                            f"not {size}")
        return True

    def _start_upload(self, repo: str, extra_scopes: tuple[str, ...] = (), query: str = "") -> requests.Response:
        return self.request("POST", f"/v2/{repo}/blobs/uploads/{query}",
                            (push_scope(repo), *extra_scopes), allow=(201, 202),
                            what=f"starting an upload to {repo}")

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> str | None:
        """Try a cross-repository mount. Returns None when mounted, else an upload URL
        (the registry answered 202: it could not mount, and opened an upload instead)."""
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
        """Upload a blob: one PUT when small, PATCH chunks when large; the registry checks
        the digest before committing.

        ``opener`` returns a fresh body each call: a seekable file (then large blobs go in
        chunks, resumable) or an iterator of chunks (streamed in one PUT).
        """
        if location is None:
            resp = self._start_upload(repo)
            resp.close()
            location = self._location(resp)
        body = opener()
        seekable = hasattr(body, "seek")
        data: Body
        if seekable and desc.size > self.options.chunk_size:
            with body:
                location = self._patch_chunks(repo, desc, body, location)
            data = b""
        elif seekable:
            body.close()
            data = opener  # reopened for each attempt: replayable
        else:
            data = body  # a one-shot stream (e.g. from another registry): sent once, not retried
        sep = "&" if "?" in location else "?"
        url = f"{location}{sep}{urlencode({'digest': desc.digest})}"
        resp = self.request("PUT", url, (push_scope(repo),), body=data,
                            headers={"Content-Type": "application/octet-stream"},
                            allow=(201, 204), what=f"uploading blob {desc.digest} to {repo}", retry=seekable)
        resp.close()

    def _patch_chunks(self, repo: str, desc: Descriptor, f: Any, location: str) -> str:
        size = max(self.options.chunk_size, MIN_CHUNK)
        offset = 0
        failures = 0
        scopes = (push_scope(repo),)
        while offset < desc.size:
            length = min(size, desc.size - offset)
            end = offset + length - 1
            data = _Slice(f, offset, length)  # streamed from the file: memory stays flat
            try:
                resp = self.request("PATCH", location, scopes, body=data, allow=(202,), retry=False,
                                    headers={"Content-Type": "application/octet-stream",
                                             "Content-Range": f"{offset}-{end}"},
                                    what=f"uploading blob {desc.digest} to {repo} (bytes {offset}-{end})")
            except RegistryError:
                failures += 1
                if failures >= self.options.attempts:
                    raise
                self._sleep(failures - 1)
                location, offset = self._upload_status(repo, location)
                continue
            resp.close()
            location = self._location(resp)
            offset = _range_end(resp.headers.get("Range"), end + 1)
        return location

    def _upload_status(self, repo: str, location: str) -> tuple[str, int]:
        """Where a broken chunked upload stands: its new URL and the next byte to send."""
        resp = self.request("GET", location, (push_scope(repo),), allow=(204,), what=f"upload status on {repo}")
        resp.close()
        return self._location(resp), _range_end(resp.headers.get("Range"), 0)


class _Slice:
    """``length`` bytes of a file from ``offset``, as a request body with a known length."""

    def __init__(self, f: Any, offset: int, length: int):
        self._f = f
        self._left = length
        self.len = length  # requests reads this for Content-Length
        f.seek(offset)

    def __len__(self) -> int:
        return self.len

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left)
        data: bytes = self._f.read(n)
        self._left -= len(data)
        return data


def _is_digest(value: str) -> bool:
    return re.fullmatch(r"sha256:[0-9a-f]{64}", value) is not None


def _canonical(scopes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """One spelling per scope: registries answer ``push,pull`` where we asked ``pull,push``,
    and two spellings of one scope would fetch (and cache) a token twice."""
    merged: dict[str, set[str]] = {}
    for scope in scopes:
        if not scope:
            continue
        resource, _, actions = scope.rpartition(":")
        if not resource:
            resource, actions = scope, ""
        merged.setdefault(resource, set()).update(a for a in actions.split(",") if a)
    return tuple(sorted(f"{r}:{','.join(sorted(a))}" if a else r for r, a in merged.items()))


def _range_end(header: str | None, default: int) -> int:
    """``Range: 0-N`` (what a registry has received) → N+1, the next offset."""
    m = re.fullmatch(r"(?:bytes=)?0-(\d+)", (header or "").strip())
    return int(m.group(1)) + 1 if m else default


class _ResumingReader:
    """A blob body that survives broken connections by asking again with ``Range``."""

    def __init__(self, client: RegistryClient, repo: str, desc: Descriptor):
        self.client = client
        self.repo = repo
        self.desc = desc
        self.offset = 0
        self.resumes = 0
        self._resp: requests.Response | None = None
        try:
            self._open()
        except _Transient:
            raise RegistryError(f"download of blob {desc.digest} from {client.host} broke at once") from None

    def _open(self) -> None:
        headers = {"Range": f"bytes={self.offset}-"} if self.offset else {}
        resp = self.client.request("GET", f"/v2/{self.repo}/blobs/{self.desc.digest}", (pull_scope(self.repo),),
                                   headers=headers, stream=True, allow=(200, 206),
                                   what=f"blob {self.desc.digest} of {self.repo}")
        skip = self.offset
        if resp.status_code == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != self.offset:
                resp.close()
                raise RegistryError(f"registry {self.client.host} answered a resumed download with the wrong range")
            skip = 0
        self._resp = resp
        while skip:  # the server ignored Range: discard what we already have
            data = resp.raw.read(min(skip, 1 << 20), decode_content=False)
            if not data:
                raise _Transient("short body")
            skip -= len(data)

    def read(self, n: int = -1) -> bytes:
        while True:
            try:
                assert self._resp is not None
                data = self._resp.raw.read(n, decode_content=False) or b""
                if not data and self.offset < self.desc.size:
                    raise _Transient("the body ended early")
                self.offset += len(data)
                return data
            except Exception as e:  # urllib3 ProtocolError, timeouts, resets
                if isinstance(e, RegistryError):
                    raise
                self.close()
                self.resumes += 1
                if self.resumes >= self.client.options.attempts:
                    raise RegistryError(
                        f"download of blob {self.desc.digest} from {self.client.host} broke {self.resumes} times "
                        f"(last at byte {self.offset}); check the network and retry"
                    ) from None
                self.client._sleep(self.resumes - 1)
                try:
                    self._open()
                except _Transient:
                    continue

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
