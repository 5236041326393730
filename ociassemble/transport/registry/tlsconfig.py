"""Per-registry TLS material, found where docker and podman keep it.

``/etc/containers/certs.d/HOST[:PORT]/`` and ``/etc/docker/certs.d/HOST[:PORT]/`` (or the
directory given with ``--cert-dir``) hold ``*.crt`` CA certificates, trusted in addition to
the system's, and ``NAME.cert`` + ``NAME.key`` client certificate pairs.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from requests.adapters import HTTPAdapter

from ociassemble.errors import UsageError

CERTS_D_ROOTS = [Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d")]
_SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


@dataclass(frozen=True)
class TlsMaterial:
    verify: bool  # False: --tls-verify=false
    client_cert: tuple[str, str] | None = None
    context: ssl.SSLContext | None = None  # the system's CAs plus certs.d's, when certs.d has any

    def mount(self, session: Any) -> None:
        """Set a requests session up to speak TLS with this material."""
        session.verify = self.verify
        if self.context is not None:
            session.mount("https://", _ContextAdapter(self.context))
        elif self.client_cert:
            session.cert = self.client_cert


class _ContextAdapter(HTTPAdapter):
    """requests takes extra CAs only as a file path; merging them with the system's would
    mean a bundle file written somewhere and left behind. An SSL context holds them in
    memory instead (and the client pair with them)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """The context already verifies against the right CAs; requests would add certifi's."""


def _system_bundle() -> str | None:
    paths = ssl.get_default_verify_paths()
    for p in (paths.cafile, *_SYSTEM_BUNDLES):
        if p and Path(p).is_file():
            return p
    try:
        import certifi

        return str(certifi.where())
    except ImportError:
        return None


def cert_dirs(host: str, cert_dir: str | None) -> list[Path]:
    if cert_dir:
        d = Path(cert_dir)
        if not d.is_dir():
            raise UsageError(f"--cert-dir {cert_dir} is not a directory")
        return [d]
    return [root / host for root in CERTS_D_ROOTS if (root / host).is_dir()]


def tls_material(host: str, tls_verify: bool, cert_dir: str | None = None) -> TlsMaterial:
    dirs = cert_dirs(host, cert_dir)
    cas = sorted(p for d in dirs for p in d.glob("*.crt"))
    client = None
    for d in dirs:
        for cert in sorted(d.glob("*.cert")):
            key = cert.with_suffix(".key")
            if not key.is_file():
                raise UsageError(f"client certificate {cert} has no matching {key.name}; add it or remove the .cert")
            client = (str(cert), str(key))
            break
        if client:
            break
    if not tls_verify:
        return TlsMaterial(False, client)
    if not cas:
        return TlsMaterial(True, client)
    context = ssl.create_default_context(cafile=_system_bundle())
    try:
        for ca in cas:
            context.load_verify_locations(cafile=str(ca))
        if client:
            context.load_cert_chain(*client)
    except (ssl.SSLError, OSError) as e:
        raise UsageError(f"the TLS material in {cas[0].parent} cannot be loaded ({e}); "
                         "fix or remove the bad .crt/.cert/.key file") from None
    return TlsMaterial(True, client, context)
