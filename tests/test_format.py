"""The storage format (``bottomless/format.py``, ``docs/format.md``): round trips and the
detection of every kind of damage. A reader must raise CorruptObjectError naming the object's key,
never apply or crash on a damaged object.
"""

from __future__ import annotations

import json
import re
import string
import struct
from collections.abc import Callable
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bottomless import ConfigError, CorruptObjectError
from bottomless import format as fmt

# The autouse _clean_env fixture (tests/conftest.py) is function-scoped; it only clears env vars,
# so running it once per test rather than once per example is harmless.
EXAMPLES = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

GENERATION = "20261125T101500123Z-1a2b3c4d"
BATCH_KEY = f"app.db/generations/{GENERATION}/commits/0000000000000007"
MANIFEST_KEY = f"app.db/generations/{GENERATION}/manifest"
INDEX_ENTRY_SIZE_V1 = 8  # version 1: page number and stored length
PGNO_SIZE = 4  # version 2: page number only

Decoder = Callable[[bytes, str], object]


def page(page_size: int, seed: int) -> bytes:
    """A page of ``page_size`` bytes, varied enough that zstd cannot shrink it to nothing."""
    return bytes((i * seed + i // 7 + seed) % 256 for i in range(page_size))


def sample_batch(**overrides: Any) -> fmt.PageBatch:
    """A commit of three pages, one of them all zeros."""
    values: dict[str, Any] = {
        "kind": fmt.KIND_COMMIT,
        "generation": GENERATION,
        "seq": 7,
        "page_size": 4096,
        "db_size": 12,
        "pages": {1: page(4096, 3), 5: bytes(4096), 12: page(4096, 11)},
        "prev": bytes(range(32)),
        "writer": bytes(range(100, 116)),
        "created_ms": 1_795_600_000_000,
    }
    values.update(overrides)
    return fmt.PageBatch(**values)


def sample_manifest(**overrides: Any) -> fmt.Manifest:
    """A manifest of a generation with two snapshot parts."""
    values: dict[str, Any] = {
        "db_name": "app.db",
        "generation": GENERATION,
        "seq": 0,
        "page_size": 4096,
        "db_size": 1200,
        "part_pages": 1024,
        "writer": "ab" * 16,
        "reason": "initial",
        "parts": [
            {"key": "app.db/p0", "first": 1, "pages": 1024, "digest": "00" * 32},
            {"key": "app.db/p1", "first": 1025, "pages": 176, "digest": "ff" * 32},
        ],
        "created_ms": 1_795_600_000_000,
    }
    values.update(overrides)
    return fmt.Manifest(**values)


#: name -> (sealed object, decoder, key): one of each kind of object
SAMPLES: dict[str, tuple[bytes, Decoder, str]] = {
    "batch-zstd": (fmt.encode_batch(sample_batch(), "zstd"), fmt.decode_batch, BATCH_KEY),
    "batch-none": (fmt.encode_batch(sample_batch(), "none"), fmt.decode_batch, BATCH_KEY),
    # objects written by bottomless 0.1 (each page compressed on its own) stay readable
    "batch-zstd-v1": (fmt.encode_batch(sample_batch(), "zstd", 1), fmt.decode_batch, BATCH_KEY),
    "batch-none-v1": (fmt.encode_batch(sample_batch(), "none", 1), fmt.decode_batch, BATCH_KEY),
    "manifest": (fmt.encode_manifest(sample_manifest()), fmt.decode_manifest, MANIFEST_KEY),
}
BATCH_SAMPLES = ["batch-zstd", "batch-none", "batch-zstd-v1", "batch-none-v1"]
V1_SAMPLES = ["batch-zstd-v1", "batch-none-v1"]


def body_of(data: bytes) -> bytes:
    """An object without its checksum trailer."""
    return data[: -fmt.DIGEST_SIZE]


def assert_corrupt(data: bytes, decode: Decoder, key: str) -> CorruptObjectError:
    """Decoding ``data`` raises CorruptObjectError that names ``key``; return the error."""
    with pytest.raises(CorruptObjectError) as raised:
        decode(data, key)
    assert key in str(raised.value)
    return raised.value


# ---------------------------------------------------------------- round trips

@st.composite
def batches(draw: st.DrawFn) -> fmt.PageBatch:
    """Any valid page batch (pages are short patterns repeated, to keep examples small)."""
    page_size = draw(st.sampled_from([512, 1024, 4096, 65536]))
    numbers = draw(st.sets(st.integers(1, 2**32 - 1), max_size=6))
    pages = {}
    for number in numbers:
        unit = draw(st.binary(min_size=1, max_size=64))
        pages[number] = (unit * (page_size // len(unit) + 1))[:page_size]
    return fmt.PageBatch(
        kind=draw(st.sampled_from([fmt.KIND_SNAPSHOT, fmt.KIND_COMMIT])),
        generation=draw(st.text(string.ascii_letters + string.digits + "-", max_size=32)),
        seq=draw(st.integers(0, 2**64 - 1)),
        page_size=page_size,
        db_size=draw(st.integers(0, 2**32 - 1)),
        pages=pages,
        prev=draw(st.binary(min_size=32, max_size=32)),
        writer=draw(st.binary(min_size=16, max_size=16)),
        created_ms=draw(st.integers(0, 2**64 - 1)),
    )


@pytest.mark.parametrize("version", fmt.BATCH_VERSIONS)
@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_batch_round_trips(compression: str, version: int) -> None:
    batch = sample_batch()
    data = fmt.encode_batch(batch, compression, version)
    assert struct.unpack_from("<H", data, 4) == (version,)
    assert batch.digest == data[-fmt.DIGEST_SIZE :] == fmt.digest(body_of(data))
    assert fmt.decode_batch(data, BATCH_KEY) == batch


@pytest.mark.parametrize("version", fmt.BATCH_VERSIONS)
@pytest.mark.parametrize("compression", ["zstd", "none"])
@EXAMPLES
@given(batch=batches())
def test_any_batch_round_trips(compression: str, version: int, batch: fmt.PageBatch) -> None:
    data = fmt.encode_batch(batch, compression, version)
    decoded = fmt.decode_batch(data, BATCH_KEY)
    assert decoded == batch
    assert decoded.digest == data[-fmt.DIGEST_SIZE :]


def test_new_batches_are_written_in_the_current_version() -> None:
    data = fmt.encode_batch(sample_batch())
    assert struct.unpack_from("<H", data, 4) == (fmt.BATCH_VERSION,) == (2,)


def test_batch_without_compression_stores_pages_verbatim() -> None:
    batch = sample_batch()
    data = fmt.encode_batch(batch, "none")
    expected = fmt.HEADER_SIZE + PGNO_SIZE * 3 + 3 * 4096 + fmt.DIGEST_SIZE
    assert len(data) == expected
    assert data[fmt.HEADER_SIZE : fmt.HEADER_SIZE + 12] == struct.pack("<3I", 1, 5, 12)
    assert data[-fmt.DIGEST_SIZE - 4096 : -fmt.DIGEST_SIZE] == batch.pages[12]
    assert len(fmt.encode_batch(batch, "zstd")) < len(data)


def test_zstd_batch_is_one_frame_of_the_pages_in_order() -> None:
    batch = sample_batch()
    data = fmt.encode_batch(batch, "zstd")
    frame = body_of(data)[fmt.HEADER_SIZE + PGNO_SIZE * 3 :]
    assert zstandard.ZstdDecompressor().decompress(frame) == b"".join(
        batch.pages[n] for n in (1, 5, 12)
    )


@pytest.mark.parametrize("sample", BATCH_SAMPLES)
def test_raw_batch_runs_cover_consecutive_pages(sample: str) -> None:
    data, _, key = SAMPLES[sample]
    raw = fmt.decode_raw(data, key)
    pages = sample_batch().pages
    runs = [(first, bytes(view)) for first, view in raw.runs()]
    assert runs == [(1, pages[1]), (5, pages[5]), (12, pages[12])]
    contiguous = sample_batch(pages={7: page(4096, 1), 8: page(4096, 2), 9: page(4096, 3)})
    raw = fmt.decode_raw(fmt.encode_batch(contiguous), key)
    [(first, view)] = raw.runs()
    assert first == 7 and bytes(view) == b"".join(contiguous.pages[n] for n in (7, 8, 9))


def test_empty_batch_round_trips() -> None:
    batch = sample_batch(pages={}, db_size=0)
    assert fmt.decode_batch(fmt.encode_batch(batch, "zstd"), BATCH_KEY) == batch


def test_manifest_round_trips() -> None:
    manifest = sample_manifest()
    data = fmt.encode_manifest(manifest)
    assert manifest.digest == data[-fmt.DIGEST_SIZE :]
    assert fmt.decode_manifest(data, MANIFEST_KEY) == manifest


@EXAMPLES
@given(
    text=st.text(max_size=40),
    numbers=st.lists(st.integers(), min_size=3, max_size=3),
    parts=st.lists(
        st.fixed_dictionaries(
            {
                "key": st.text(max_size=20),
                "first": st.integers(1, 2**32),
                "pages": st.integers(0, 2**32),
                "digest": st.binary(max_size=32).map(bytes.hex),
            }
        ),
        max_size=4,
    ),
)
def test_any_manifest_round_trips(
    text: str, numbers: list[int], parts: list[dict[str, Any]]
) -> None:
    manifest = sample_manifest(
        db_name=text, writer=text[::-1], reason=text + "!", parts=parts,
        page_size=numbers[0], db_size=numbers[1], created_ms=numbers[2],
    )
    assert fmt.decode_manifest(fmt.encode_manifest(manifest), MANIFEST_KEY) == manifest


# ---------------------------------------------------------------- damage is detected

@pytest.mark.parametrize("sample", list(SAMPLES))
@EXAMPLES
@given(choice=st.data())
def test_any_flipped_bit_is_detected(sample: str, choice: st.DataObject) -> None:
    data, decode, key = SAMPLES[sample]
    bit = choice.draw(st.integers(0, len(data) * 8 - 1), label="bit")
    damaged = bytearray(data)
    damaged[bit // 8] ^= 1 << (bit % 8)
    error = assert_corrupt(bytes(damaged), decode, key)
    assert "checksum mismatch" in str(error)
    shown = re.search(r"trailer says (\S+), content hashes to (\S+)\)", str(error))
    assert shown is not None and shown[1] != shown[2]  # even when the trailer is the damage


@pytest.mark.parametrize("sample", list(SAMPLES))
@EXAMPLES
@given(choice=st.data())
def test_truncation_at_any_length_is_detected(sample: str, choice: st.DataObject) -> None:
    data, decode, key = SAMPLES[sample]
    length = choice.draw(st.integers(0, len(data) - 1), label="length")
    assert_corrupt(data[:length], decode, key)


@pytest.mark.parametrize("sample", list(SAMPLES))
@pytest.mark.parametrize("length", [0, 1, fmt.DIGEST_SIZE, fmt.DIGEST_SIZE + 4])
def test_truncation_to_a_few_bytes_is_detected(sample: str, length: int) -> None:
    data, decode, key = SAMPLES[sample]
    assert_corrupt(data[:length], decode, key)


@pytest.mark.parametrize("sample", list(SAMPLES))
@EXAMPLES
@given(extra=st.binary(min_size=1, max_size=64))
def test_appended_bytes_are_detected(sample: str, extra: bytes) -> None:
    data, decode, key = SAMPLES[sample]
    assert_corrupt(data + extra, decode, key)


WRONG_MAGIC = [
    (sample, magic)
    for sample, (data, _, _) in SAMPLES.items()
    for magic in (b"XXXX", b"BTLS", b"BTLM", b"\0\0\0\0", b"btls")
    if magic != data[:4]  # a batch's own magic is right, and likewise a manifest's
]


@pytest.mark.parametrize(("sample", "magic"), WRONG_MAGIC)
def test_wrong_magic_is_detected(sample: str, magic: bytes) -> None:
    data, decode, key = SAMPLES[sample]
    body = body_of(data)
    error = assert_corrupt(fmt.seal(magic + body[4:]), decode, key)
    assert "not a bottomless" in str(error)


@pytest.mark.parametrize("sample", list(SAMPLES))
@pytest.mark.parametrize("version", [0, "next", 0xFFFF])
def test_unknown_format_version_is_detected(sample: str, version: int | str) -> None:
    data, decode, key = SAMPLES[sample]
    if version == "next":
        version = fmt.MANIFEST_VERSION + 1 if sample == "manifest" else fmt.BATCH_VERSION + 1
    body = bytearray(body_of(data))
    struct.pack_into("<H", body, 4, version)
    error = assert_corrupt(fmt.seal(bytes(body)), decode, key)
    assert f"version {version}" in str(error)


def with_index_entry(data: bytes, entry: int, length: int) -> bytes:
    """``data`` re-sealed with the stored length of index entry ``entry`` replaced."""
    body = bytearray(body_of(data))
    offset = fmt.HEADER_SIZE + entry * INDEX_ENTRY_SIZE_V1 + 4
    struct.pack_into("<I", body, offset, length)
    return fmt.seal(bytes(body))


@pytest.mark.parametrize("sample", V1_SAMPLES)
@pytest.mark.parametrize("entry", [0, 2])
@pytest.mark.parametrize("extra", [1, 100_000, 2**32 - 1 - 4096])
def test_index_entry_pointing_past_the_end_is_detected(
    sample: str, entry: int, extra: int
) -> None:
    data, decode, key = SAMPLES[sample]
    body = body_of(data)
    (stored,) = struct.unpack_from("<I", body, fmt.HEADER_SIZE + entry * INDEX_ENTRY_SIZE_V1 + 4)
    assert_corrupt(with_index_entry(data, entry, stored + extra), decode, key)


@pytest.mark.parametrize("sample", ["batch-zstd", "batch-none"])
@pytest.mark.parametrize("numbers", [(5, 1, 12), (1, 5, 5), (0, 5, 12)], ids=str)
def test_page_index_not_ascending_is_detected(sample: str, numbers: tuple[int, ...]) -> None:
    data, decode, key = SAMPLES[sample]
    body = bytearray(body_of(data))
    struct.pack_into("<3I", body, fmt.HEADER_SIZE, *numbers)
    error = assert_corrupt(fmt.seal(bytes(body)), decode, key)
    assert "ascending" in str(error)


@pytest.mark.parametrize("change", [-1, 1, -4096, 4096])
def test_uncompressed_pages_of_the_wrong_length_are_detected(change: int) -> None:
    data, decode, key = SAMPLES["batch-none"]
    body = body_of(data)
    body = body[:change] if change < 0 else body + bytes(change)
    error = assert_corrupt(fmt.seal(body), decode, key)
    assert "expected 3 pages of 4096 bytes" in str(error)


@pytest.mark.parametrize("pages", [2, 4])
def test_compressed_pages_of_the_wrong_size_are_detected(pages: int) -> None:
    batch = sample_batch()
    frame = zstandard.ZstdCompressor().compress(bytes(pages * 4096))
    body = body_of(fmt.encode_batch(batch, "zstd"))[: fmt.HEADER_SIZE + PGNO_SIZE * 3] + frame
    error = assert_corrupt(fmt.seal(body), fmt.decode_batch, BATCH_KEY)
    assert "declare" in str(error)


def test_compressed_pages_without_a_declared_size_are_detected() -> None:
    batch = sample_batch()
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(
        b"".join(batch.pages[n] for n in (1, 5, 12))
    )
    body = body_of(fmt.encode_batch(batch, "zstd"))[: fmt.HEADER_SIZE + PGNO_SIZE * 3] + frame
    assert_corrupt(fmt.seal(body), fmt.decode_batch, BATCH_KEY)


@pytest.mark.parametrize("sample", BATCH_SAMPLES)
@pytest.mark.parametrize("count", [4, 1000, 2**32 - 1])
def test_page_index_longer_than_the_object_is_detected(sample: str, count: int) -> None:
    data, decode, key = SAMPLES[sample]
    body = bytearray(body_of(data))
    struct.pack_into("<I", body, 16, count)
    assert_corrupt(fmt.seal(bytes(body)), decode, key)


@pytest.mark.parametrize("sample", BATCH_SAMPLES)
def test_bytes_left_over_after_the_pages_are_detected(sample: str) -> None:
    data, decode, key = SAMPLES[sample]
    body = bytearray(body_of(data))
    struct.pack_into("<I", body, 16, 2)  # the header now claims two of the three pages
    assert_corrupt(fmt.seal(bytes(body)), decode, key)


@pytest.mark.parametrize(
    ("offset", "fmt_char", "value"),
    [(6, "B", 9), (7, "B", 7), (8, "I", 1000), (8, "I", 256), (8, "I", 131072)],
    ids=["kind", "compression", "page-size-not-power-of-two", "page-size-small", "page-size-big"],
)
def test_invalid_header_fields_are_detected(offset: int, fmt_char: str, value: int) -> None:
    data, decode, key = SAMPLES["batch-none"]
    body = bytearray(body_of(data))
    struct.pack_into("<" + fmt_char, body, offset, value)
    assert_corrupt(fmt.seal(bytes(body)), decode, key)


# ---------------------------------------------------------------- fuzzing

DECODERS: dict[str, Decoder] = {"batch": fmt.decode_batch, "manifest": fmt.decode_manifest}


def decodes_or_is_corrupt(decode: Decoder, data: bytes, key: str) -> None:
    """``decode`` either succeeds or raises CorruptObjectError naming ``key``; nothing else."""
    try:
        decode(data, key)
    except CorruptObjectError as e:
        assert key in str(e)


@pytest.mark.parametrize("decoder", list(DECODERS))
@EXAMPLES
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_corrupt_object_error(decoder: str, data: bytes) -> None:
    decodes_or_is_corrupt(DECODERS[decoder], data, "fuzz/key")


@pytest.mark.parametrize("decoder", list(DECODERS))
@EXAMPLES
@given(sample=st.sampled_from(list(SAMPLES)), choice=st.data())
def test_samples_damaged_behind_a_valid_checksum_only_raise_corrupt_object_error(
    decoder: str, sample: str, choice: st.DataObject
) -> None:
    """Overwrite, cut or extend a real object, then re-seal it so that parsing is exercised."""
    body = bytearray(body_of(SAMPLES[sample][0]))
    for _ in range(choice.draw(st.integers(1, 4), label="edits")):
        at = choice.draw(st.integers(0, len(body)), label="at")
        cut = choice.draw(st.integers(0, 16), label="cut")
        insert = choice.draw(st.binary(max_size=16), label="insert")
        body[at : at + cut] = insert
    decodes_or_is_corrupt(DECODERS[decoder], fmt.seal(bytes(body)), "fuzz/key")


@EXAMPLES
@given(tail=st.binary(max_size=600))
def test_sealed_batch_bodies_only_raise_corrupt_object_error(tail: bytes) -> None:
    header = body_of(SAMPLES["batch-zstd"][0])[: fmt.HEADER_SIZE]
    header_v1 = body_of(SAMPLES["batch-zstd-v1"][0])[: fmt.HEADER_SIZE]
    for body in (tail, b"BTLS" + tail, header + tail, header_v1 + tail):
        decodes_or_is_corrupt(fmt.decode_batch, fmt.seal(body), "fuzz/key")


JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
MANIFEST_FIELDS = [
    "db_name", "generation", "created_ms", "page_size", "db_size", "writer", "reason",
]


@st.composite
def manifest_documents(draw: st.DrawFn) -> bytes:
    """JSON that looks like a manifest: every field present, any value (even NaN, Infinity)."""
    doc: dict[str, Any] = {name: draw(JSON_VALUES) for name in MANIFEST_FIELDS}
    doc["parts"] = draw(
        st.lists(st.dictionaries(st.sampled_from(["pages", "digest"]), JSON_VALUES), max_size=3)
        | JSON_VALUES
    )
    return json.dumps(doc).encode()


@settings(EXAMPLES, derandomize=True, database=None, report_multiple_bugs=False)
@given(
    body=st.one_of(
        st.binary(max_size=8).map(lambda b: b"BTLM" + b),
        manifest_documents().map(lambda doc: b"BTLM\x01\x00" + doc),
    )
)
def test_sealed_manifest_bodies_only_raise_corrupt_object_error(body: bytes) -> None:
    decodes_or_is_corrupt(fmt.decode_manifest, fmt.seal(body), "fuzz/key")


@pytest.mark.parametrize("body", [b"BTLM", b"BTLM\x01"], ids=["4-bytes", "5-bytes"])
def test_manifest_shorter_than_its_header_is_corrupt(body: bytes) -> None:
    assert_corrupt(fmt.seal(body), fmt.decode_manifest, MANIFEST_KEY)


@pytest.mark.parametrize("field", ["page_size", "db_size", "created_ms", "parts.pages"])
def test_manifest_with_infinite_number_is_corrupt(field: str) -> None:
    doc = sample_manifest().to_json()
    if field == "parts.pages":
        doc["parts"][0]["pages"] = float("inf")
    else:
        doc[field] = float("inf")
    body = b"BTLM" + struct.pack("<H", fmt.MANIFEST_VERSION) + json.dumps(doc).encode()
    assert_corrupt(fmt.seal(body), fmt.decode_manifest, MANIFEST_KEY)


def test_manifest_nested_too_deeply_is_corrupt() -> None:
    body = b"BTLM" + struct.pack("<H", fmt.MANIFEST_VERSION) + b"[" * 100_000
    assert_corrupt(fmt.seal(body), fmt.decode_manifest, MANIFEST_KEY)


# ---------------------------------------------------------------- database names

@pytest.mark.parametrize("name", ["app.db", "a-b_c.1", "A", "9", "a" * 200, "x.y.z"])
def test_validate_db_name_accepts(name: str) -> None:
    assert fmt.validate_db_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "../x", "/abs", "a/b", "..", ".hidden", "a..b", "a\\b", "a b", "app.db\n", "é",
     "a" * 201, "-lead", "_lead"],
)
def test_validate_db_name_rejects(name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        fmt.validate_db_name(name)
    assert isinstance(raised.value, ValueError)
    assert repr(name) in str(raised.value)
