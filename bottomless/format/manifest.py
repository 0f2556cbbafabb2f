"""Snapshot manifests: which parts hold a snapshot, as a sealed JSON document."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bottomless.errors import CorruptObjectError
from bottomless.format.seal import DIGEST_SIZE, ZERO_DIGEST, seal, unseal

#: version of snapshot manifests
MANIFEST_VERSION = 1

_MANIFEST_MAGIC = b"BTLM"


@dataclass
class Manifest:
    """A snapshot: the whole database as of commit ``seq`` of a generation.

    ``parts`` lists the page-batch objects that hold it: ``{"key", "first", "pages",
    "digest"}``, part ``i`` covering pages ``first .. first + pages - 1``. A part may live under
    an older snapshot or generation when its pages did not change. ``commit_digest`` is the
    digest of commit ``seq`` (``None`` for a generation's base snapshot, seq 0), so commits
    after the snapshot can be chained from it. ``base`` records the (generation, seq) a branched
    generation started from.
    """

    db_name: str
    generation: str
    seq: int
    page_size: int
    db_size: int
    part_pages: int
    writer: str
    reason: str
    parts: list[dict[str, Any]]
    commit_digest: str | None = None
    base: dict[str, Any] | None = None
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    digest: bytes = ZERO_DIGEST

    def to_json(self) -> dict[str, Any]:
        """The manifest's JSON document."""
        return {
            "db_name": self.db_name,
            "generation": self.generation,
            "seq": self.seq,
            "created_ms": self.created_ms,
            "page_size": self.page_size,
            "db_size": self.db_size,
            "part_pages": self.part_pages,
            "writer": self.writer,
            "reason": self.reason,
            "parts": self.parts,
            "commit_digest": self.commit_digest,
            "base": self.base,
        }

    @property
    def chain_digest(self) -> bytes:
        """What the first commit after this snapshot names as its ``prev``."""
        return bytes.fromhex(self.commit_digest) if self.commit_digest else self.digest


def encode_manifest(manifest: Manifest) -> bytes:
    """Serialize a manifest into a sealed object; sets ``manifest.digest``."""
    doc = json.dumps(manifest.to_json(), sort_keys=True).encode()
    sealed = seal(_MANIFEST_MAGIC + struct.pack("<H", MANIFEST_VERSION) + doc)
    manifest.digest = sealed[-DIGEST_SIZE:]
    return sealed


def decode_manifest(data: bytes, key: str) -> Manifest:
    """Verify and parse a sealed manifest."""
    body, object_digest = unseal(data, key)
    if len(body) < 6 or bytes(body[:4]) != _MANIFEST_MAGIC:
        raise CorruptObjectError(f"{key}: not a bottomless manifest", key=key)
    (version,) = struct.unpack_from("<H", body, 4)
    if version != MANIFEST_VERSION:
        raise CorruptObjectError(f"{key}: manifest format version {version} is not supported",
                                 key=key)
    try:
        doc: Mapping[str, Any] = json.loads(bytes(body[6:]))
        manifest = Manifest(
            db_name=str(doc["db_name"]), generation=str(doc["generation"]),
            seq=int(doc["seq"]), page_size=int(doc["page_size"]), db_size=int(doc["db_size"]),
            part_pages=int(doc["part_pages"]), writer=str(doc["writer"]),
            reason=str(doc["reason"]), parts=[dict(p) for p in doc["parts"]],
            commit_digest=doc.get("commit_digest"), base=doc.get("base"),
            created_ms=int(doc["created_ms"]),
        )
        for part in manifest.parts:
            str(part["key"]), int(part["first"]), int(part["pages"])
            bytes.fromhex(part["digest"])
        if manifest.commit_digest is not None:
            bytes.fromhex(manifest.commit_digest)
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:
        raise CorruptObjectError(f"{key}: manifest JSON is invalid: {e}", key=key) from e
    manifest.digest = object_digest
    return manifest
