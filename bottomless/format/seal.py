"""The checksum every object ends with, and the other digests and stamps objects carry.

An object is its body followed by a trailer: the SHA-256 of the body (``DIGEST_SIZE`` bytes).
That digest is also the object's identity in the commit chain. Only this module reads or
writes a trailer.
"""

from __future__ import annotations

import datetime as _dt
import hashlib

from bottomless.errors import CorruptObjectError

DIGEST_SIZE = 32
ZERO_DIGEST = bytes(DIGEST_SIZE)


def digest(body: bytes | memoryview) -> bytes:
    """SHA-256 of ``body``."""
    return hashlib.sha256(body).digest()


def page_digest(page: bytes) -> bytes:
    """A short digest of one page, to compare pages without keeping them (not stored)."""
    return hashlib.blake2b(page, digest_size=16).digest()


def trailer_digest(data: bytes | memoryview) -> bytes:
    """The digest an object ends with: its identity in the commit chain (not checked)."""
    return bytes(data[-DIGEST_SIZE:])


def seal(body: bytes) -> bytes:
    """Append the checksum trailer to ``body``."""
    return body + digest(body)


def unseal(data: bytes, key: str) -> tuple[memoryview, bytes]:
    """Check an object's trailer; return its body and digest, or raise CorruptObjectError."""
    if len(data) < DIGEST_SIZE + 4:
        raise CorruptObjectError(f"{key}: object is truncated ({len(data)} bytes)", key=key)
    view = memoryview(data)
    body, trailer = view[:-DIGEST_SIZE], bytes(view[-DIGEST_SIZE:])
    check_trailer(digest(body), trailer, key)
    return body, trailer


def check_trailer(actual: bytes, trailer: bytes, key: str) -> None:
    """Raise CorruptObjectError unless the body's digest ``actual`` is the ``trailer``."""
    if actual != trailer:
        said, got = trailer.hex(), actual.hex()
        differ = next((i for i, (a, b) in enumerate(zip(said, got, strict=False)) if a != b), 0)
        shown = max(16, differ + 1)  # enough digits to show where they part
        raise CorruptObjectError(
            f"{key}: checksum mismatch (trailer says {_cut(said, shown)}, content hashes to"
            f" {_cut(got, shown)}): the object is truncated or corrupted",
            key=key,
        )


def _cut(digits: str, shown: int) -> str:
    return digits if len(digits) <= shown else digits[:shown] + "…"


def iso_time(ms: int, *, timespec: str = "milliseconds") -> str:
    """An object timestamp (``created_ms``: milliseconds since the epoch) as ISO 8601 UTC text,
    to ``timespec`` (as :meth:`datetime.datetime.isoformat` takes it)."""
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.UTC).isoformat(timespec=timespec)
