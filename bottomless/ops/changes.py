"""The pages a run of commits changed, the newest copy of each, kept in a temporary file.

Compaction needs every page changed since the previous snapshot, but only one part's worth at
a time. Holding them all in memory would make its memory grow with the log since the snapshot;
here memory holds only an index (page number -> offset in the file), and a part finds its
pages by bisecting the sorted page numbers rather than by looking at every changed page.
"""

from __future__ import annotations

import tempfile
from bisect import bisect_left, bisect_right

from bottomless import format as fmt


class ChangedPages:
    """The newest content of each page a run of commits wrote, spilled to a temporary file.

    Fill it with :meth:`add`, commit after commit, then read it part by part with
    :meth:`pages`. Not thread-safe: one thread fills and reads it. Use it as a context manager:
    the file (removed from the directory at once) goes away on :meth:`close`.
    """

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        # closed by close(), this object being the context manager
        self._file = tempfile.TemporaryFile(prefix="bottomless-compact-")  # noqa: SIM115
        self._offsets: dict[int, int] = {}
        self._end = 0
        self._sorted: list[int] | None = []

    def __enter__(self) -> ChangedPages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the file."""
        self._file.close()

    def __len__(self) -> int:
        return len(self._offsets)

    def clear(self, page_size: int) -> None:
        """Forget every page and switch to ``page_size`` (a commit that changes the page size
        holds every page of the database)."""
        self.page_size = page_size
        self._offsets.clear()
        self._file.truncate(0)
        self._end = 0
        self._sorted = []

    def add(self, raw: fmt.RawBatch) -> None:
        """Record the pages of a commit (of :attr:`page_size`), replacing older copies."""
        size, offsets = self.page_size, self._offsets
        for first, run in raw.runs():
            count = len(run) // size
            if all(first + i not in offsets for i in range(count)):  # new pages: one write
                self._write(run, self._end)
                offsets.update((first + i, self._end + i * size) for i in range(count))
                self._end += len(run)
                continue
            for i in range(count):
                offset = offsets.get(first + i)
                if offset is None:
                    offset = offsets[first + i] = self._end
                    self._end += size
                self._write(run[i * size : (i + 1) * size], offset)
        self._sorted = None

    def numbers(self, first: int, last: int) -> list[int]:
        """The changed page numbers from ``first`` to ``last``, ascending."""
        if self._sorted is None:
            self._sorted = sorted(self._offsets)
        found = self._sorted
        return found[bisect_left(found, first) : bisect_right(found, last)]

    def pages(self, first: int, last: int) -> dict[int, bytes]:
        """The changed pages from ``first`` to ``last``, by page number."""
        found = {}
        for pgno in self.numbers(first, last):
            self._file.seek(self._offsets[pgno])
            found[pgno] = self._file.read(self.page_size)
        return found

    def _write(self, data: memoryview, offset: int) -> None:
        self._file.seek(offset)
        self._file.write(data)  # a buffered file writes all of it
