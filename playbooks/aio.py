"""Running a coroutine to completion from synchronous code.

:func:`asyncio.run` on Python 3.11 formats the main task's repr, result
included, when it restores the SIGINT handler (python/cpython#112559). For a
run whose result is a report of thousands of findings or a list of query
outcomes, that repr is computed for nothing and costs more than some of the
queries. :func:`run` hands the result back outside the task, so the task's
result is ``None`` and its repr is cheap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coroutine)``, without formatting its result."""
    results: list[T] = []

    async def main() -> None:
        results.append(await coroutine)

    asyncio.run(main())
    return results[0]
