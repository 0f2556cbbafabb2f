"""The lease object, ``<db_name>/lease``: which writer holds a database, and until when.

:mod:`bottomless.engine.lease` takes and renews it; gc reads it to tell whether a writer may
be building a snapshot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass
class LeaseRecord:
    """The content of the lease object."""

    writer: str
    holder: str
    epoch: int
    expires_ms: int

    def encode(self) -> bytes:
        """JSON bytes."""
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> LeaseRecord:
        """Parse; an unreadable lease counts as expired."""
        try:
            doc = json.loads(data)
            return cls(str(doc["writer"]), str(doc["holder"]), int(doc["epoch"]),
                       int(doc["expires_ms"]))
        except (ValueError, KeyError, TypeError):
            return cls("", "unreadable lease", 0, 0)
