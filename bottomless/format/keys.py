"""Names in the store: database names, generation and writer ids, and every object key.

Every key of a database lives under its ``db_name``::

    <db_name>/lease                                                 the writer's lease
    <db_name>/generations/<generation>/snapshots/<seq:016d>         snapshot manifest
    <db_name>/generations/<generation>/parts/<seq:016d>-<part:06d>  snapshot part
    <db_name>/generations/<generation>/commits/<seq:016d>           commit

Only this module builds or takes apart such a key.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import secrets
import time

from bottomless.errors import ConfigError

_DB_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_GENERATION_RE = re.compile(r"\d{8}T\d{9}Z-[0-9a-f]{8}")


def validate_db_name(name: str) -> str:
    """Return ``name`` if it is a valid database name, else raise :class:`ConfigError`."""
    if not isinstance(name, str) or not _DB_NAME_RE.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"invalid db_name {name!r}: use 1-200 characters from [A-Za-z0-9._-], starting with a"
            " letter or digit, without '/' or '..'"
        )
    return name


def default_db_name(path: str) -> str:
    """The db_name a database file gets when none is configured: its base name if that is a
    valid db_name, else one derived from it that always comes out the same.

    A base name with other characters (``données.db``, ``my app.db``) keeps its valid ones,
    with ``_`` for the rest, and gains 8 hex digits of its SHA-256, so two names that clean up
    alike stay apart: ``donn_es.db-6b1f0c2e``.
    """
    base = os.path.basename(path)
    if _DB_NAME_RE.fullmatch(base) and ".." not in base:
        return base
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base).replace("..", "__").lstrip("._-")
    digest = hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{cleaned[:180] or 'db'}-{digest}"


def new_generation_id(now: float | None = None) -> str:
    """Return a new generation id that sorts after every id created earlier on this clock."""
    moment = _dt.datetime.fromtimestamp(time.time() if now is None else now, tz=_dt.UTC)
    stamp = moment.strftime("%Y%m%dT%H%M%S") + f"{moment.microsecond // 1000:03d}Z"
    return f"{stamp}-{secrets.token_hex(4)}"


def is_generation_id(text: str) -> bool:
    """Tell whether ``text`` has the shape of a generation id."""
    return bool(_GENERATION_RE.fullmatch(text))


def generation_time(generation: str) -> float:
    """When a generation was started (seconds since the epoch), as its id records it.

    Raises ValueError if ``generation`` does not start with a generation id's timestamp.
    """
    stamp = _dt.datetime.strptime(generation[:18], "%Y%m%dT%H%M%S%f").replace(tzinfo=_dt.UTC)
    return stamp.timestamp()


def new_writer_id() -> bytes:
    """Return a fresh random writer id."""
    return secrets.token_bytes(16)


# ---------------------------------------------------------------- building keys


def db_prefix(db_name: str) -> str:
    """Prefix under which every object of ``db_name`` lives."""
    return f"{db_name}/"


def lease_key(db_name: str) -> str:
    """Key of a database's writer lease."""
    return f"{db_name}/lease"


def generations_prefix(db_name: str) -> str:
    """Prefix whose children are the generation ids of ``db_name``."""
    return f"{db_name}/generations/"


def generation_prefix(db_name: str, generation: str) -> str:
    """Prefix under which every object of one generation lives."""
    return f"{db_name}/generations/{generation}/"


def snapshots_prefix(db_name: str, generation: str) -> str:
    """Prefix under which a generation's snapshot manifests live."""
    return f"{db_name}/generations/{generation}/snapshots/"


def snapshot_key(db_name: str, generation: str, seq: int) -> str:
    """Key of the manifest of the snapshot taken at commit ``seq`` (0: the generation's base)."""
    return f"{snapshots_prefix(db_name, generation)}{seq:016d}"


def parts_prefix(db_name: str, generation: str) -> str:
    """Prefix under which the parts written for a generation's snapshots live."""
    return f"{db_name}/generations/{generation}/parts/"


def part_key(db_name: str, generation: str, seq: int, part: int) -> str:
    """Key of part ``part`` written for the snapshot at commit ``seq``."""
    return f"{parts_prefix(db_name, generation)}{seq:016d}-{part:06d}"


def commits_prefix(db_name: str, generation: str) -> str:
    """Prefix under which a generation's commits live."""
    return f"{db_name}/generations/{generation}/commits/"


def commit_key(db_name: str, generation: str, seq: int) -> str:
    """Key of commit ``seq`` of a generation."""
    return f"{commits_prefix(db_name, generation)}{seq:016d}"


# ---------------------------------------------------------------- reading keys


def generation_of_key(key: str) -> str:
    """The generation id inside a key under ``<db>/generations/<id>/``."""
    pieces = key.split("/")
    return pieces[2] if len(pieces) > 3 and pieces[1] == "generations" else ""


def is_snapshot_key(key: str) -> bool:
    """Whether ``key`` is a snapshot manifest's."""
    return "/snapshots/" in key


def is_part_key(key: str) -> bool:
    """Whether ``key`` is a snapshot part's."""
    return "/parts/" in key


def is_commit_key(key: str) -> bool:
    """Whether ``key`` is a commit's."""
    return "/commits/" in key


def is_next_commit(key: str, db_name: str, generation: str, seq: int) -> bool:
    """Whether ``key`` is the commit that follows commit ``seq`` of ``generation``."""
    return key == commit_key(db_name, generation, seq + 1)


def seqs_of(keys: list[str]) -> list[int]:
    """The sequence numbers that ``keys`` (commit or snapshot keys) end with, ascending."""
    return sorted(n for n in (seq_from_key(k) for k in keys) if n is not None)


def seq_from_key(key: str) -> int | None:
    """Return the sequence number a commit or snapshot key ends with, or ``None``."""
    tail = key.rsplit("/", 1)[-1]
    return int(tail) if len(tail) == 16 and tail.isdigit() else None


def part_snapshot_seq(key: str) -> int:
    """The commit number of the snapshot a part's key says it was written for.

    Raises ValueError if ``key`` is not a part key.
    """
    return int(key.rsplit("/", 1)[-1].split("-")[0])
