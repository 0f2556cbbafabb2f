"""A small recording HTTP proxy in front of an S3 endpoint: counts requests and times them.

Clients talk to :attr:`S3Proxy.endpoint` with path-style addressing; each request is forwarded
unchanged (Host header included, so signatures still match) to the upstream S3 server, and a
:class:`Request` is recorded with the moment the upstream's response was fully read, i.e. when
the object is in the bucket as far as any reader can tell. Nothing is retried, rewritten or
injected: it is a meter, not a fault injector.
"""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import threading
import time
import urllib.parse
from typing import Any

#: AWS S3 Standard list prices (US East), dollars per request
PRICE_PER_REQUEST = {"PUT": 0.005 / 1000, "COPY": 0.005 / 1000, "POST": 0.005 / 1000,
                     "LIST": 0.005 / 1000, "GET": 0.0004 / 1000, "HEAD": 0.0004 / 1000,
                     "DELETE": 0.0, "OTHER": 0.0004 / 1000}
#: operation classes in the order the report prints them
OPERATIONS = ("PUT", "COPY", "POST", "LIST", "GET", "HEAD", "DELETE", "OTHER")

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
               "transfer-encoding", "upgrade", "expect"}


@dataclasses.dataclass(frozen=True)
class Request:
    """One forwarded request: its bucket and key, its price class, and when it ran."""

    method: str
    bucket: str
    key: str
    operation: str  # one of OPERATIONS
    started: float  # time.perf_counter() when the request line arrived
    finished: float  # time.perf_counter() when the upstream response was fully read
    status: int
    body_bytes: int  # request body size


def classify(method: str, path: str, query: str, headers: Any) -> tuple[str, str, str]:
    """``(bucket, key, operation)`` of a path-style S3 request, priced as AWS bills it.

    PUT, COPY (a PUT with ``x-amz-copy-source``), POST (multipart upload steps and the batch
    DeleteObjects) and LIST (a GET on a bucket) are billed at the higher rate; GET and HEAD at
    the lower one; DELETE is free.
    """
    bucket, _, key = urllib.parse.unquote(path.lstrip("/")).partition("/")
    if method == "PUT":
        operation = "COPY" if headers.get("x-amz-copy-source") else "PUT"
    elif method == "POST":
        operation = "POST"
    elif method == "DELETE":
        operation = "DELETE"
    elif method == "HEAD":
        operation = "HEAD"
    elif method == "GET":
        is_list = not key and "location" not in urllib.parse.parse_qs(query)
        operation = "LIST" if is_list else "GET"
    else:
        operation = "OTHER"
    return bucket, key, operation


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the proxy's record is the log

    def finish(self) -> None:
        super().finish()
        upstream = getattr(self, "_upstream", None)
        if upstream is not None:
            upstream.close()

    def _body(self) -> bytes:
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

    def _forward(self) -> None:
        started = time.perf_counter()
        body = self._body()
        parsed = urllib.parse.urlsplit(self.path)
        upstream = getattr(self, "_upstream", None)
        if upstream is None:
            upstream = self._upstream = http.client.HTTPConnection(
                self.server.upstream_host, self.server.upstream_port, timeout=300)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            upstream.close()  # a stale keep-alive connection: one fresh attempt
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finished = time.perf_counter()
        bucket, key, operation = classify(self.command, parsed.path, parsed.query, self.headers)
        self.server.record(Request(self.command, bucket, key, operation, started, finished,
                                   response.status, len(body)))
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        if self.command == "HEAD":
            self.send_header("Content-Length", response.getheader("Content-Length") or "0")
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815 - stdlib names


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    upstream_host: str
    upstream_port: int
    records: list[Request]
    lock: threading.Lock

    def record(self, request: Request) -> None:
        with self.lock:
            self.records.append(request)


class S3Proxy:
    """A recording proxy on a free loopback port in front of ``upstream`` (``http://host:port``).

    ``with S3Proxy(server.endpoint) as proxy:`` starts it; give clients ``proxy.endpoint``.
    """

    def __init__(self, upstream: str) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.upstream_host = parts.hostname or "127.0.0.1"
        self._server.upstream_port = parts.port or 80
        self._server.records = []
        self._server.lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3proxy",
                                        daemon=True)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> S3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests(self, bucket: str | None = None, since: float = float("-inf"),
                 until: float = float("inf")) -> list[Request]:
        """Recorded requests (of ``bucket``, if given) that started in ``[since, until)``."""
        with self._server.lock:
            found = list(self._server.records)
        return [r for r in found if (bucket is None or r.bucket == bucket)
                and since <= r.started < until]


def count_by_operation(requests: list[Request]) -> dict[str, int]:
    """How many requests of each operation class (every class present, zeros included)."""
    counts = dict.fromkeys(OPERATIONS, 0)
    for request in requests:
        counts[request.operation] += 1
    return counts


def price(counts: dict[str, float]) -> float:
    """Dollars for ``counts`` requests at the list prices of :data:`PRICE_PER_REQUEST`."""
    return sum(PRICE_PER_REQUEST[op] * n for op, n in counts.items())
