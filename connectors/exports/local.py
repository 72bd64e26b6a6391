"""Rendered KQL run offline over loaded exports, through duckdb-kql.

The text is the one a person sees and Log Analytics would run. It runs with
writes refused, and with ``now()`` and ``ago()`` pinned to the run's clock so
an exercise over an old export behaves as it did on the day.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import datetime
from importlib.metadata import version
from typing import Any

import duckdb_kql

from playbooks.models import RunStatus
from playbooks.ports import QueryOutcome, RenderedQuery

logger = logging.getLogger(__name__)

ENGINE = f"duckdb-kql {version('duckdb-kql')} on DuckDB {version('duckdb')}"


class LocalKqlSource:
    """A :class:`~playbooks.ports.QuerySource` over a DuckDB connection."""

    def __init__(self, con: Any, *, now: datetime, origin: str) -> None:
        self._con = con
        self._now = now
        self._origin = origin

    @property
    def description(self) -> str:
        return (
            f"{self._origin}, evaluated offline by {ENGINE}; "
            f"clock pinned to {self._now.isoformat()}"
        )

    async def run_queries(self, queries: Sequence[RenderedQuery]) -> list[QueryOutcome]:
        # DuckDB releases the GIL while it works; a thread keeps the loop free.
        return await asyncio.to_thread(self._run_all, queries)

    def _run_all(self, queries: Sequence[RenderedQuery]) -> list[QueryOutcome]:
        return [self._run(query) for query in queries]

    def _run(self, query: RenderedQuery) -> QueryOutcome:
        started = time.perf_counter()
        try:
            relation = duckdb_kql.kql(
                self._con, query.text, allow_write=False, query_now=self._now
            )
            columns = relation.columns
            rows = [dict(zip(columns, values, strict=True)) for values in relation.fetchall()]
        except Exception as error:  # the engine raises KqlError and DuckDB errors
            elapsed = _ms(started)
            logger.warning("query %s failed locally: %s", query.name, type(error).__name__)
            return QueryOutcome(
                name=query.name,
                rows=[],
                status=RunStatus.FAILED,
                duration_ms=elapsed,
                error=f"{type(error).__name__}: {str(error).splitlines()[0]}",
            )
        elapsed = _ms(started)
        logger.info("query %s returned %d rows in %d ms", query.name, len(rows), elapsed)
        return QueryOutcome(
            name=query.name, rows=rows, status=RunStatus.COMPLETE, duration_ms=elapsed
        )


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
