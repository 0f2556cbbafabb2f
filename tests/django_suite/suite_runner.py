"""A Django test runner that records every test's outcome as JSON, for comparing two runs.

``suite_settings`` makes it the ``TEST_RUNNER``; the outcomes go to the file named by
``BOTTOMLESS_DJANGO_SUITE_RESULTS`` as ``{test id: [outcome, detail]}``, where outcome is
``ok``, ``fail``, ``error``, ``skip``, ``xfail`` or ``xpass`` and detail is the skip reason or
the last line of the traceback.
"""

from __future__ import annotations

import json
import os
import unittest
from types import TracebackType
from typing import Any

from django.test.runner import DiscoverRunner

ErrorInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _last_line(err: ErrorInfo) -> str:
    kind, value, _ = err
    return f"{kind.__name__}: {value}".splitlines()[0][:300]


class RecordingResult(unittest.TextTestResult):
    """A text result that also keeps each test's outcome in :attr:`outcomes`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: dict[str, list[str]] = {}

    def _record(self, test: Any, outcome: str, detail: str = "") -> None:
        name = test.id()
        if self.outcomes.get(name, ["ok"])[0] in ("fail", "error"):
            return  # a failed subtest decides the outcome of its test
        self.outcomes[name] = [outcome, detail]

    def addSuccess(self, test: Any) -> None:  # noqa: N802 (unittest's names)
        super().addSuccess(test)
        self._record(test, "ok")

    def addError(self, test: Any, err: Any) -> None:  # noqa: N802
        super().addError(test, err)
        self._record(test, "error", _last_line(err))

    def addFailure(self, test: Any, err: Any) -> None:  # noqa: N802
        super().addFailure(test, err)
        self._record(test, "fail", _last_line(err))

    def addSkip(self, test: Any, reason: str) -> None:  # noqa: N802
        super().addSkip(test, reason)
        self._record(test, "skip", reason)

    def addExpectedFailure(self, test: Any, err: Any) -> None:  # noqa: N802
        super().addExpectedFailure(test, err)
        self._record(test, "xfail")

    def addUnexpectedSuccess(self, test: Any) -> None:  # noqa: N802
        super().addUnexpectedSuccess(test)
        self._record(test, "xpass")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:  # noqa: N802
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            detail = f"{subtest._subDescription()}: {_last_line(err)}"
            self._record(test, "fail" if failed else "error", detail)


class RecordingRunner(DiscoverRunner):
    """Django's runner, writing the outcomes to ``$BOTTOMLESS_DJANGO_SUITE_RESULTS``."""

    def get_resultclass(self) -> type[RecordingResult]:
        return RecordingResult

    def run_suite(self, suite: Any, **kwargs: Any) -> Any:
        result = super().run_suite(suite, **kwargs)
        path = os.environ.get("BOTTOMLESS_DJANGO_SUITE_RESULTS")
        if path:
            with open(path, "w") as handle:
                json.dump(result.outcomes, handle, indent=0, sort_keys=True)
        return result
