"""The OCI / Docker image model: media types, descriptors, manifests, indexes, platforms.

Pure data and parsing, no I/O. Manifests keep the exact bytes they were parsed from,
because a manifest's digest is the hash of those bytes: re-serialising a source manifest
would change its identity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ociassemble.errors import ManifestError
from ociassemble.oci.digest import check_digest, sha256_digest
from ociassemble.text import printable

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT_ALL = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))

FOREIGN_LAYER_TYPES = (DOCKER_LAYER_FOREIGN, OCI_LAYER_ND, OCI_LAYER_ND_GZIP, OCI_LAYER_ND_ZSTD)
LAYER_TYPES = (
    OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR,
    *FOREIGN_LAYER_TYPES,
)

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"
ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON for documents we create (sorted keys, no whitespace)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ManifestError(
                f"platform {text!r} is not os/arch[/variant]; use e.g. linux/amd64 or linux/arm64/v8"
            )
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def from_json(cls, obj: Any) -> Platform | None:
        if not obj:
            return None
        if not isinstance(obj, dict) or not all(isinstance(obj.get(k, ""), str | None)
                                                for k in ("os", "architecture", "variant")):
            raise ManifestError("a platform is not an object of strings; the source is malformed")
        return cls(str(obj.get("os", "")), str(obj.get("architecture", "")),
                   str(obj.get("variant", "") or ""))

    def matches(self, other: Platform) -> bool:
        """Does an index entry ``other`` satisfy the wanted platform ``self``?"""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        if not self.variant:
            return True
        default_variant = "v8" if self.architecture == "arm64" else ""
        return (other.variant or default_variant) == self.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


DEFAULT_PLATFORM = Platform("linux", "amd64")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise ManifestError(f"{what} is not a JSON object")
        try:
            media_type = obj.get("mediaType", "")
            digest = check_digest(obj["digest"], f"{what} digest")
            size = obj["size"]
        except KeyError as e:
            raise ManifestError(f"{what} lacks the field {e.args[0]!r}") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{what} has an invalid size {size!r}")
        if not isinstance(media_type, str):
            raise ManifestError(f"{what} has a mediaType that is not a string")
        urls = obj.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise ManifestError(f"{what} has 'urls' that are not a list of strings")
        return cls(
            media_type=media_type, digest=digest, size=size,
            annotations=_strings(obj.get("annotations"), f"{what} annotations"),
            platform=Platform.from_json(obj.get("platform")),
            urls=tuple(urls),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.urls:
            out["urls"] = list(self.urls)
        if self.platform:
            p: dict[str, str] = {"architecture": self.platform.architecture, "os": self.platform.os}
            if self.platform.variant:
                p["variant"] = self.platform.variant
            out["platform"] = p
        return out


def _strings(value: Any, what: str) -> dict[str, str]:
    """An object of strings (annotations, labels), or nothing."""
    if not value:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ManifestError(f"{what} is not an object of strings; the source is malformed")
    return dict(value)


def _load_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise ManifestError(f"{what} nests JSON too deeply; the source is corrupt or hostile") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{what} is not valid JSON ({e}); the source is corrupt or not an image") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{what} is not a JSON object; the source is not an image")
    return obj


def sniff_media_type(raw: bytes, header_type: str | None) -> str:
    """The media type of a manifest: its own field wins over what a server said."""
    obj = _load_json(raw, "manifest")
    mt = obj.get("mediaType") or ""
    if not mt:
        if "manifests" in obj:
            mt = OCI_INDEX
        elif "layers" in obj:
            mt = OCI_MANIFEST
        elif obj.get("schemaVersion") == 1:
            mt = "application/vnd.docker.distribution.manifest.v1+json"
        else:
            mt = (header_type or "").split(";")[0].strip()
    return str(mt)


@dataclass(frozen=True)
class Manifest:
    raw: bytes
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str]

    @property
    def digest(self) -> str:
        return sha256_digest(self.raw)

    @property
    def is_docker(self) -> bool:
        return self.media_type == DOCKER_MANIFEST

    @classmethod
    def parse(cls, raw: bytes, media_type: str | None = None) -> Manifest:
        mt = media_type or sniff_media_type(raw, None)
        if mt not in MANIFEST_TYPES:
            raise ManifestError(
                f"manifest has media type {mt!r}; only OCI image manifests and Docker schema 2 "
                "manifests are supported (schema 1 images must be converted, e.g. with skopeo copy)"
            )
        obj = _load_json(raw, "manifest")
        if obj.get("schemaVersion") != 2:
            raise ManifestError("manifest schemaVersion is not 2; the image is in an unsupported format")
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise ManifestError("manifest has no 'layers' list; it is malformed")
        config = Descriptor.from_json(obj.get("config"), "manifest config")
        descs = tuple(Descriptor.from_json(item, f"layer {i}") for i, item in enumerate(layers))
        for i, d in enumerate(descs):
            if d.media_type not in LAYER_TYPES:
                raise ManifestError(
                    f"layer {i} ({d.digest}) has media type {d.media_type!r}, which is not an "
                    "image layer this tool can read"
                )
        return cls(raw, mt, config, descs, _strings(obj.get("annotations"), "manifest annotations"))


@dataclass(frozen=True)
class Index:
    raw: bytes
    media_type: str
    manifests: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, raw: bytes, media_type: str | None = None) -> Index:
        mt = media_type or sniff_media_type(raw, None)
        obj = _load_json(raw, "image index")
        items = obj.get("manifests")
        if not isinstance(items, list):
            raise ManifestError("image index has no 'manifests' list; it is malformed")
        return cls(raw, mt, tuple(Descriptor.from_json(m, f"index entry {i}") for i, m in enumerate(items)))

    def platforms(self) -> list[str]:
        return [str(d.platform) for d in self.manifests if d.platform]

    def select(self, want: Platform) -> Descriptor:
        for d in self.manifests:
            if d.platform and want.matches(d.platform) and d.media_type in (*MANIFEST_TYPES, ""):
                return d
        have = ", ".join(printable(p) for p in self.platforms()) or "none"
        raise ManifestError(
            f"the image index has no manifest for platform {want}; it has: {have}. "
            "Choose one with --platform"
        )


@dataclass
class ImageConfig:
    """An image config JSON object, kept whole so that unknown fields survive."""

    raw: bytes
    data: dict[str, Any]

    @classmethod
    def parse(cls, raw: bytes) -> ImageConfig:
        data = _load_json(raw, "image config")
        rootfs = data.get("rootfs")
        if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
            raise ManifestError("image config has no rootfs.diff_ids list; it is malformed")
        for d in rootfs["diff_ids"]:
            check_digest(d, "config diff_id")
        # the fields this tool reads must have the types it reads them as
        inner = data.get("config")
        if inner is not None and not isinstance(inner, dict):
            raise ManifestError("image config's 'config' is not an object; it is malformed")
        env = (inner or {}).get("Env")
        if env is not None and not (isinstance(env, list) and all(isinstance(e, str) for e in env)):
            raise ManifestError("image config's Env is not a list of strings; it is malformed")
        _strings((inner or {}).get("Labels"), "image config's Labels")
        if not isinstance(data.get("history") or [], list):
            raise ManifestError("image config's history is not a list; it is malformed")
        for key, kinds in (("os", str), ("architecture", str), ("variant", str | None), ("created", str | None)):
            if not isinstance(data.get(key, ""), kinds):
                raise ManifestError(f"image config's {key!r} is not a string; it is malformed")
        return cls(raw, data)

    @property
    def diff_ids(self) -> list[str]:
        return list(self.data["rootfs"]["diff_ids"])

    @property
    def env(self) -> list[str]:
        return list((self.data.get("config") or {}).get("Env") or [])

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.data.get("config") or {}).get("Labels") or {})

    def env_value(self, name: str) -> str | None:
        for item in self.env:
            key, _, value = item.partition("=")
            if key == name:
                return value
        return None

    @property
    def platform(self) -> Platform:
        return Platform(str(self.data.get("os", "linux")), str(self.data.get("architecture", "amd64")),
                        str(self.data.get("variant", "") or ""))

    def layer_history(self) -> list[dict[str, Any] | None]:
        """History entries aligned with layers (None where the config has none)."""
        out: list[dict[str, Any] | None] = []
        for h in self.data.get("history") or []:
            if isinstance(h, dict) and not h.get("empty_layer"):
                out.append(h)
        n = len(self.diff_ids)
        if len(out) != n:
            return [None] * n
        return out
