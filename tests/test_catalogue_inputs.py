"""The bad-input catalogue, input and server side (issue 13): one row per bad input.

Each row is a command line, an optional setup (a damaged layout, an auth file), and the
one ``error:`` line it must give (a regular expression), checked by
:func:`tests.oneline.assert_one_line_error`: one line, no traceback, no control
characters, nothing at the destination, no secret in any output. Servers with odd
behaviour are real HTTP servers on 127.0.0.1 run here (:class:`Fake`, one per behaviour,
and a socket that accepts and never answers); registry rows use the real registry of
``tests/conftest.py``, or :class:`tests.faultproxy.FaultProxy` in front of it.

Each row names what the code before issue 13 did with that input (a traceback, a second
line, a success, a printed secret, a message not naming the file/host, ...).
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fixtures.stacks import ROOT, F, LayerDef, write_pair
from ociassemble.text import printable
from ociassemble.transport.registry.client import api_check_problem
from tests.conftest import run_cli
from tests.faultproxy import FaultProxy
from tests.oneline import assert_one_line_error
from tests.registryserver import Registry, free_port

API = {"Docker-Distribution-API-Version": "registry/2.0"}
JSON = {"Content-Type": "application/json"}
ZERO = "sha256:" + "0" * 64
FORGED = "no\nerror: everything is fine\x1b[31m"  # what an image or a server might try to print


# -- servers that are not (quite) registries ---------------------------------------------

@dataclass
class Route:
    method: str  # regex
    path: str  # regex
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class Fake:
    """An HTTP server answering from a route table (first match wins); requests' bodies
    (plain or chunked) are read in full, so a client never sees a reset."""

    def __init__(self, routes: list[Route]):
        self.routes = routes
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def _drain(self) -> None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        self.rfile.read(size)
                        self.rfile.readline()
                        if size == 0:
                            return
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)

            def _answer(self) -> None:
                self._drain()
                path = self.path.split("?", 1)[0]
                r = next((r for r in fake.routes if re.fullmatch(r.method, self.command)
                          and re.fullmatch(r.path, path)), Route(".*", ".*", 404))
                self.send_response(r.status)
                headers = {"Content-Length": str(len(r.body)), **r.headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(r.body)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _answer

        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


PING = Route("GET", "/v2/", 200, {**API, **JSON}, b"{}")
UPLOADS = [Route("POST", r"/v2/.+/blobs/uploads/", 202, {"Location": "/v2/x/uploads/u1", **API}),
           Route("DELETE", r"/v2/x/uploads/u1", 204, API),
           Route("PUT", r"/v2/x/uploads/u1", 201, API)]
HTML = {"Content-Type": "text/html"}

FAKES: dict[str, list[Route]] = {
    # a web server that answers 200 to everything
    "html200": [Route(".*", ".*", 200, HTML, b"<html><body>It works!</body></html>")],
    # one that answers every path as /v2/ should be answered, headers and all
    "json200": [Route(".*", ".*", 200, {**API, **JSON}, b"{}")],
    "empty200": [Route(".*", ".*", 200)],
    "404": [Route(".*", ".*", 404, HTML, b"<html>Not Found</html>")],
    "401-no-challenge": [Route(".*", ".*", 401)],
    "401-bearer-no-realm": [Route(".*", ".*", 401, {"WWW-Authenticate": 'Bearer service="x"'})],
    "api-v1": [Route(".*", ".*", 200, {"Docker-Distribution-API-Version": "registry/1.0", **JSON}, b"{}")],
    # a registry's /v2/ and uploads, but blob HEADs describing some other blob
    "head-size": [PING, *UPLOADS, Route("HEAD", r"/v2/.+/blobs/.+", 200, {"Content-Length": "7", **API})],
    "head-digest": [PING, *UPLOADS, Route("HEAD", r"/v2/.+/blobs/.+", 200, {"Docker-Content-Digest": ZERO, **API})],
    # everything accepted, but the manifest PUT answered with another digest
    "put-digest": [PING, *UPLOADS, Route("HEAD", ".*", 404, API),
                   Route("PUT", r"/v2/.+/manifests/.+", 201, {"Docker-Content-Digest": ZERO, **API})],
    # a manifest GET answered with an error whose text carries a line break and an escape
    "evil-error": [PING, Route("GET", r"/v2/.+/manifests/.+", 404, {**API, **JSON}, json.dumps(
        {"errors": [{"code": "MANIFEST_UNKNOWN", "message": FORGED}]}).encode())],
    "huge-error": [PING, Route("GET", r"/v2/.+/manifests/.+", 404, {**API, **JSON}, json.dumps(
        {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "x" * 200_000}] * 50}).encode())],
}


class Silent:
    """Accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


PROXY_USER, PROXY_PASSWORD = "cat-user", "cat-right-Pa55"


@pytest.fixture(scope="module")
def servers(registry: Registry, pushed: dict[str, str]) -> Iterator[dict[str, str]]:
    fakes = {name: Fake(routes) for name, routes in FAKES.items()}
    silent = Silent()
    guarded = FaultProxy(registry.host)  # demands Basic auth of its own: right user, one password
    guarded.basic = (PROXY_USER, PROXY_PASSWORD)
    hosts = {f"fake_{name.replace('-', '_')}": f.host for name, f in fakes.items()}
    hosts.update(silent=silent.host, reg=registry.host, guarded=guarded.host)
    yield hosts
    for f in fakes.values():
        f.close()
    silent.close()
    guarded.close()


# -- setups ------------------------------------------------------------------------------

@dataclass
class Ctx:
    tmp: Path
    fx: Path
    env: dict[str, str] = field(default_factory=dict)


def _docker_config(content: object, raw: bytes | None = None) -> Callable[[Ctx, dict[str, str]], None]:
    """A docker config.json whose ``auths``/... hold ``content`` (``HOST`` replaced by the
    registry the sources are on)."""

    def setup(ctx: Ctx, hosts: dict[str, str]) -> None:
        cfg = ctx.tmp / "cfg"
        cfg.mkdir()
        data = raw if raw is not None else json.dumps(content).replace("HOST", hosts["reg"]).encode()
        (cfg / "config.json").write_bytes(data)
        ctx.env["DOCKER_CONFIG"] = str(cfg)

    return setup


def _pair(*stack: LayerDef) -> Callable[[Ctx, dict[str, str]], None]:
    def setup(ctx: Ctx, hosts: dict[str, str]) -> None:
        write_pair(ctx.tmp / "in", list(stack))

    return setup


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def _manifest(layout: Path, tag: str) -> tuple[dict, str]:  # type: ignore[type-arg]
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
    doc = json.loads(_blob(layout, desc["digest"]).read_text())
    while "manifests" in doc:  # an index: its amd64 entry
        desc = next(m for m in doc["manifests"] if m["platform"]["architecture"] == "amd64")
        doc = json.loads(_blob(layout, desc["digest"]).read_text())
    return doc, desc["digest"]


def _damaged(how: str) -> Callable[[Ctx, dict[str, str]], None]:
    """The small pair, then one thing broken."""

    def setup(ctx: Ctx, hosts: dict[str, str]) -> None:
        layout = ctx.tmp / "in"
        write_pair(layout, [])
        manifest, manifest_digest = _manifest(layout, "full")
        install = _blob(layout, manifest["layers"][-1]["digest"])
        if how == "index-json":
            (layout / "index.json").write_text("{not json")
        elif how == "missing-layer":
            install.unlink()
        elif how == "truncated-layer":
            install.write_bytes(install.read_bytes()[: install.stat().st_size // 2])
        elif how == "missing-manifest":
            _blob(layout, manifest_digest).unlink()
        elif how == "evil-tag":
            index = json.loads((layout / "index.json").read_text())
            extra = dict(index["manifests"][0])
            extra["annotations"] = {"org.opencontainers.image.ref.name": FORGED}
            index["manifests"].append(extra)
            (layout / "index.json").write_text(json.dumps(index))
        else:
            raise AssertionError(how)

    return setup


# -- the rows ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    id: str
    argv: tuple[str, ...]  # {placeholders}: tmp, fx, and the server hosts
    pattern: str  # searched in the one error line; {placeholders} are filled in, escaped
    code: int | None = None
    setup: Callable[[Ctx, dict[str, str]], None] | None = None
    stdin: str | None = None
    secrets: tuple[str, ...] = ()
    untouched: tuple[str, ...] = ("{tmp}/out",)
    check: Callable[[Ctx], None] | None = None  # more to assert after the run


OUT = ("--output-name", "oci:{tmp}/out:x")
FROM_LAYOUT = ("compose", "--backend", "identity", "--image", "min,oci:{fx}:min", "--image", "full,oci:{fx}:full",
               "--work-dir", "{tmp}/work")
FROM_REGISTRY = ("compose", "--backend", "identity", "--image", "min,{reg}/nvidia/min:24.05",
                 "--image", "full,{reg}/nvidia/full:24.05", "--work-dir", "{tmp}/work", *OUT)
FROM_PAIR = ("compose", "--no-enable-gpu", "--image", "min,oci:{tmp}/in:min", "--image", "full,oci:{tmp}/in:full",
             "--work-dir", "{tmp}/work", *OUT)
LOGIN = ("login", "-u", "cat-user", "--password-stdin", "--authfile", "{tmp}/auth.json")
SECRET = "cat-Secret-pw"
A = f"{ROOT}/backends/a"


def _no_layer_read(ctx: Ctx) -> None:
    """The store indexes every layer it scans (layout blobs too): none may be there."""
    index = ctx.tmp / "store" / "index"
    assert not index.exists() or not list(index.iterdir()), "layers were read before the write check"


ROWS = [
    # -- item 3: auth files (before: TypeError tracebacks, or silently ignored) -----------
    Row("auth-number", FROM_REGISTRY,
        r"credentials file .*cfg/config\.json: auths\['{reg}'\]\.auth is a number, not a string",
        setup=_docker_config({"auths": {"HOST": {"auth": 12345}}})),  # before: TypeError traceback
    Row("auth-list", FROM_REGISTRY, r"config\.json: auths\['{reg}'\]\.auth is a list, not a string",
        setup=_docker_config({"auths": {"HOST": {"auth": ["a"]}}})),  # before: TypeError traceback
    Row("auth-bad-base64", FROM_REGISTRY, r"config\.json: auths\['{reg}'\]\.auth is not base64 of user:password",
        setup=_docker_config({"auths": {"HOST": {"auth": "Y2F0OnB3#"}}})),  # before: '#' dropped, accepted
    Row("auth-no-colon", FROM_REGISTRY, r"auths\['{reg}'\]\.auth does not contain user:password",
        setup=_docker_config({"auths": {"HOST": {"auth": base64.b64encode(b"just-a-user").decode()}}})),
    Row("auths-not-object", FROM_REGISTRY, r"config\.json: 'auths' is a list, not an object",
        setup=_docker_config({"auths": ["HOST"]})),  # before: ignored
    Row("auths-entry-string", FROM_REGISTRY, r"auths\['{reg}'\] is a string, not an object",
        setup=_docker_config({"auths": {"HOST": SECRET}}), secrets=(SECRET,)),  # before: ignored
    Row("identitytoken-number", FROM_REGISTRY, r"auths\['{reg}'\]\.identitytoken is a number, not a string",
        setup=_docker_config({"auths": {"HOST": {"identitytoken": 42}}})),  # before: str(42) used as a token
    Row("password-object", FROM_REGISTRY, r"auths\['{reg}'\]\.password is an object, not a string",
        setup=_docker_config({"auths": {"HOST": {"username": "u", "password": {"p": SECRET}}}}),
        secrets=(SECRET,)),  # before: the dict's str() sent as the password
    Row("credhelpers-number", FROM_REGISTRY, r"credHelpers\['{reg}'\] is a number, not the name of a credential",
        setup=_docker_config({"credHelpers": {"HOST": 5}})),  # before: ignored
    Row("credsstore-object", FROM_REGISTRY, r"config\.json: 'credsStore' is an object, not a string",
        setup=_docker_config({"credsStore": {"x": 1}})),  # before: ignored
    Row("config-top-level-list", FROM_REGISTRY, r"credentials file .*config\.json is not a JSON object",
        setup=_docker_config(["HOST"])),  # before: ignored
    Row("config-bad-json", FROM_REGISTRY, r"credentials file .*config\.json is not valid JSON",
        setup=_docker_config(None, raw=b'{"auths": {')),  # (one line before too)
    Row("config-not-utf8", FROM_REGISTRY, r"credentials file .*config\.json is not valid JSON",
        setup=_docker_config(None, raw=b'{"auths": "\xff\xfe"}')),  # before: UnicodeDecodeError traceback
    Row("config-deep-json", FROM_REGISTRY, r"credentials file .*config\.json is not valid JSON",
        setup=_docker_config(None, raw=b"[" * 200_000)),  # before: RecursionError traceback
    Row("creds-no-colon", (*FROM_REGISTRY, "--creds", SECRET), r"--creds must be USER:PASSWORD", code=2,
        secrets=(SECRET,)),

    # -- item 4: servers that are not registries (before: taken for registries) -----------
    Row("push-to-html200", (*FROM_LAYOUT, "--output-name", "{fake_html200}/team/x:1"),
        r"{fake_html200} does not answer as an OCI registry: GET /v2/ answered 200 with a body that is not "
        r"JSON \(text/html\)"),  # before: exit 0, "13 already there"
    Row("pull-from-html200", ("compose", "--backend", "identity", "--image", "min,{fake_html200}/nvidia/min:1",
                              "--image", "full,oci:{fx}:full", "--work-dir", "{tmp}/work", *OUT),
        r"{fake_html200} does not answer as an OCI registry"),  # before: "manifest is not valid JSON"
    Row("push-to-empty200", (*FROM_LAYOUT, "--output-name", "{fake_empty200}/team/x:1"),
        r"{fake_empty200} does not answer as an OCI registry: GET /v2/ answered 200 with an empty body"),
    Row("push-to-json200", (*FROM_LAYOUT, "--output-name", "{fake_json200}/team/x:1"),
        r"{fake_json200} does not answer as an OCI registry: it answered the start of an upload to team/x with "
        r"HTTP 200"),  # before: exit 0
    Row("push-to-404", (*FROM_LAYOUT, "--output-name", "{fake_404}/team/x:1"),
        r"{fake_404} does not answer as an OCI registry: GET /v2/ answered HTTP 404"),
    Row("push-to-401-no-challenge", (*FROM_LAYOUT, "--output-name", "{fake_401_no_challenge}/team/x:1"),
        r"does not answer as an OCI registry: GET /v2/ answered 401 without a Basic or Bearer challenge"),
    Row("push-to-bearer-no-realm", (*FROM_LAYOUT, "--output-name", "{fake_401_bearer_no_realm}/team/x:1"),
        r"does not answer as an OCI registry: GET /v2/ answered 401 without"),
    Row("push-to-api-v1", (*FROM_LAYOUT, "--output-name", "{fake_api_v1}/team/x:1"),
        r"does not answer as an OCI registry: GET /v2/ names API version 'registry/1\.0'"),
    Row("blob-head-wrong-size", (*FROM_LAYOUT, "--output-name", "{fake_head_size}/team/x:1"),
        r"{fake_head_size} does not answer as an OCI registry: HEAD of blob sha256:[0-9a-f]+ in team/x says 7 "
        r"bytes, not \d+"),  # before: exit 0, every blob "already there"
    Row("blob-head-wrong-digest", (*FROM_LAYOUT, "--output-name", "{fake_head_digest}/team/x:1"),
        r"HEAD of blob sha256:[0-9a-f]+ in team/x named digest sha256:0+;"),  # before: exit 0
    Row("manifest-put-wrong-digest", (*FROM_LAYOUT, "--output-name", "{fake_put_digest}/team/x:1"),
        r"{fake_put_digest} does not answer as an OCI registry: it answered the PUT of manifest sha256:[0-9a-f]+ "
        r"to team/x:sha256:[0-9a-f]+ with digest sha256:0+"),  # before: exit 0
    Row("login-to-html200", ("login", "{fake_html200}", *LOGIN[1:]), r"{fake_html200} does not answer as an OCI "
        r"registry", stdin=SECRET + "\n", secrets=(SECRET,),
        untouched=("{tmp}/auth.json",)),  # before: "Login succeeded", credential stored
    Row("login-to-401-no-challenge", ("login", "{fake_401_no_challenge}", *LOGIN[1:]),
        r"answered 401 without a Basic or Bearer challenge", stdin=SECRET + "\n", secrets=(SECRET,),
        untouched=("{tmp}/auth.json",)),
    Row("push-silent", (*FROM_LAYOUT, "--output-name", "{silent}/team/x:1", "--timeout", "2"),
        r"cannot reach registry {silent} for its API check \(GET /v2/\): no answer within 2 s \(2 attempts\); "
        r"if it is only slow, pass a larger --timeout"),  # before: 5 attempts, no word of --timeout
    Row("pull-silent", ("compose", "--backend", "identity", "--image", "min,{silent}/nvidia/min:1",
                        "--image", "full,oci:{fx}:full", "--work-dir", "{tmp}/work", "--timeout", "2", *OUT),
        r"cannot reach registry {silent} .*no answer within 2 s.*--timeout"),
    Row("push-wrong-credentials-before-layers",
        (*FROM_LAYOUT, "--output-name", "{guarded}/cat/push:1", "--creds", f"{PROXY_USER}:{SECRET}",
         "--store-dir", "{tmp}/store"),
        r"registry {guarded} refused the credentials for checking write access to cat/push",
        secrets=(SECRET,), check=_no_layer_read),  # before: found only after every layer was read

    # -- item 5: names from images and servers are escaped --------------------------------
    Row("evil-backend-name", (*FROM_PAIR, "--backend", "nosuch"),
        r"has no backend 'nosuch'; it has: a, b, c, no\\nerror: everything is fine\\x1b\[31m$",
        setup=_pair(LayerDef([F(f"{ROOT}/backends/{FORGED}", "dir")], "evil"))),  # before: a forged 2nd line
    Row("evil-hardlink-target", (*FROM_PAIR, "--backend", "a"),
        r"/opt/tritonserver/backends/a/h in the full image .* is a hardlink to /no\\nerror: everything is "
        r"fine\\x1b\[31m, which no layer",
        setup=_pair(LayerDef([F(f"{A}/h", "hardlink", target=FORGED)], "evil"))),
    Row("evil-layout-tag", ("compose", "--no-enable-gpu", "--backend", "a", "--image", "min,oci:{tmp}/in:nosuch",
                            "--image", "full,oci:{tmp}/in:full", "--work-dir", "{tmp}/work", *OUT),
        r"has no image tagged 'nosuch'; it has: full, min, no\\nerror: everything is fine\\x1b\[31m",
        setup=_damaged("evil-tag")),
    Row("evil-registry-error", ("compose", "--backend", "identity", "--image", "min,{fake_evil_error}/n/min:1",
                                "--image", "full,oci:{fx}:full", "--work-dir", "{tmp}/work", *OUT),
        r"not found on {fake_evil_error} \(MANIFEST_UNKNOWN: no\\nerror: everything is fine\\x1b\[31m\)"),
    Row("huge-registry-error", ("compose", "--backend", "identity", "--image", "min,{fake_huge_error}/n/min:1",
                                "--image", "full,oci:{fx}:full", "--work-dir", "{tmp}/work", *OUT),
        r"^.{{0,700}}$"),  # before: 10 MB of the server's text in one line

    # -- item 7: output names are not reinterpreted ---------------------------------------
    Row("output-bad-digest", (*FROM_LAYOUT, "--output-name", "foo@not-a-digest!!"),
        r"invalid image reference 'foo@not-a-digest!!': 'not-a-digest!!' is not a sha256 digest", code=2,
        untouched=("{tmp}/foo",)),  # before: wrote oci:./foo:latest
    Row("output-credentials", (*FROM_LAYOUT, "--output-name", f"user:{SECRET}@host:5000/o:x"),
        r"--output-name '\*\*\*@host:5000/o:x' carries credentials", code=2, secrets=(SECRET,),
        untouched=("{tmp}/user",)),  # before: layout ./user, the password its tag, printed
    Row("output-bare-uppercase", (*FROM_LAYOUT, "--output-name", "Triton"),
        r"--output-name 'Triton' is not a valid image name", code=2, untouched=("{tmp}/Triton",)),
    Row("output-bare-escape", (*FROM_LAYOUT, "--output-name", "evil\x1b[31m"),
        r"--output-name 'evil\\x1b\[31m' is not a valid image name", code=2,
        untouched=("{tmp}/evil\x1b[31m",)),  # before: written, the escape printed raw
    Row("output-digest", (*FROM_LAYOUT, "--output-name", "{reg}/team/x@sha256:" + "a" * 64),
        r"--output-name '{reg}/team/x@sha256:a+' names a digest", code=2),  # before: refused after the work
    Row("image-credentials", ("compose", "--backend", "identity", "--image", f"min,u:{SECRET}@{{reg}}/nvidia/min:1",
                              "--image", "full,oci:{fx}:full", *OUT),
        r"image reference '\*\*\*@{reg}/nvidia/min:1' carries credentials", code=2,
        secrets=(SECRET,)),  # before: the password printed in "invalid image reference"
    Row("image-credentials-no-role", ("compose", "--image", f"u:{SECRET}@{{reg}}/nvidia/min:1", *OUT),
        r"--image '\*\*\*@{reg}/nvidia/min:1' must be <name>,<reference>", code=2, secrets=(SECRET,)),
    Row("login-credentials-in-server", ("login", f"u:{SECRET}@{{reg}}", *LOGIN[1:]),
        r"image reference '\*\*\*@{reg}/x' carries credentials", code=2, stdin="pw\n", secrets=(SECRET,),
        untouched=("{tmp}/auth.json",)),  # before: the password printed

    # -- the smaller items -----------------------------------------------------------------
    Row("broken-index-json", (*FROM_PAIR, "--backend", "a"), r"{tmp}/in/index\.json: manifest is not valid JSON",
        setup=_damaged("index-json")),  # before: no file named
    Row("missing-layer-blob", (*FROM_PAIR, "--backend", "a"),
        r"OCI layout {tmp}/in lacks blob sha256:[0-9a-f]+ \(no file {tmp}/in/blobs/sha256/[0-9a-f]+\); the layout "
        r"is incomplete: copy the image into it again", setup=_damaged("missing-layer")),
    Row("missing-manifest-blob", (*FROM_PAIR, "--backend", "a"),
        r"OCI layout {tmp}/in lacks the manifest tagged 'full' sha256:[0-9a-f]+ \(no file",
        setup=_damaged("missing-manifest")),
    Row("truncated-layer-blob", (*FROM_PAIR, "--backend", "a"),
        r"ended after \d+ of \d+ bytes; the file is corrupt \(damaged or truncated\): copy the layout again",
        setup=_damaged("truncated-layer")),  # before: "the transfer was cut short: retry"
    Row("layer-label-wording", (*FROM_PAIR, "--backend", "a"),
        r"^error: full layer 2 \(sha256:[0-9a-f]+\) entry '.*' climbs out of the root",
        setup=_pair(LayerDef([F(f"{A}/../../../../x", data=b"x")], "dotdot"))),  # before: "layer full layer 2"
    Row("usage-unknown-option", ("compose", "--nope"),
        r"No such option '--nope'.* \(see '.* compose --help'\)$", code=2),  # before: four lines
    Row("usage-bad-int", ("compose", "--jobs", "x"), r"Invalid value for '--jobs': 'x' is not a valid integer",
        code=2),
    Row("usage-negative-jobs", ("compose", "--jobs", "-2"), r"Invalid value for '--jobs': -2 is not in the range",
        code=2),  # before: accepted
    Row("usage-missing-argument", ("login",), r"Missing argument 'SERVER' \(see '.* login --help'\)$", code=2),
    Row("usage-unknown-command", ("frobnicate",), r"No such command 'frobnicate'", code=2),
    Row("usage-bad-bool", ("compose", "--tls-verify=maybe"), r"'maybe' is not a valid boolean", code=2),
    Row("login-empty-stdin", ("login", "{reg}", *LOGIN[1:]), r"--password-stdin read no password", code=2,
        stdin="", untouched=("{tmp}/auth.json",)),  # before: a prompt, then "Aborted!"
    Row("login-no-user-no-terminal", ("login", "{reg}", "--password-stdin", "--authfile", "{tmp}/auth.json"),
        r"login needs -u USER", code=2, stdin=SECRET + "\n", secrets=(SECRET,),
        untouched=("{tmp}/auth.json",)),  # before: a prompt, then "Aborted!"
    Row("prune-negative", ("store", "prune", "--max-size", "-1", "--store-dir", "{tmp}/store"),
        r"'-1' is not a size", code=2, untouched=("{tmp}/store",)),  # before: accepted (and the store created)
    Row("store-max-size-negative", (*FROM_LAYOUT, *OUT, "--store-max-size", "-5G"), r"'-5G' is not a size",
        code=2),  # before: accepted
    Row("timeout-nan", (*FROM_REGISTRY, "--timeout", "nan"), r"--timeout must be a positive number", code=2),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_catalogue(row: Row, servers: dict[str, str], oci_layout: Path, tmp_path: Path) -> None:
    ctx = Ctx(tmp_path, oci_layout)
    (tmp_path / "work").mkdir()
    if row.setup is not None:
        row.setup(ctx, servers)
    values = {"tmp": str(tmp_path), "fx": str(oci_layout), **servers}
    argv = [a.format(**values) for a in row.argv]
    pattern = row.pattern.format(**{k: re.escape(v) for k, v in values.items()})
    res = run_cli(*argv, env=ctx.env, cwd=tmp_path, stdin=row.stdin)
    assert_one_line_error(res, pattern, code=row.code, secrets=row.secrets,
                          untouched=[Path(u.format(**values)) for u in row.untouched])
    assert "Aborted" not in res.stderr and "Usage:" not in res.stderr
    if row.check is not None:
        row.check(ctx)


def test_catalogue_covers_the_issue() -> None:
    """Every input-side case of issue 13 has its row (a guard against rows lost in edits)."""
    ids = {r.id for r in ROWS}
    assert len(ROWS) >= 30 and len(ids) == len(ROWS)
    for needed in ("auth-number", "auths-not-object", "auth-bad-base64", "config-bad-json", "push-to-html200",
                   "login-to-html200", "blob-head-wrong-size", "manifest-put-wrong-digest", "evil-backend-name",
                   "evil-hardlink-target", "evil-registry-error", "output-bad-digest", "output-credentials",
                   "output-bare-uppercase", "broken-index-json", "missing-layer-blob", "truncated-layer-blob",
                   "layer-label-wording", "usage-unknown-option", "login-empty-stdin", "prune-negative",
                   "push-wrong-credentials-before-layers", "push-silent"):
        assert needed in ids, needed


# -- not errors, but part of the same items ------------------------------------------------

def test_store_info_does_not_create_the_store(tmp_path: Path) -> None:
    missing = tmp_path / "no-store-here"
    for argv in (["store", "info"], ["store", "prune"]):
        res = run_cli(*argv, "--store-dir", str(missing))
        assert res.returncode == 0, res.stderr
        assert not missing.exists()
    assert "no store here yet" in run_cli("store", "info", "--store-dir", str(missing)).stdout


def test_the_cli_boundary_escapes_any_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last line of defence: whatever message reaches the CLI's one error boundary,
    from wherever in the library, leaves as one line of printable characters."""
    from click.testing import CliRunner

    from ociassemble import cli
    from ociassemble.errors import SelectionError

    def boom(opts: object) -> None:
        raise SelectionError("a name nobody escaped: " + FORGED)

    monkeypatch.setattr(cli, "compose", boom)
    res = CliRunner().invoke(cli.main, ["compose", "--container-version", "24.05"])
    assert res.exit_code == 1
    assert res.stderr == "error: a name nobody escaped: no\\nerror: everything is fine\\x1b[31m\n"


# -- units: the escape helper and the /v2/ rule ------------------------------------------------

@pytest.mark.parametrize(("raw", "shown"), [
    ("plain name-1.2_x", "plain name-1.2_x"),
    ("a\nb", "a\\nb"),
    ("\r\t", "\\r\\t"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("\x00\x7f", "\\x00\\x7f"),
    ("\x9b", "\\x9b"),  # C1 control (CSI)
    ("abc\u202eevil", "abc\\u202eevil"),  # bidi override
    ("caf\u00e9 \u6f22\u5b57", "caf\u00e9 \u6f22\u5b57"),  # printable non-ASCII is kept
    (b"bad\xff".decode("utf-8", "surrogateescape"), "bad\\xff"),  # a raw byte, by its value
    ("\U000e0001", "\\U000e0001"),
])
def test_printable_escapes_what_a_terminal_would_obey(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(printable(raw)) == printable(raw)  # idempotent: the CLI applies it again
    assert printable(raw).isprintable()


def test_printable_limit() -> None:
    assert printable("x" * 10, 5) == "xx..."
    assert printable("\n" * 10, 6) == "\\n\\..."
    assert printable("short", 10) == "short"


@pytest.mark.parametrize(("status", "headers", "body", "ok"), [
    (200, API, b"{}", True),
    (200, API, b"", True),  # the header is enough
    (401, {**API, "WWW-Authenticate": 'Bearer realm="https://auth/token",service="r"'}, b"", True),
    (401, {"WWW-Authenticate": 'Basic realm="r"'}, b"", True),
    (401, {"WWW-Authenticate": 'Bearer realm="https://auth/token"'}, b"", True),
    (403, API, b"", True),
    (200, {}, b"{}", True),  # no header, but the JSON body the spec shows
    (200, {}, b"true", True),
    (200, {}, b"<html>It works!</html>", False),
    (200, {}, b"", False),
    (200, {}, b"[]", False),
    (200, {}, b"[" * 100_000, False),
    (401, {}, b"", False),
    (401, {"WWW-Authenticate": 'Bearer service="r"'}, b"", False),
    (401, {"WWW-Authenticate": 'Negotiate'}, b"", False),
    (403, {}, b"", False),
    (404, {}, b"{}", False),
    (404, API, b"{}", False),
    (200, {"Docker-Distribution-API-Version": "registry/1.0"}, b"{}", False),
    (302, {}, b"", False),
])
def test_api_check_rule(status: int, headers: dict[str, str], body: bytes, ok: bool) -> None:
    import requests.structures

    problem = api_check_problem(status, requests.structures.CaseInsensitiveDict(headers), body)
    assert (problem is None) == ok, problem
    if problem:
        assert problem.isprintable()


def test_parse_output_names() -> None:
    from ociassemble.errors import InvalidReference
    from ociassemble.oci.reference import LayoutRef, RegistryRef, parse_output, redact

    assert parse_output("tritonserver") == LayoutRef("./tritonserver", "latest")
    assert parse_output("my-image.v2:24.05") == LayoutRef("./my-image.v2", "24.05")
    assert parse_output("oci:/tmp/x:t") == LayoutRef("/tmp/x", "t")
    assert parse_output("reg.io:5000/a/b:t") == RegistryRef("reg.io:5000", "a/b", "t")
    for bad in ("foo@not-a-digest!!", "Foo", "foo:", "foo:bad tag", "", "a b", "foo@sha256:" + "0" * 64,
                "oci:/tmp/x@sha256:" + "0" * 64, "u:p@h.io/a:b", "docker://u@h.io/a"):
        with pytest.raises(InvalidReference):
            parse_output(bad)
    assert redact("u:pw@h.io:5000/a:b") == "***@h.io:5000/a:b"
    assert redact("docker://tok@h.io/a") == "docker://***@h.io/a"
    assert redact("ubuntu@sha256:" + "0" * 64) == "ubuntu@sha256:" + "0" * 64
    assert redact("h.io/a@sha256:" + "0" * 64).startswith("h.io/a@")


def test_bare_directory_of_same_name_is_never_reused_silently(tmp_path: Path) -> None:
    """``user:Secret@host/...`` used to become ./user with the password as a tag: nothing
    of it may appear anywhere, not even in a directory name."""
    res = run_cli("compose", "--output-name", "user:Pa55-w0rd@host/o:x", "--container-version", "24.05",
                  cwd=tmp_path)
    assert res.returncode == 2
    assert "Pa55-w0rd" not in res.stdout + res.stderr
    assert list(tmp_path.iterdir()) == []

