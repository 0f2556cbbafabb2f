"""S3 backend on s3fs: AWS S3, MinIO, SeaweedFS, R2 and other S3-compatible stores.

Create-only writes use ``If-None-Match: *``. Retries are left to botocore's "standard" mode
(``max_retries`` attempts after the first); s3fs's own retry loop is set to a single attempt so
the two layers never multiply.

Object bodies, written (create-only: every commit object, snapshot part and manifest) and read
(whole or ranged), listings and the bucket check go through a plain botocore client in the
calling thread, as do the lease's reads and conditional replaces (through s3fs, a PUT with a
body outlived ``timeout`` when the server stalled, and commits waited on the lease for the
whole outage). s3fs keeps deletes, and is imported and built only when one first runs, so that
a restore or a listing never pays for it (its import and its client took about a third of a
second of a small restore's CPU). s3fs runs
every request on its one event-loop thread: handing a commit's PUT over to it and back cost
about a quarter of a millisecond on loopback, a tenth of the request, and a restore's parallel
downloads all funnelled their bodies through that one thread. Both clients share the endpoint,
credentials, timeouts and retry policy. botocore's retries end when a response's headers
arrive; a body cut short after that is resumed with a ranged GET (see ``_stream``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import threading
import urllib.parse
import weakref
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    FlexibleChecksumError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from bottomless.backends._fsspec import FsspecPageStore
from bottomless.backends._s3_clients import botocore_client, s3fs_filesystem
from bottomless.errors import (
    BucketNotFoundError,
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    StoreError,
)

if TYPE_CHECKING:
    import s3fs

    from bottomless.settings import Settings

# s3fs is imported when first used, but its absence must show when the backend is opened, where
# the registry turns this ImportError into "pip install 'bottomless[s3]'"
if importlib.util.find_spec("s3fs") is None:
    raise ImportError("No module named 's3fs'", name="s3fs")

logger = logging.getLogger(__name__)


def _error_code(error: BaseException | None) -> str:
    """The S3 error code carried by an exception or its causes, or ``""``."""
    seen = 0
    while error is not None and seen < 5:
        response = getattr(error, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return str(code or status or "")
        error = error.__cause__ or error.__context__
        seen += 1
    return ""


class S3PageStore(FsspecPageStore):
    """Objects live in an S3 bucket, under keys exactly as the format names them."""

    backend = "s3"

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.bucket
        self.endpoint = settings.endpoint
        self._settings = settings
        self._client_lock = threading.Lock()
        self._client: Any = None
        self._probe: Any = None  # the one-attempt client of _holds, made when first needed
        self._fs: s3fs.S3FileSystem | None = None
        super().__init__(None, self.bucket)  # the s3fs filesystem is built on first use
        live_stores.add(self)
        self._ensure_bucket(settings.create_bucket, settings.region)

    @property
    def fs(self) -> s3fs.S3FileSystem:
        """The s3fs filesystem of deletes, built (and s3fs imported) on first use."""
        fs = self._fs
        if fs is None:
            with self._client_lock:
                if self._fs is None:
                    self._fs = s3fs_filesystem(self._settings)
                fs = self._fs
        return fs

    @fs.setter
    def fs(self, fs: s3fs.S3FileSystem | None) -> None:
        self._fs = fs

    @property
    def client(self) -> Any:
        """The botocore client of object bodies, made on first use (and again in a forked
        child, which must not share its parent's pooled connections)."""
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = botocore_client(self._settings)
                client = self._client
        return client

    def _holds(self, key: str, data: bytes, *, after_failure: bool = False) -> bool:
        """Whether ``key`` holds ``data``. After a failed PUT (did it land?) it is asked once,
        with no retries: the PUT has spent the request budget, and a commit waits on this.
        After "it exists" it is asked with the usual retries: a wrong "no" there would make
        the writer take its own commit for an orphan and start a new generation."""
        if not after_failure:
            return super()._holds(key, data)
        probe = self._probe
        if probe is None:
            with self._client_lock:
                if self._probe is None:
                    self._probe = botocore_client(self._settings.model_copy(
                        update={"max_retries": 0}))
                probe = self._probe
        try:
            response = probe.get_object(Bucket=self.bucket, Key=key)
            return bool(response["Body"].read() == data)
        except Exception:  # noqa: BLE001 - unanswered or missing: it did not land, as far
            return False  # as anyone can tell; the PUT's error stands

    def _forget_client(self) -> None:
        """In a forked child: drop the parent's clients (s3fs's too: its event loop is the
        parent's), and the lock some other thread of the parent may have held at fork() (it
        would stay held here)."""
        self._client = self._probe = self._fs = None
        self._client_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3PageStore:
        """Build the store that ``settings`` describes."""
        return cls(settings)

    @property
    def location(self) -> str:
        """Where the objects live."""
        return f"s3://{self.bucket} at {_public(self.endpoint) or 'AWS'}"

    def _ensure_bucket(self, create: bool, region: str | None) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except Exception as e:
            code = _error_code(e)
            if code not in ("404", "NoSuchBucket", "NotFound") and not isinstance(
                e, FileNotFoundError
            ):
                raise self._translate(e, "HEAD bucket", "") from e
        if not create:
            raise BucketNotFoundError(
                f"{self.location}: bucket {self.bucket!r} does not exist (check its name; a"
                " writer creates it unless create_bucket is off, env"
                " LIBSQL_BOTTOMLESS_CREATE_BUCKET, URI parameter create_bucket)"
            )
        try:
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if region and region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            self.client.create_bucket(**kwargs)
        except Exception as e:
            if _error_code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._translate(e, "CREATE bucket", "") from e

    def _translate(self, error: Exception, action: str, key: str) -> Exception:
        code = _error_code(error)
        where = f"{self.location}: {action} {key}".rstrip()
        if isinstance(error, FileNotFoundError) or code in ("NoSuchKey", "404"):
            if code == "NoSuchBucket":
                return StoreError(f"{where} failed: bucket {self.bucket!r} does not exist")
            if not key:  # the bucket itself: a 404 for creating it too is not S3 speaking
                return StoreError(f"{where} failed: not found (404); check that the endpoint"
                                  " is an S3 API endpoint")
            return ObjectNotFoundError(f"{self.location}: {key} does not exist", key=key)
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StoreError(f"{where} failed: access denied ({code}); check the credentials")
        if isinstance(error, (BotoCoreError, ClientError, OSError)):
            detail = f"{code}: {error}" if code else str(error) or type(error).__name__
            return StoreError(f"{where} failed: {detail}")
        return StoreError(f"{where} failed: {type(error).__name__}: {error}")

    def put_if_absent(self, key: str, data: bytes) -> None:
        """Create ``key`` with ``If-None-Match: *``; ObjectExistsError if it exists."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(data), IfNoneMatch="*")
        except Exception as e:
            code = _error_code(e)
            if isinstance(e, FileExistsError) or code in ("PreconditionFailed", "412"):
                raise ObjectExistsError(f"{self.location}: {key} already exists", key=key) from e
            raise self._translate(e, "PUT", key) from e

    def get(self, key: str) -> bytes:
        """Return the whole object; raise ObjectNotFoundError if it does not exist."""
        return self._whole(key)

    def _whole(self, key: str, start: int = 0, last: int | None = None) -> bytes:
        """Bytes ``start..last`` of ``key``, read again from the start when they arrived
        damaged (the response's checksum did not match, which botocore tells only at the end);
        every attempt draws on the one request budget."""
        budget = _Budget(self._settings.max_retries + 1)
        while True:
            try:
                return b"".join(self._stream(key, _WHOLE, start, last, budget))
            except StoreError as e:
                if not isinstance(e.__cause__, FlexibleChecksumError) or budget.left <= 0:
                    raise
                logger.warning("GET %s: the body arrived damaged; fetching it again", key)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Return bytes ``[start, end)``; empty where S3 would answer 416."""
        if end <= start:
            if not self.exists(key):
                raise ObjectNotFoundError(f"{self.location}: {key} does not exist", key=key)
            return b""
        try:
            return self._whole(key, start, end - 1)
        except StoreError as e:
            if _error_code(e) == "InvalidRange":
                if not self.exists(key):
                    raise ObjectNotFoundError(f"{self.location}: {key} does not exist",
                                              key=key) from e
                return b""
            raise

    def get_chunks(
        self, key: str, chunk_size: int = 1024 * 1024
    ) -> Generator[bytes, None, None]:
        """Yield the object in pieces of at most ``chunk_size`` bytes as they arrive; a body cut
        short is resumed where it stopped."""
        return self._stream(key, chunk_size)

    def list_keys(self, prefix: str) -> list[str]:
        """Return every key that starts with ``prefix``, sorted: one LIST per 1,000 keys."""
        keys = (item["Key"] for page in self._list(prefix) for item in page.get("Contents", ()))
        return sorted(k for k in keys if not k.endswith("/") and not _temporary(k))

    def list_children(self, prefix: str) -> list[str]:
        """Return the names one level below ``prefix`` (none when it names an object)."""
        base = prefix.strip("/") and prefix.rstrip("/") + "/"
        names: set[str] = set()
        for page in self._list(base, delimiter="/"):
            for common in page.get("CommonPrefixes", ()):
                names.add(common["Prefix"][len(base):].rstrip("/"))
            names.update(item["Key"][len(base):] for item in page.get("Contents", ()))
        names.discard("")
        return sorted(n for n in names if not _temporary(n))

    def _list(self, prefix: str, delimiter: str = "") -> Iterator[dict[str, Any]]:
        """The pages of a ListObjectsV2 of ``prefix``."""
        extra: dict[str, str] = {"Delimiter": delimiter} if delimiter else {}
        while True:
            try:
                page: dict[str, Any] = self.client.list_objects_v2(
                    Bucket=self.bucket, Prefix=prefix, **extra
                )
            except Exception as e:
                raise self._translate(e, "LIST", prefix) from e
            yield page
            if not page.get("IsTruncated"):
                return
            extra["ContinuationToken"] = page["NextContinuationToken"]

    def exists(self, key: str) -> bool:
        """Tell whether ``key`` is an object (a prefix of other keys is not): one HEAD."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as e:
            if _error_code(e) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._translate(e, "HEAD", key) from e
        return True

    def _stream(
        self, key: str, chunk_size: int, start: int = 0, last: int | None = None,
        budget: _Budget | None = None,
    ) -> Generator[bytes, None, None]:
        """Bytes ``start..last`` (inclusive; to the end for None) of ``key``, as they arrive.

        botocore retries a request until its headers arrive; a body cut short while it is read
        is resumed here with a ranged GET from the first byte missing, on the same version of
        the object (``If-Match``). Both draw on one budget of ``max_retries + 1`` requests (a
        resume is sent only while some is left, but botocore may retry it up to its own limit,
        so a read sends at most about twice ``max_retries + 1``). A body whose checksum does not
        match (known only once it has all been yielded) is a StoreError: the caller has the
        damaged bytes and must start again.
        """
        budget = budget or _Budget(self._settings.max_retries + 1)
        wanted = None if last is None else last - start + 1
        received = 0
        etag = ""
        while True:
            first = start + received
            response, ranged = self._get_object(key, first, last, etag, budget)
            body = response["Body"]
            try:
                etag = self._same_version(response, key, etag)
                skip = self._skip(response, key, first, ranged)
                left = None if wanted is None else wanted - received
                for chunk in _trimmed(body.iter_chunks(chunk_size), skip, left):
                    received += len(chunk)
                    yield chunk
                    if received == wanted:
                        return
                return
            except _BODY_ERRORS as e:
                if received == wanted:
                    return  # all there: what failed came after the bytes asked for
                if budget.left <= 0:
                    raise self._translate(e, "GET", key) from e
                logger.warning("GET %s: the body was cut short after %d bytes (%s); resuming",
                               key, received, type(e).__name__)
            except StoreError:
                raise
            except FlexibleChecksumError as e:
                raise StoreError(f"{self.location}: GET {key} failed: the body arrived damaged"
                                 f" ({e})") from e
            except Exception as e:  # anything else while reading: a store error
                raise self._translate(e, "GET", key) from e
            finally:
                body.close()

    def _get_object(
        self, key: str, first: int, last: int | None, etag: str, budget: _Budget
    ) -> tuple[dict[str, Any], bool]:
        """Send the GET for bytes ``first..last`` of ``key`` (of version ``etag``, if known),
        charged to ``budget``; return the response and whether it asked for a range."""
        extra: dict[str, str] = {}
        if first or last is not None:
            extra["Range"] = f"bytes={first}-{'' if last is None else last}"
        if etag:
            extra["IfMatch"] = etag
        try:
            response: dict[str, Any] = self.client.get_object(
                Bucket=self.bucket, Key=key, **extra
            )
        except Exception as e:
            raise self._translate(e, "GET", key) from e
        budget.left -= 1 + int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
        return response, "Range" in extra

    def _skip(self, response: dict[str, Any], key: str, first: int, ranged: bool) -> int:
        """How many bytes of a ranged GET's body to skip: none when the server sent the range
        asked for, ``first`` when it ignored Range and sent the whole object."""
        if not ranged:
            return 0
        answered = str(response.get("ContentRange") or "")
        if not answered:
            return first
        if not answered.startswith(f"bytes {first}-"):
            raise StoreError(f"{self.location}: GET {key} failed: asked for the bytes from"
                             f" {first} on, the server answered {answered!r}")
        return 0

    def _same_version(self, response: dict[str, Any], key: str, etag: str) -> str:
        """The ETag of the first response; a resumed one must carry the same."""
        answered = str(response.get("ETag") or "")
        if etag and answered != etag:
            raise StoreError(f"{self.location}: GET {key} failed: the object changed while it"
                             " was read")
        return etag or answered

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """Return the object and its ETag."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            data: bytes = response["Body"].read()
        except Exception as e:
            raise self._translate(e, "GET", key) from e
        return data, str(response["ETag"])

    def put_if_match(self, key: str, data: bytes, version: str) -> str:
        """Replace ``key`` with ``If-Match: <ETag>``; ObjectChangedError on 412."""
        try:
            response = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=bytes(data), IfMatch=version
            )
        except Exception as e:
            if _error_code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict",
                                  "409", "NoSuchKey", "404") or isinstance(
                e, (FileNotFoundError, FileExistsError)
            ):
                raise ObjectChangedError(f"{self.location}: {key} changed", key=key) from e
            raise self._translate(e, "PUT", key) from e
        return str(response["ETag"])

    def close(self) -> None:
        """Drop the clients' connections."""
        live_stores.discard(self)
        fs = self._fs
        if fs is not None:
            with contextlib.suppress(Exception):  # best effort at shutdown
                type(fs).close_session(fs.loop, fs.s3)
        for client in (self._client, self._probe):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self._client = self._probe = self._fs = None


#: a response body cut short or stalled while being read (after botocore's retries ended)
_BODY_ERRORS = (IncompleteReadError, ResponseStreamingError, ReadTimeoutError,
                ConnectionClosedError)
#: ``chunk_size`` for reads that keep the whole object anyway
_WHOLE = 1024 * 1024


def _trimmed(chunks: Iterator[bytes], skip: int, left: int | None) -> Iterator[bytes]:
    """``chunks`` without their first ``skip`` bytes and cut after ``left`` more (all for
    None: a server that ignored Range sends more), empty pieces left out."""
    for chunk in chunks:
        if skip:
            dropped = min(skip, len(chunk))
            chunk, skip = chunk[dropped:], skip - dropped
        if left is not None:
            chunk = chunk[:left]
            left -= len(chunk)
        if chunk:
            yield chunk


def _temporary(key: str) -> bool:
    """Whether ``key`` names a temporary object, which listings leave out (as the other
    backends do)."""
    return key.rsplit("/", 1)[-1].startswith(".tmp-")


class _Budget:
    """Requests one read may still send (botocore's retries counted)."""

    def __init__(self, left: int) -> None:
        self.left = left


class LiveStores:
    """Every open S3 store of this process, held weakly: the one owner of that set.

    A forked child must not use its parent's pooled connections, so after ``fork()`` every
    store drops its client (:meth:`forget_clients`, registered with ``os.register_at_fork``)
    and builds a new one on first use.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: weakref.WeakSet[S3PageStore] = weakref.WeakSet()

    def add(self, store: S3PageStore) -> None:
        """Track ``store`` until it is closed or garbage."""
        with self._lock:
            self._stores.add(store)

    def discard(self, store: S3PageStore) -> None:
        """Stop tracking ``store``."""
        with self._lock:
            self._stores.discard(store)

    def stores(self) -> list[S3PageStore]:
        """The stores open now."""
        with self._lock:
            return list(self._stores)

    def forget_clients(self) -> None:
        """In a forked child: make every store drop the client it inherited."""
        # the parent may have held the lock at fork(): in the child it would stay held
        self._lock = threading.Lock()
        for store in list(self._stores):
            store._forget_client()

    def close_all(self) -> None:
        """Close every open store (a hook for tests and for shutdown)."""
        for store in self.stores():
            store.close()


#: the S3 stores of this process
live_stores = LiveStores()
os.register_at_fork(after_in_child=live_stores.forget_clients)


def _public(endpoint: str) -> str:
    """The endpoint without any ``user:password@`` part."""
    parts = urllib.parse.urlsplit(endpoint)
    if parts.username is None and parts.password is None:
        return endpoint
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

