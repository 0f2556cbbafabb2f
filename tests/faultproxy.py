"""A fault-injecting HTTP proxy for S3 traffic, run in a thread on loopback.

Point a client's ``endpoint`` at :attr:`FaultProxy.endpoint` and every request goes to the real
server unchanged (method, path, query, headers including ``Host``, and body), except that a
seeded random fraction of them meets a fault instead:

- ``reset_before``: the client connection is reset (RST) before anything is forwarded;
- ``reset_after``: the request IS forwarded and applied by the server, then the client
  connection is reset before the response: a write happened that the client never heard of;
- ``http500`` / ``http503``: an S3 ``InternalError`` / ``ServiceUnavailable`` error response;
- ``slowdown``: a 503 with the S3 XML error body ``<Code>SlowDown</Code>`` (throttling);
- ``stall``: nothing is answered for ``stall_seconds`` (longer than the client's read
  timeout), then the connection is reset;
- ``truncate``: the request is forwarded, the response headers go out with the real
  ``Content-Length`` but only part of the body follows before the connection closes (an empty
  body is cut inside the header block instead);
- ``flip`` (only when named in ``kinds``): the request is forwarded and answered in full, with
  one byte of the response body changed (damage in transit, which the response's checksum
  header then does not match).

The client signs ``Host`` as the proxy's address; it is forwarded as sent. SeaweedFS without
configured identities accepts any signature, so this works against the test server.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import struct
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

FAULT_KINDS: tuple[str, ...] = (
    "reset_before", "reset_after", "http500", "http503", "slowdown", "stall", "truncate",
)
#: faults only injected when asked for by name (``kinds=``): a damaged listing would test s3fs's
#: XML parser, not bottomless
OPT_IN_KINDS: tuple[str, ...] = ("flip",)
_ERRORS = {
    "http500": (500, "Internal Server Error", "InternalError",
                "We encountered an internal error. Please try again."),
    "http503": (503, "Service Unavailable", "ServiceUnavailable",
                "Service is unable to handle request."),
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
}
# hop-by-hop headers of the proxy's own connections, never passed along
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "expect"}


class FaultProxy:
    """Forwards HTTP to ``upstream`` (``http://host:port``), injecting faults at ``rate``.

    Only requests whose ``"METHOD /path?query"`` contains ``match`` may meet a fault, and at
    most ``budget`` faults are injected (``None``: no limit). Every attribute (``faults_enabled``,
    ``rate``, ``kinds``, ``stall_seconds``, ``match``, ``budget``) may be changed while it runs.
    ``counts`` holds one counter per fault kind plus ``requests`` (all requests seen) and
    ``forwarded`` (requests the server received); ``seen`` lists every request as
    ``"METHOD /path?query"``, in arrival order.
    """

    def __init__(
        self, upstream: str, *, rate: float = 0.0, kinds: Iterable[str] = FAULT_KINDS,
        seed: int = 0, stall_seconds: float = 3.0, match: str = "", budget: int | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream = (parsed.hostname, parsed.port)
        self.rate = rate
        self.kinds = tuple(kinds)
        unknown = set(self.kinds) - set(FAULT_KINDS + OPT_IN_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)};"
                             f" allowed: {FAULT_KINDS + OPT_IN_KINDS}")
        self.stall_seconds = stall_seconds
        self.match = match
        self.budget = budget
        self.faults_enabled = True
        self.counts: Counter[str] = Counter()
        self.seen: list[str] = []
        #: request headers (lower case) never passed on, to play a server that ignores them
        self.drop_request_headers: set[str] = set()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """The URL to give the client instead of the server's."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FaultProxy:
        """Serve in a daemon thread; return self."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="faultproxy", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake stalled handlers and drop every client connection."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            _shutdown(connection)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def faults(self) -> dict[str, int]:
        """Faults injected so far, by kind (kinds never injected are left out)."""
        return {k: v for k, v in self.counts.copy().items() if k in FAULT_KINDS + OPT_IN_KINDS}

    def _choose(self, request: str) -> str | None:
        with self._lock:
            self.counts["requests"] += 1
            self.seen.append(request)
            if not self.faults_enabled or not self.kinds or self.match not in request:
                return None
            if self.budget is not None and sum(self.faults().values()) >= self.budget:
                return None
            if self._rng.random() >= self.rate:
                return None
            kind = self._rng.choice(self.kinds)
            self.counts[kind] += 1
            return kind

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def _track(self, connection: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: Any, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.proxy._count("handler_errors")  # a client that went away mid-request, mostly


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and "100 Continue" for ``Expect``
    server: _Server

    def setup(self) -> None:
        super().setup()
        self._upstream: http.client.HTTPConnection | None = None
        self.server.proxy._track(self.connection, True)

    def finish(self) -> None:
        self.server.proxy._track(self.connection, False)
        if self._upstream is not None:
            self._upstream.close()
        with contextlib.suppress(OSError):  # the connection was reset on purpose
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test output is for the tests."""

    def do_GET(self) -> None:
        self._proxy()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET  # noqa: N815

    # ------------------------------------------------------------ one request

    def _proxy(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        fault = proxy._choose(f"{self.command} {self.path}")
        if fault == "reset_before":
            self._reset()
            return
        if fault in _ERRORS:
            self._send_error(*_ERRORS[fault])
            return
        if fault == "stall":
            proxy._stopping.wait(proxy.stall_seconds)
            self._reset()
            return
        status, reason, headers, payload = self._forward(body)
        proxy._count("forwarded")
        if fault == "reset_after":
            self._reset()
            return
        head = self._head(
            status, reason, headers, None if self.command == "HEAD" else len(payload)
        )
        if fault == "flip" and payload and self.command != "HEAD":
            middle = len(payload) // 2
            payload = payload[:middle] + bytes([payload[middle] ^ 0xFF]) + payload[middle + 1:]
        if fault == "truncate":
            if payload and self.command != "HEAD":
                self.wfile.write(head + payload[: len(payload) // 2])
            else:
                self.wfile.write(head[: max(1, len(head) // 2)])
            self._close_gracefully()
            return
        self.wfile.write(head if self.command == "HEAD" else head + payload)

    def _read_body(self) -> bytes:
        """The request body as sent, chunk framing included."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = bytearray()
            while True:
                line = self.rfile.readline(65537)
                raw += line
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, up to the blank line
                        trailer = self.rfile.readline(65537)
                        raw += trailer
                        if trailer in (b"\r\n", b"\n", b""):
                            return bytes(raw)
                raw += self.rfile.read(size + 2)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send the request upstream verbatim; return the whole response."""
        for attempt in (1, 2):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*self.server.proxy.upstream, timeout=60)
            try:
                self._upstream.putrequest(
                    self.command, self.path, skip_host=True, skip_accept_encoding=True
                )
                dropped = _HOP_BY_HOP | self.server.proxy.drop_request_headers
                for name, value in self.headers.items():
                    if name.lower() not in dropped:
                        self._upstream.putheader(name, value)
                self._upstream.endheaders(body or None)
                response = self._upstream.getresponse()
                payload = response.read()
            except (ConnectionError, http.client.RemoteDisconnected):
                # a kept-alive upstream connection the server had closed: one fresh try
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
                continue
            # the body is re-sent whole, so its length is re-stated (a HEAD keeps the server's)
            dropped = _HOP_BY_HOP | {"transfer-encoding"}
            if self.command != "HEAD":
                dropped |= {"content-length"}
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in dropped]
            if response.will_close:
                self._upstream.close()
                self._upstream = None
            return response.status, response.reason, headers, payload
        raise AssertionError("unreachable")

    def _head(self, status: int, reason: str, headers: list[tuple[str, str]],
              length: int | None) -> bytes:
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send_error(self, status: int, reason: str, code: str, message: str) -> None:
        resource = urllib.parse.urlsplit(self.path).path
        payload = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<Resource>{resource}</Resource><RequestId>faultproxy</RequestId></Error>"
        ).encode()
        headers = [("Content-Type", "application/xml"), ("x-amz-request-id", "faultproxy")]
        head = self._head(status, reason, headers, len(payload))
        self.wfile.write(head if self.command == "HEAD" else head + payload)

    def _reset(self) -> None:
        """Close the client connection abruptly: an RST, not a FIN."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        self.connection.close()

    def _close_gracefully(self) -> None:
        """FIN after what was sent, so the client reads the partial response, then EOF."""
        self.close_connection = True
        _shutdown(self.connection)
        self.connection.close()


def _shutdown(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
