"""Specification: running a coroutine from the command line hands back its
result as it is, without formatting it (python/cpython#112559)."""

from __future__ import annotations

import pytest

from playbooks import aio


class Report:
    """A result whose repr is costly: the test records every call."""

    def __init__(self) -> None:
        self.formatted = 0

    def __repr__(self) -> str:
        self.formatted += 1
        return "<Report>"


def test_the_result_is_returned_and_never_formatted() -> None:
    report = Report()

    async def hunt() -> Report:
        return report

    assert aio.run(hunt()) is report
    assert report.formatted == 0


def test_an_error_of_the_coroutine_reaches_the_caller() -> None:
    async def hunt() -> None:
        raise LookupError("no such incident")

    with pytest.raises(LookupError, match="no such incident"):
        aio.run(hunt())
