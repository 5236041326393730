"""Per-registry TLS material, found where docker and podman keep it.

``/etc/containers/certs.d/HOST[:PORT]/`` and ``/etc/docker/certs.d/HOST[:PORT]/`` (or the
directory given with ``--cert-dir``) hold ``*.crt`` CA certificates, trusted in addition to
the system's, and ``NAME.cert`` + ``NAME.key`` client certificate pairs.
"""

from __future__ import annotations

import hashlib
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ociassemble.errors import UsageError

CERTS_D_ROOTS = [Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d")]
_SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


@dataclass(frozen=True)
class TlsMaterial:
    verify: bool | str  # False, True (system CAs) or a CA bundle path
    client_cert: tuple[str, str] | None = None


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
    pem = b""
    system = _system_bundle()
    if system:
        pem += Path(system).read_bytes() + b"\n"
    for ca in cas:
        pem += ca.read_bytes() + b"\n"
    # one bundle file per distinct content, reused across runs and threads
    bundle = Path(tempfile.gettempdir()) / f"ociassemble-ca-{hashlib.sha256(pem).hexdigest()[:16]}.pem"
    if not bundle.exists():
        tmp = bundle.with_name(bundle.name + f".{id(pem)}.part")
        tmp.write_bytes(pem)
        tmp.replace(bundle)
    return TlsMaterial(str(bundle), client)
