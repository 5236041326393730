"""Image references in the transports users already type with skopeo.

``[docker://]host/repo[:tag|@sha256:...]`` for registries (Docker Hub short names are
normalised the way docker does), ``oci:PATH[:TAG]`` for an OCI image layout,
``oci-archive:PATH[:TAG]`` for one in a tar file and ``docker-archive:PATH[:NAME:TAG]`` for
what ``docker save`` writes and ``docker load``/``podman load`` take. A registry on a
loopback address is spoken to over plain HTTP, as docker does.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ociassemble.errors import InvalidReference, ManifestError
from ociassemble.oci.digest import check_digest

DOCKER_HUB = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_OTHER_TRANSPORTS = {"dir", "containers-storage", "docker-daemon"}
ARCHIVE_KINDS = ("oci-archive", "docker-archive")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")
_DIGEST_LIKE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Za-z0-9=_-]+$")  # any algorithm:encoded


@dataclass(frozen=True)
class RegistryRef:
    """An image in a registry: host, repository, and a tag or a digest (or both)."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest when known, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def hostname(self) -> str:
        host = self.host
        if host.startswith("["):
            return host[1:host.index("]")]
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

    @property
    def is_loopback(self) -> bool:
        name = self.hostname
        if name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        s = f"{self.host}/{self.repository}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


@dataclass(frozen=True)
class LayoutRef:
    """An image in an OCI image layout directory, named by a ref-name tag (or a digest)."""

    path: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "") + (
            f"@{self.digest}" if self.digest else "")


@dataclass(frozen=True)
class ArchiveRef:
    """An image in a tar file: an OCI layout tarred (``oci-archive``, named by a tag), or
    ``docker save``'s format (``docker-archive``, named by a repository:tag in it)."""

    kind: str  # oci-archive | docker-archive
    path: str
    name: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}" + (f":{self.name}" if self.name else "")


ImageRef = RegistryRef | LayoutRef | ArchiveRef


def _bad(text: str, why: str) -> InvalidReference:
    return InvalidReference(
        f"invalid image reference {redact(text)!r}: {why}. Use [docker://]host/repo[:tag|@sha256:...], "
        "oci:PATH[:TAG], oci-archive:PATH[:TAG] or docker-archive:PATH[:NAME:TAG]"
    )


def _userinfo_end(text: str) -> int:
    """Where ``USER[:PASSWORD]@`` ends when ``text`` starts with one (URL style, before a
    host), else -1. ``name@sha256:...`` (a digest) is not userinfo; ``x@HOST[/...]`` is."""
    body = text.removeprefix("docker://")
    at = body.find("@")
    if at <= 0 or "/" in body[:at]:
        return -1
    rest = body[at + 1:]
    if _DIGEST_LIKE.match(rest):
        return -1
    if not _HOST_RE.match(rest.split("/", 1)[0]):
        return -1
    return len(text) - len(body) + at + 1


def redact(text: str) -> str:
    """``text`` with a leading ``USER[:PASSWORD]@`` replaced by ``***@``: a reference that
    carries credentials is never printed with them."""
    end = _userinfo_end(text)
    if end < 0:
        return text
    prefix = "docker://" if text.startswith("docker://") else ""
    return prefix + "***@" + text[end:]


def _no_credentials(text: str, flag: str = "image reference") -> None:
    if _userinfo_end(text) >= 0:
        raise InvalidReference(
            f"{flag} {redact(text)!r} carries credentials (USER:PASSWORD@ before the host), which "
            "never belong in a reference; pass --creds USER:PASSWORD or run 'ociassemble login' instead"
        )


def _digest_of(digest: str, orig: str) -> None:
    """The part after ``@`` of a reference must be a sha256 digest."""
    try:
        check_digest(digest, "digest")
    except ManifestError:
        raise _bad(orig, f"{digest!r} is not a sha256 digest") from None


def parse_registry_ref(text: str, original: str | None = None) -> RegistryRef:
    orig = original or text
    _no_credentials(orig)
    if not text or text != text.strip():
        raise _bad(orig, "it is empty or has surrounding spaces")
    name, digest = text, None
    if "@" in text:
        name, _, digest = text.partition("@")
        _digest_of(digest, orig)
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
        if not _TAG_RE.match(tag):
            raise _bad(orig, f"tag {tag!r} is not a valid tag")
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        host, repo = first, rest
        if not _HOST_RE.match(host):
            raise _bad(orig, f"registry host {host!r} is not valid")
        if host in _HUB_ALIASES:
            host = DOCKER_HUB
    else:
        host, repo = DOCKER_HUB, name
    if host == DOCKER_HUB and "/" not in repo:
        repo = f"library/{repo}"
    if not _REPO_RE.match(repo):
        raise _bad(orig, f"repository {repo!r} must be lowercase letters, digits and separators")
    if tag is None and digest is None:
        tag = "latest"
    return RegistryRef(host, repo, tag, digest)


def parse_layout_ref(text: str, original: str | None = None) -> LayoutRef:
    orig = original or text
    body = text
    digest = None
    if "@" in body:
        body, _, digest = body.rpartition("@")
        _digest_of(digest, orig)
    path, tag = body, None
    head, sep, tail = body.rpartition(":")
    if sep and head and "/" not in tail:
        path, tag = head, tail
        if not _TAG_RE.match(tag):
            raise _bad(orig, f"tag {tag!r} is not a valid tag")
    if not path:
        raise _bad(orig, "the layout path is empty")
    return LayoutRef(path, tag, digest)


def parse_archive_ref(text: str) -> ArchiveRef:
    """``KIND:PATH[:NAME]`` as skopeo reads it: the path ends at the first colon."""
    kind, _, rest = text.partition(":")
    path, _, name = rest.partition(":")
    if not path:
        raise _bad(text, "the archive path is empty")
    if name:
        if kind == "oci-archive" and not _TAG_RE.match(name):
            raise _bad(text, f"{name!r} is not a valid tag")
        if kind == "docker-archive":
            try:
                parse_registry_ref(name, text)
            except InvalidReference:
                raise _bad(text, f"{name!r} is not a valid NAME:TAG") from None
    return ArchiveRef(kind, path, name or None)


def parse_reference(text: str) -> ImageRef:
    """Parse a source reference (``docker://`` is the default transport)."""
    if text.startswith("oci:"):
        return parse_layout_ref(text[4:], text)
    if text.split(":", 1)[0] in ARCHIVE_KINDS and ":" in text:
        return parse_archive_ref(text)
    if text.startswith("docker://"):
        return parse_registry_ref(text[len("docker://"):], text)
    scheme = text.split(":", 1)[0]
    if ":" in text and scheme in _OTHER_TRANSPORTS:
        raise _bad(text, f"transport {scheme!r} is not supported (use docker://, oci:, oci-archive: or "
                         "docker-archive:)")
    return parse_registry_ref(text, text)


def parse_output(text: str) -> ImageRef:
    """Parse ``--output-name``: like a source, but a bare name means a local OCI layout.

    compose.py's default output ``tritonserver`` names an image in the local Docker engine;
    with no engine, the faithful equivalent is an OCI layout ``./tritonserver`` tagged
    ``latest`` (or the tag given), which ``skopeo copy`` or ``podman load`` can take further.

    Nothing is reinterpreted: a bare name must be a valid repository name (one component)
    with an optional valid tag; a digest is refused (compose computes it); credentials in
    the name are refused without being printed.
    """
    if not text.startswith("oci:"):
        _no_credentials(text, "--output-name")
    if text.startswith("oci:"):
        ref: ImageRef = parse_layout_ref(text[4:], text)
    elif text.split(":", 1)[0] in ARCHIVE_KINDS and ":" in text:
        return parse_archive_ref(text)
    elif text.startswith("docker://") or "/" in text.split("@", 1)[0]:
        ref = parse_reference(text)
    else:
        name, at, _ = text.partition("@")
        base, colon, tag = name.partition(":")
        if at:
            ref = parse_registry_ref(text, text)  # refuses a malformed digest; a valid one is refused below
        elif not base:
            raise _bad(text, "the name is empty")
        elif not re.fullmatch(_COMPONENT, base) or (colon and not _TAG_RE.match(tag)):
            raise InvalidReference(
                f"--output-name {text!r} is not a valid image name: a bare NAME[:TAG] writes the "
                "OCI layout ./NAME, and NAME must be lowercase letters, digits and . _ - separators; write "
                "oci:PATH[:TAG] for another layout, or host/repo[:tag] to push"
            )
        else:
            return parse_layout_ref(f"./{base}:{tag or 'latest'}", text)
    if ref.digest:
        raise InvalidReference(
            f"--output-name {redact(text)!r} names a digest; the digest is what compose computes: "
            "give a tag (or nothing, for latest)"
        )
    return ref
