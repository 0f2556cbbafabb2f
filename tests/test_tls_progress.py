"""TLS certificates are verified by default; long uploads report progress."""

from __future__ import annotations

import http.server
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import apsw
import pytest

import bottomless
from bottomless.sqlite import vfs


class _Teapot(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self.send_response(418)
        self.end_headers()

    do_GET = do_PUT = do_HEAD  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def https_endpoint(tmp_path: Any) -> Iterator[str]:
    """An https server on loopback with a self-signed certificate nobody trusts."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Teapot)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_https_certificates_are_verified_by_default(tmp_path: Any, https_endpoint: str) -> None:
    settings = bottomless.Settings(endpoint=https_endpoint, bucket="b", timeout=3,
                                   max_retries=0, access_key_id="k", secret_access_key="s")
    assert settings.verify_tls is True
    started = time.monotonic()
    with pytest.raises(bottomless.StoreError) as info:
        bottomless.connect(str(tmp_path / "tls.db"), settings)
    assert time.monotonic() - started < 30
    assert "certificate" in str(info.value).lower() or "ssl" in str(info.value).lower()
    insecure = settings.model_copy(update={"verify_tls": False})
    with pytest.raises(bottomless.StoreError) as info:
        bottomless.connect(str(tmp_path / "tls.db"), insecure)
    assert "certificate" not in str(info.value).lower()  # it got past TLS, to a teapot


def test_initial_upload_reports_progress(tmp_path: Any) -> None:
    path = str(tmp_path / "big.db")
    plain = apsw.Connection(path)
    plain.execute("CREATE TABLE t(x); INSERT INTO t SELECT randomblob(3000) FROM"
                  " (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<600)"
                  " SELECT i FROM n)")
    plain.close()
    calls: list[tuple[str, int]] = []
    advanced: list[int] = []

    def factory(label: str, total: int) -> Any:
        calls.append((label, total))
        return advanced.append

    registered = vfs.register(None)
    registered.progress = factory
    try:
        settings = bottomless.Settings(backend="file", bucket=str(tmp_path / "r"),
                                       snapshot_part_mb=1)
        bottomless.connect(path, settings).close()
    finally:
        registered.progress = None
    assert calls and calls[0][0] == "uploading big.db"
    assert sum(advanced) == calls[0][1] > 2_000_000 and len(advanced) >= 2
