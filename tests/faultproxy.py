"""A fault-injecting HTTP proxy in front of the real registry, and a second "blob storage" host.

Only what no real registry does on demand is faked here: a connection dropped in the
middle of a body, a 500/503/429, a stall, a slow link, bytes altered on the way, a redirect of blob
downloads to another host. Everything else is the real registry's answer, forwarded.

Rules are matched in order by method and a path regex and fire ``times`` times (0: always).
The proxy can also demand Basic auth itself, so that a client has an Authorization
header to (not) leak to the blob host.
"""

from __future__ import annotations

import base64
import http.client
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.registryserver import free_port

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
       "proxy-authenticate"}


class _Quiet(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no request log on stderr."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *a: object) -> None:
        pass

    def relay_head(self, resp: http.client.HTTPResponse) -> None:
        """Status and end-to-end headers of the upstream answer."""
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.end_headers()


@dataclass
class Rule:
    method: str
    path: str  # regex, searched in the request path
    fault: str  # drop-mid | reset | status | stall | corrupt | redirect | slow (the body over ``seconds``)
    times: int = 1
    status: int = 503
    retry_after: str | None = None
    seconds: float = 0.0
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method) and re.search(self.path, path) is not None
                and (self.times == 0 or self.fired < self.times))


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FaultProxy:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    blob_seen: list[Seen] = field(default_factory=list)
    basic: tuple[str, str] | None = None
    ignore_range: bool = False  # act like a server that ignores Range and sends the whole body
    blob_bytes: int = 0  # body bytes of blob GETs sent to the client: what a run fetched, counted here
    blob_bytes_by: dict[str, int] = field(default_factory=dict)  # the same, by blob digest
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.blob_port = free_port()
        self._servers = [ThreadingHTTPServer(("127.0.0.1", self.port), self._handler()),
                         ThreadingHTTPServer(("127.0.0.1", self.blob_port), self._blob_handler())]
        for s in self._servers:
            s.daemon_threads = True
            threading.Thread(target=s.serve_forever, daemon=True).start()

    def close(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()

    def reset(self, *rules: Rule) -> None:
        with self.lock:
            self.rules = list(rules)
            self.seen.clear()
            self.blob_seen.clear()

    def _take(self, method: str, path: str) -> Rule | None:
        with self.lock:
            for r in self.rules:
                if r.matches(method, path):
                    r.fired += 1
                    return r
        return None

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes | None
                 ) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection(self.upstream, timeout=60)
        conn.request(method, path, body=body, headers=headers)
        return conn.getresponse()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(_Quiet):
            def _body(self) -> bytes | None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n or self.command in ("PUT", "PATCH", "POST") else None

            def _handle(self) -> None:
                with proxy.lock:
                    proxy.seen.append(Seen(self.command, self.path, dict(self.headers.items())))
                body = self._body()
                if proxy.basic and self.path.startswith("/v2"):
                    want = "Basic " + base64.b64encode(":".join(proxy.basic).encode()).decode()
                    if self.headers.get("Authorization") != want:
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="fault-proxy"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                rule = proxy._take(self.command, self.path)
                if rule and rule.fault == "reset":
                    self.close_connection = True
                    self.connection.close()
                    return
                if rule and rule.fault == "status":
                    self.send_response(rule.status)
                    if rule.retry_after:
                        self.send_header("Retry-After", rule.retry_after)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if rule and rule.fault == "stall":
                    time.sleep(rule.seconds)
                if rule and rule.fault == "redirect":
                    self.send_response(307)
                    self.send_header("Location", f"http://127.0.0.1:{proxy.blob_port}{self.path}?sig=abc")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                drop = HOP | {"authorization"} | ({"range"} if proxy.ignore_range else set())
                headers = {k: v for k, v in self.headers.items() if k.lower() not in drop}
                headers["Host"] = proxy.host
                resp = proxy._forward(self.command, self.path, headers, body)
                data = resp.read()
                if rule and rule.fault == "corrupt" and data:
                    data = data[:-1] + bytes([data[-1] ^ 0xFF])
                self.relay_head(resp)
                if self.command == "HEAD":
                    return
                if rule and rule.fault == "slow":  # a slow link: the body in 20 pieces over rule.seconds
                    step = max(1, -(-len(data) // 20))
                    for i in range(0, len(data), step):
                        self.wfile.write(data[i:i + step])
                        self.wfile.flush()
                        time.sleep(rule.seconds / 20)
                    return
                if rule and rule.fault == "drop-mid":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(data)
                if self.command == "GET" and "/blobs/sha256:" in self.path:
                    digest = "sha256:" + self.path.split("/blobs/sha256:", 1)[1][:64]
                    with proxy.lock:
                        proxy.blob_bytes += len(data)
                        proxy.blob_bytes_by[digest] = proxy.blob_bytes_by.get(digest, 0) + len(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

        return Handler

    def _blob_handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Blobs(_Quiet):
            def do_GET(self) -> None:
                with proxy.lock:
                    proxy.blob_seen.append(Seen("GET", self.path, dict(self.headers.items())))
                path = self.path.split("?", 1)[0]
                headers = {"Host": proxy.host}
                if self.headers.get("Range"):
                    headers["Range"] = self.headers["Range"]
                resp = proxy._forward("GET", path, headers, None)
                data = resp.read()
                self.relay_head(resp)
                self.wfile.write(data)

        return Blobs
