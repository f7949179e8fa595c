r"""A fault-injecting HTTP proxy for S3 tests (standard library only).

It listens on 127.0.0.1 and forwards every request to an S3 server (moto), except a
seeded share of them, which get a `503 SlowDown` reply (S3's throttling answer), a TCP
reset before any reply (a dropped connection), or - the common real failure - a reset in
the middle of the body: the upstream reply's status line and headers (with the full
Content-Length), then half its body, then a TCP reset ("midbody").  `reset_share` and
`midbody_share` are the shares of the faulty requests that get each kind of reset; the
rest get the 503.  `only`, a regular expression, limits the faults to the requests whose
"METHOD /path" it matches (e.g. r"^GET .*\.wav$": the reads of audio objects).  Which requests fail is decided
per request key: the n-th request with a given method and path fails iff
hash(seed, method, path, n) < rate, so the same job under the same seed meets the same
faults whatever order its parallel requests arrive in.
"""
from __future__ import annotations

import hashlib
import http.client
import re
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message>"
             b"<RequestId>fault-proxy</RequestId></Error>")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
               "trailer", "upgrade", "content-length"}


class FaultProxy:
    """`with FaultProxy(upstream) as proxy:` -> proxy.url; set proxy.rate / proxy.seed any time."""

    def __init__(self, upstream: str, rate: float = 0.0, seed: int = 0, reset_share: float = 0.5,
                 midbody_share: float = 0.0, only: str | None = None):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.rate, self.seed = rate, seed
        self.reset_share, self.midbody_share = reset_share, midbody_share
        self.only = only
        self.counts = Counter()  # "forwarded", "slowdown", "reset", "midbody"
        self._seen = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                body = self._read_body()
                fault = proxy._fault(self.command, self.path.split("?", 1)[0])
                if fault == "reset":
                    self._reset()
                    return
                if fault == "slowdown":
                    self._reply(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
                    return
                self._forward(body, midbody=fault == "midbody")

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _reset(self):
                # SO_LINGER 0: close() sends a TCP RST, as a dropped connection does.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _reply(self, status: int, headers: dict, body: bytes, length: int | None = None,
                       midbody: bool = False):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                if self.command == "HEAD":
                    body = b""
                if midbody:
                    # The full Content-Length is announced; half the body follows, then a reset.
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self._reset()
                    return
                self.wfile.write(body)

            def _forward(self, body: bytes, midbody: bool = False):
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    out = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
                    length = len(data)
                    if self.command == "HEAD":
                        length = int(response.getheader("Content-Length") or 0)
                    self._reply(response.status, out, data, length, midbody=midbody)
                finally:
                    conn.close()
                with proxy._lock:
                    # "midbody": a reply really cut short (a HEAD's or an empty body has nothing to cut)
                    cut = midbody and self.command != "HEAD" and len(data) > 0
                    proxy.counts["midbody" if cut else "forwarded"] += 1

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _fault(self, method: str, path: str) -> str | None:
        with self._lock:
            n = self._seen[(method, path)]
            self._seen[(method, path)] += 1
            if self.rate <= 0 or (self.only and not re.search(self.only, f"{method} {unquote(path)}")):
                return None
            digest = hashlib.sha256(f"{self.seed}/{method}/{path}/{n}".encode()).digest()
            draw, kind = (int.from_bytes(digest[:8], "big") / 2.0**64,
                          int.from_bytes(digest[8:16], "big") / 2.0**64)
            if draw >= self.rate:
                return None
            if kind < self.reset_share:
                fault = "reset"
            elif kind < self.reset_share + self.midbody_share:
                return "midbody"  # counted once the reply's half is out (_forward)
            else:
                fault = "slowdown"
            self.counts[fault] += 1
            return fault

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
