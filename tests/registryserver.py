"""Real registries for the tests: Debian's docker-registry (CNCF distribution) on loopback.

Three auth modes, all the registry's own: none, htpasswd (basic), and token auth with a
token server run here that signs ES256 JWTs with a throw-away key (x5c chain) and grants
exactly the scopes the client asks for, to a client presenting the right password.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import requests

USER, PASSWORD = "ci-user", "s3cret-Pa55word-for-tests"
REFRESH_TOKEN = "refresh-token-0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # what an identity-token login stores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    def __init__(self, workdir: Path, service: str = "test-registry", issuer: str = "test-issuer"):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.service, self.issuer = service, issuer
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ociassemble test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1)).sign(self.key, hashes.SHA256()))
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.bundle = workdir / "token-root.pem"
        self.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.issued: list[str] = []
        self.requests: list[dict[str, object]] = []
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def _answer(self, user: str, scopes: list[str]) -> None:
                token = server.sign(user, scopes)
                body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                """OAuth2 refresh-token grant, as docker uses with an identity token."""
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                scopes = " ".join(form.get("scope", [])).split()
                ok = form.get("grant_type") == ["refresh_token"] and form.get("refresh_token") == [REFRESH_TOKEN]
                server.requests.append({"user": USER if ok else None, "scopes": scopes, "method": "POST"})
                if not ok:
                    self.send_response(401)
                    self.end_headers()
                    return
                self._answer(USER, scopes)

            def do_GET(self) -> None:
                q = parse_qs(urlparse(self.path).query)
                auth = self.headers.get("Authorization", "")
                user = None
                if auth.startswith("Basic "):
                    u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
                    if (u, p) != (USER, PASSWORD):
                        self.send_response(401)
                        self.end_headers()
                        return
                    user = u
                scopes = q.get("scope", [])
                server.requests.append({"user": user, "scopes": scopes})
                if user is None:
                    self.send_response(401)
                    self.end_headers()
                    return
                token = server.sign(user, scopes)
                body = json.dumps({"token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def sign(self, user: str, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        access = []
        for s in scopes:
            kind, _, rest = s.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": self.issuer, "sub": user, "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        token = signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        self.issued.append(token)
        return token

    def close(self) -> None:
        self.httpd.shutdown()


def make_tls(workdir: Path, client: bool) -> Path:
    """A throw-away CA, a server certificate for 127.0.0.1 and (optionally) a client pair.

    Returns a certs.d-style directory: ca.crt (and client.cert + client.key); the server's
    own files are written next to it.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def issue(cn: str, key: ec.EllipticCurvePrivateKey, ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name,
              ca: bool = False, server: bool = False) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                             x509.DNSName("localhost")]), critical=False)
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        elif not ca:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return b.sign(ca_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ociassemble test CA")])
    ca = issue("ociassemble test CA", ca_key, ca_key, ca_name, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = issue("127.0.0.1", srv_key, ca_key, ca_name, server=True)
    certs = workdir / "certs.d"
    certs.mkdir(parents=True, exist_ok=True)
    (certs / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (workdir / "server.crt").write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    (workdir / "server.key").write_bytes(pem_key(srv_key))
    if client:
        cl_key = ec.generate_private_key(ec.SECP256R1())
        cl = issue("ci client", cl_key, ca_key, ca_name)
        (certs / "client.cert").write_bytes(cl.public_bytes(serialization.Encoding.PEM))
        (certs / "client.key").write_bytes(pem_key(cl_key))
    return certs


@dataclass
class Registry:
    host: str
    proc: subprocess.Popen[bytes]
    root: Path
    mode: str
    token_server: TokenServer | None = None
    log: Path = field(default=Path("/dev/null"))
    cert_dir: Path | None = None  # certs.d-style directory when the registry speaks TLS

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.token_server:
            self.token_server.close()


def start_registry(workdir: Path, mode: str = "none", tls: bool = False, client_certs: bool = False,
                   access_log: bool = False) -> Registry:
    """``access_log``: the registry logs every request with the bytes it sent (what the
    benchmark counts as fetched, at the registry rather than by the client)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": not access_log}},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "not-a-secret-just-for-tests"},
    }
    token_server = None
    if mode == "htpasswd":
        htp = workdir / "htpasswd"
        out = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True)
        htp.write_bytes(out.stdout)
        cfg["auth"] = {"htpasswd": {"realm": "test", "path": str(htp)}}
    elif mode == "token":
        token_server = TokenServer(workdir)
        cfg["auth"] = {"token": {"realm": token_server.realm, "service": token_server.service,
                                 "issuer": token_server.issuer, "rootcertbundle": str(token_server.bundle)}}
    cert_dir = None
    if tls or client_certs:
        cert_dir = make_tls(workdir, client_certs)
        tls_cfg: dict[str, object] = {"certificate": str(workdir / "server.crt"), "key": str(workdir / "server.key")}
        if client_certs:
            tls_cfg["clientcas"] = [str(cert_dir / "ca.crt")]
        cfg["http"]["tls"] = tls_cfg  # type: ignore[index]
    cfg_path = workdir / "config.yml"
    cfg_path.write_text(json.dumps(cfg))  # YAML is a superset of JSON
    log = workdir / "registry.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg_path)], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, env=env)
    host = f"127.0.0.1:{port}"
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            if cert_dir is None:
                r = requests.get(f"http://{host}/v2/", timeout=1)
            else:
                cert = (str(cert_dir / "client.cert"), str(cert_dir / "client.key")) if client_certs else None
                r = requests.get(f"https://{host}/v2/", timeout=1, verify=str(cert_dir / "ca.crt"), cert=cert)
            if r.status_code in (200, 401):
                return Registry(host, proc, workdir, mode, token_server, log, cert_dir)
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("docker-registry did not start in 20 s")


def write_docker_config(directory: Path, host: str, user: str = USER, password: str = PASSWORD) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return directory
