"""Rendered KQL run offline over loaded exports, through duckdb-kql.

The text is the one a person sees and Log Analytics would run. It runs with
writes refused, and with ``now()`` and ``ago()`` pinned to the run's clock so
an exercise over an old export behaves as it did on the day.

The correlation queries embed the hunt (``let hits = <the hunt>;``). Within a
batch, a query whose whole text is embedded in a later one is evaluated once:
its rows are kept in a table, and the later queries read that table where the
text repeats the query, so a month of sign-ins is scanned once per run, not
once per query. The answer is the same; only the repeated work goes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

import duckdb_kql
from duckdb import SQLExpression
from duckdb.sqltypes import TIMESTAMP_TZ

from playbooks.models import RunStatus
from playbooks.ports import QueryOutcome, RenderedQuery

logger = logging.getLogger(__name__)

ENGINE = f"duckdb-kql {version('duckdb-kql')} on DuckDB {version('duckdb')}"
_REUSED_PREFIX = "tokenward_reused_"
_numbers = itertools.count(1)


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
        kept: list[tuple[str, str]] = []
        try:
            outcomes = []
            for position, query in enumerate(queries):
                body = query.text.strip()
                embedded = any(body in later.text for later in queries[position + 1 :])
                outcome, table = self._run(query, kept, keep=embedded)
                if table is not None:
                    kept.append((body, table))
                outcomes.append(outcome)
            return outcomes
        finally:
            for _, table in kept:
                self._con.execute(f'DROP TABLE IF EXISTS "{table}"')

    def _run(
        self, query: RenderedQuery, kept: list[tuple[str, str]], *, keep: bool
    ) -> tuple[QueryOutcome, str | None]:
        started = time.perf_counter()
        text, reused = query.text, []
        for body, earlier in kept:
            if body in text:
                text = text.replace(body, earlier)
                reused.append(earlier)
        table = f"{_REUSED_PREFIX}{next(_numbers)}" if keep else None
        try:
            relation = duckdb_kql.kql(self._con, text, allow_write=False, query_now=self._now)
            if table is not None:
                # Keep the rows, in order, for the queries that embed this one.
                view = f"{table}_source"
                relation.create_view(view, replace=True)
                self._con.execute(f'CREATE OR REPLACE TABLE "{table}" AS SELECT * FROM "{view}"')
                self._con.execute(f'DROP VIEW "{view}"')
                relation = self._con.table(table)
            rows = _fetch_rows(relation)
        except Exception as error:  # the engine raises KqlError and DuckDB errors
            elapsed = _ms(started)
            logger.warning("query %s failed locally: %s", query.name, type(error).__name__)
            return (
                QueryOutcome(
                    name=query.name,
                    rows=[],
                    status=RunStatus.FAILED,
                    duration_ms=elapsed,
                    error=f"{type(error).__name__}: {str(error).splitlines()[0]}",
                ),
                None,
            )
        elapsed = _ms(started)
        logger.info("query %s returned %d rows in %d ms", query.name, len(rows), elapsed)
        details = {"reused_rows_of_earlier_query": True} if reused else {}
        return (
            QueryOutcome(
                name=query.name,
                rows=rows,
                status=RunStatus.COMPLETE,
                duration_ms=elapsed,
                details=details,
            ),
            table,
        )


def _fetch_rows(relation: Any) -> list[dict[str, Any]]:
    """The relation's rows as dicts, each ``TIMESTAMP WITH TIME ZONE`` aware in UTC.

    DuckDB converts such a value to Python through the session's time zone,
    value by value, which costs as much as the query for a few thousand rows.
    The same instants are fetched as UTC wall-clock timestamps instead (by
    position, whatever a column is called) and marked UTC here.
    """
    columns = relation.columns
    zoned = {i for i, kind in enumerate(relation.types) if kind == TIMESTAMP_TZ}
    if not zoned:
        return [dict(zip(columns, values, strict=True)) for values in relation.fetchall()]
    relation = relation.select(
        *(
            SQLExpression(f"timezone('UTC', #{i + 1})" if i in zoned else f"#{i + 1}")
            for i in range(len(columns))
        )
    )
    rows = []
    for values in relation.fetchall():
        row = dict(zip(columns, values, strict=True))
        for i in zoned:
            when = values[i]
            if when is not None:
                row[columns[i]] = when.replace(tzinfo=UTC)
        rows.append(row)
    return rows


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
