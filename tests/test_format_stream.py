"""The streaming decoder (restores write snapshot parts as they download) against the buffered
one: the same pages from every valid object, however it arrives in pieces, and a
CorruptObjectError for every object the buffered decoder rejects."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import zstandard
from helpers import restored, rows
from hypothesis import given
from hypothesis import strategies as st
from test_format import (
    BATCH_KEY,
    BATCH_SAMPLES,
    EXAMPLES,
    PGNO_SIZE,
    SAMPLES,
    batches,
    body_of,
    sample_batch,
)

import bottomless
from bottomless import CorruptObjectError
from bottomless import format as fmt
from bottomless.backends.registry import open_store
from bottomless.format.stream import OUTPUT_CHUNK, decode_stream


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def streamed(data: bytes, key: str, size: int = 1000) -> fmt.RawBatch:
    """Decode ``data`` arriving in pieces of ``size`` bytes; the pages as written, in a buffer."""
    seen: dict[str, Any] = {}
    out = bytearray()

    def begin(head: fmt.BatchHeader, numbers: list[int]) -> None:
        assert "head" not in seen, "begin called twice"
        seen["head"], seen["numbers"] = head, numbers

    def write(offset: int, chunk: memoryview) -> None:
        assert "head" in seen, "a page written before begin"
        assert offset == len(out), "pages not written back to back"
        assert len(chunk) <= OUTPUT_CHUNK
        out.extend(chunk)

    digest = decode_stream(pieces(data, size), key, begin, write)
    return fmt.RawBatch(seen["head"], seen["numbers"], bytes(out), digest)


@pytest.mark.parametrize("version", fmt.BATCH_VERSIONS)
@pytest.mark.parametrize("compression", ["zstd", "none"])
@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 30])
def test_streamed_equals_buffered(compression: str, version: int, size: int) -> None:
    data = fmt.encode_batch(sample_batch(), compression, version)
    assert streamed(data, BATCH_KEY, size) == fmt.decode_raw(data, BATCH_KEY)


@pytest.mark.parametrize("version", fmt.BATCH_VERSIONS)
@pytest.mark.parametrize("compression", ["zstd", "none"])
@EXAMPLES
@given(batch=batches(), size=st.integers(1, 70_000))
def test_any_batch_streams_as_it_decodes(
    compression: str, version: int, batch: fmt.PageBatch, size: int
) -> None:
    data = fmt.encode_batch(batch, compression, version)
    assert streamed(data, BATCH_KEY, size) == fmt.decode_raw(data, BATCH_KEY)


def test_a_big_part_arrives_in_bounded_pieces() -> None:
    pages = {n: bytes([n % 256]) * 4096 for n in range(1, 2049)}  # 8 MiB, compresses to little
    data = fmt.encode_batch(sample_batch(pages=pages, db_size=2048), "zstd")
    assert len(data) < OUTPUT_CHUNK
    raw = streamed(data, BATCH_KEY, 64 * 1024)
    assert raw.payload == b"".join(pages[n] for n in sorted(pages))


def outcome(decode: Any, data: bytes) -> bytes | None:
    """The payload, or None for CorruptObjectError (anything else fails the test)."""
    try:
        return bytes(decode(data).payload)
    except CorruptObjectError:
        return None


@EXAMPLES
@given(sample=st.sampled_from(BATCH_SAMPLES), choice=st.data(), size=st.integers(1, 5000))
def test_damaged_objects_are_rejected_alike(sample: str, choice: st.DataObject,
                                            size: int) -> None:
    """Cut, extend or overwrite a real object, re-sealed or not: both decoders agree."""
    body = bytearray(body_of(SAMPLES[sample][0]))
    for _ in range(choice.draw(st.integers(1, 4), label="edits")):
        at = choice.draw(st.integers(0, len(body)), label="at")
        cut = choice.draw(st.integers(0, 16), label="cut")
        body[at : at + cut] = choice.draw(st.binary(max_size=16), label="insert")
    sealed = fmt.seal(bytes(body))
    unsealed = choice.draw(st.booleans(), label="keep the old trailer")
    data = bytes(body) + SAMPLES[sample][0][-fmt.DIGEST_SIZE:] if unsealed else sealed
    assert outcome(lambda d: streamed(d, "fuzz/key", size), data) == outcome(
        lambda d: fmt.decode_raw(d, "fuzz/key"), data
    )


@pytest.mark.parametrize("sample", BATCH_SAMPLES)
@pytest.mark.parametrize("length", [0, 1, 31, 32, 33, fmt.HEADER_SIZE + 40, -1, -33])
def test_truncated_objects_are_rejected(sample: str, length: int) -> None:
    data = SAMPLES[sample][0]
    with pytest.raises(CorruptObjectError, match="fuzz/key"):
        streamed(data[:length], "fuzz/key", 100)


@pytest.mark.parametrize("pages", [2, 4])
def test_a_frame_declaring_another_size_is_rejected_before_a_page(pages: int) -> None:
    frame = zstandard.ZstdCompressor().compress(bytes(pages * 4096))
    body = body_of(fmt.encode_batch(sample_batch(), "zstd"))[: fmt.HEADER_SIZE + PGNO_SIZE * 3]
    written: list[int] = []
    with pytest.raises(CorruptObjectError, match="declare"):
        decode_stream([fmt.seal(body + frame)], BATCH_KEY, lambda h, n: None,
                      lambda o, d: written.append(len(d)))
    assert written == []


def test_bytes_after_the_frame_are_rejected_by_both() -> None:
    data = fmt.encode_batch(sample_batch(), "zstd")
    for extra in (b"x", bytes(300_000)):
        damaged = fmt.seal(body_of(data) + extra)
        assert outcome(lambda d: fmt.decode_raw(d, BATCH_KEY), damaged) is None
        assert outcome(lambda d: streamed(d, BATCH_KEY, 4096), damaged) is None


def test_a_frame_asking_for_a_huge_window_is_decoded_whole() -> None:
    pages = {n: bytes([n % 7]) * 4096 for n in range(1, 10_241)}  # 40 MiB of pages
    batch = sample_batch(pages=pages, db_size=10_240)
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=26)
    frame = zstandard.ZstdCompressor(compression_params=params).compress(
        b"".join(pages[n] for n in sorted(pages))
    )
    assert zstandard.get_frame_parameters(frame).window_size > fmt.MAX_WINDOW
    index = b"".join(n.to_bytes(4, "little") for n in sorted(pages))
    header = body_of(fmt.encode_batch(batch, "zstd"))[: fmt.HEADER_SIZE]
    data = fmt.seal(header + index + frame)
    held: list[bool] = []

    @contextlib.contextmanager
    def buffering() -> Iterator[None]:
        held.append(True)
        yield

    out = bytearray()
    decode_stream(pieces(data, 1 << 16), BATCH_KEY, lambda h, n: None,
                  lambda o, d: out.extend(d), buffering=buffering)
    assert bytes(out) == fmt.decode_raw(data, BATCH_KEY).payload
    assert held == [True]


def test_more_pages_than_expected_are_refused_before_the_index() -> None:
    data = fmt.encode_batch(sample_batch(), "zstd")
    begun: list[int] = []
    with pytest.raises(CorruptObjectError, match="more than the 2 expected"):
        decode_stream([data], BATCH_KEY, lambda h, n: begun.extend(n), lambda o, d: None,
                      max_pages=2)
    assert begun == []


@pytest.mark.parametrize("version", fmt.BATCH_VERSIONS)
def test_only_version_1_objects_are_buffered_whole(version: int) -> None:
    data = fmt.encode_batch(sample_batch(), "zstd", version)
    held: list[bool] = []

    @contextlib.contextmanager
    def buffering() -> Iterator[None]:
        held.append(True)
        yield

    decode_stream(pieces(data, 100), BATCH_KEY, lambda h, n: None, lambda o, d: None,
                  buffering=buffering)
    assert held == ([True] if version == 1 else [])


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_bucket_written_in_version_1_restores(
    tmp_path: Any, backend: str, make_settings: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bucket of bottomless 0.1 (version 1 snapshot parts and commits, each page compressed
    on its own) restores through the streaming restore, which decodes such parts whole."""
    current = fmt.encode_batch
    monkeypatch.setattr(fmt, "encode_batch",
                        lambda batch, compression="zstd", version=1: current(batch, compression, 1))
    settings = make_settings(backend, snapshot_part_mb=1)
    path = str(tmp_path / "old.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x INTEGER PRIMARY KEY, v BLOB)")
    with db:
        db.executemany("INSERT INTO t(v) VALUES (randomblob(3000))", [()] * 1000)  # 3 MiB
    db.close()
    db = bottomless.connect(path, settings)  # reopened: one more commit after the snapshot
    db.execute("INSERT INTO t(v) VALUES (x'00')")
    db.close()
    monkeypatch.undo()
    store = open_store(settings)
    try:
        keys = [k for k in store.list_keys("old.db/") if "/snapshots/" in k or "/commits/" in k]
        objects = [o for o in map(store.get, keys) if o.startswith(b"BTLS")]
    finally:
        store.close()
    assert objects and all(fmt.decode_header(o, "k").version == 1 for o in objects)
    copy = restored(tmp_path, settings, "old.db")
    assert rows(copy) == rows(path)
    assert len(rows(copy)) == 1001


@pytest.mark.parametrize("descriptor", [0x08, 0x10, 0x28, 0xFF])
def test_a_frame_header_with_reserved_bits_is_corrupt_not_a_zstd_error(descriptor: int) -> None:
    frame = b"\x28\xb5\x2f\xfd" + bytes([descriptor]) + bytes(40)
    body = body_of(fmt.encode_batch(sample_batch(), "zstd"))[: fmt.HEADER_SIZE + PGNO_SIZE * 3]
    data = fmt.seal(body + frame)
    assert outcome(lambda d: fmt.decode_raw(d, BATCH_KEY), data) is None
    assert outcome(lambda d: streamed(d, BATCH_KEY, 7), data) is None
