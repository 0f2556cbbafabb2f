"""The intent file beside an async spool, ``<db>-bottomless-queue.intent``.

Before the uploader PUTs a commit object it writes the exact object here, with its key and the
spool entries it covers, so that an upload interrupted by a crash is finished, byte for byte,
by whoever opens the database next. Only the holder of the spool's upload lock writes it.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import struct
import zlib
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# magic, entries covered ("through"), key length; then the key, the object, a CRC-32 of all
_INTENT = struct.Struct("<4sQI")
_INTENT_MAGIC = b"BTLI"


@dataclass
class Intent:
    """An upload that was about to happen: the object, its key, the spool entries it covers."""

    key: str
    data: bytes
    through: int


class IntentFile:
    """The intent file at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, intent: Intent) -> None:
        """Record the object about to be uploaded (atomically: a new file renamed into place)."""
        key = intent.key.encode()
        raw = _INTENT.pack(_INTENT_MAGIC, intent.through, len(key)) + key + intent.data
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as out:
            out.write(raw + struct.pack("<I", zlib.crc32(raw)))
        os.replace(tmp, self.path)

    def remove_torn(self) -> None:
        """Delete what processes killed while writing an intent left (call with the upload
        lock held: only its holder writes one, so any such file is abandoned)."""
        for torn in glob.glob(glob.escape(self.path) + ".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(torn)

    def read(self) -> Intent | None:
        """The interrupted upload, if any."""
        try:
            with open(self.path, "rb") as stream:
                raw = stream.read()
        except FileNotFoundError:
            return None
        if len(raw) >= _INTENT.size + 4 and zlib.crc32(raw[:-4]) == struct.unpack(
            "<I", raw[-4:]
        )[0]:
            magic, through, size = _INTENT.unpack_from(raw)
            if magic == _INTENT_MAGIC and _INTENT.size + size <= len(raw) - 4:
                key = raw[_INTENT.size : _INTENT.size + size].decode("utf-8", "replace")
                return Intent(key, raw[_INTENT.size + size : -4], through)
        # the entries are still spooled: rebuilding the object from them is safe (a different
        # object already in the bucket would be reported as a conflict, never overwritten)
        logger.warning("%s is damaged; rebuilding the upload from the spooled entries",
                       self.path)
        self.clear()
        return None

    def clear(self) -> None:
        """The upload is recorded; forget it."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
