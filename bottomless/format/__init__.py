"""The storage format: object keys, page-batch objects, manifests and their checksums.

This package is the only place that knows how bytes are laid out in the store; it is documented
in ``docs/format.md``. It has no I/O of its own. Its rooms:

* :mod:`~bottomless.format.keys`: database names, generation ids, and every object key;
* :mod:`~bottomless.format.seal`: the checksum trailer every object ends with;
* :mod:`~bottomless.format.batch`: page batches (commits and snapshot parts);
* :mod:`~bottomless.format.manifest`: snapshot manifests;
* :mod:`~bottomless.format.lease`: the single-writer lease object;
* :mod:`~bottomless.format.stream`: decoding a page batch while it downloads.

Callers use the names re-exported here (``from bottomless import format as fmt``).
"""

from __future__ import annotations

from bottomless.format.batch import (
    BATCH_VERSION,
    BATCH_VERSIONS,
    COMPRESSION_CODES,
    COMPRESSION_NONE,
    COMPRESSION_ZSTD,
    HEADER_SIZE,
    KIND_COMMIT,
    KIND_SNAPSHOT,
    KIND_SUCCESSOR,
    MAX_WINDOW,
    BatchHeader,
    PageBatch,
    RawBatch,
    decode_batch,
    decode_header,
    decode_raw,
    encode_batch,
    encode_successor,
    lock_byte_page,
    payload_v2,
)
from bottomless.format.keys import (
    commit_key,
    commits_prefix,
    db_prefix,
    default_db_name,
    generation_of_key,
    generation_prefix,
    generation_time,
    generations_prefix,
    is_commit_key,
    is_generation_id,
    is_next_commit,
    is_part_key,
    is_snapshot_key,
    lease_key,
    new_generation_id,
    new_writer_id,
    part_key,
    part_snapshot_seq,
    parts_prefix,
    seq_from_key,
    seqs_of,
    snapshot_key,
    snapshots_prefix,
    validate_db_name,
)
from bottomless.format.lease import LeaseRecord
from bottomless.format.manifest import (
    MANIFEST_VERSION,
    Manifest,
    decode_manifest,
    encode_manifest,
)
from bottomless.format.seal import (
    DIGEST_SIZE,
    ZERO_DIGEST,
    check_trailer,
    digest,
    iso_time,
    page_digest,
    seal,
    trailer_digest,
    unseal,
)

__all__ = [
    # keys: names, ids and object keys
    "validate_db_name", "default_db_name", "new_generation_id", "is_generation_id",
    "generation_time", "new_writer_id",
    "db_prefix", "lease_key", "generations_prefix", "generation_prefix", "snapshots_prefix",
    "snapshot_key", "parts_prefix", "part_key", "commits_prefix", "commit_key",
    "generation_of_key", "is_snapshot_key", "is_part_key", "is_commit_key", "is_next_commit",
    "seqs_of", "seq_from_key", "part_snapshot_seq",
    # seal: checksums and timestamps
    "DIGEST_SIZE", "ZERO_DIGEST", "digest", "page_digest", "trailer_digest", "seal", "unseal",
    "check_trailer", "iso_time",
    # batch: page batches
    "BATCH_VERSION", "BATCH_VERSIONS", "KIND_SNAPSHOT", "KIND_COMMIT", "KIND_SUCCESSOR",
    "COMPRESSION_NONE", "COMPRESSION_ZSTD", "COMPRESSION_CODES", "HEADER_SIZE", "MAX_WINDOW",
    "PageBatch", "BatchHeader", "RawBatch", "encode_batch", "encode_successor", "decode_header",
    "decode_raw", "decode_batch", "payload_v2", "lock_byte_page",
    # lease: the single-writer lease object
    "LeaseRecord",
    # manifest: snapshot manifests
    "MANIFEST_VERSION", "Manifest", "encode_manifest", "decode_manifest",
]
