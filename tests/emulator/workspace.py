"""The emulated workspace's data: tables loaded from rows, queried with real KQL.

Queries run through duckdb-kql over tables loaded by tokenward's own export
loader, so the emulator answers the rendered templates with real results, not
canned ones. The service-side ``timespan`` is honoured the way Log Analytics
does it: every table is cut to rows whose ``TimeGenerated`` falls inside it.

Ingestion delay: :meth:`Workspace.add_later` adds rows that no query sees
until some seconds have passed, as sign-in logs reach a real workspace
minutes after the sign-in their ``TimeGenerated`` records.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb_kql

from connectors.exports.loader import ExportLoader, create_tables
from connectors.exports.schemas import TABLES

_DURATION = re.compile(
    r"^P(?:(?P<days>\d+(?:\.\d+)?)D)?(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?"
    r"(?:(?P<minutes>\d+(?:\.\d+)?)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


class QueryFailed(Exception):
    """The engine refused the query (a semantic or syntax error)."""


@dataclass(frozen=True)
class Column:
    name: str
    # Log Analytics type names: string, datetime, dynamic, bool, int, long, real.
    type: str


@dataclass(frozen=True)
class Result:
    columns: list[Column]
    rows: list[list[Any]]


@dataclass
class Workspace:
    """Tables by name, and the clock ``now()`` reads in queries."""

    now: datetime | None = None
    _con: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)
    # (monotonic time it becomes visible, table, row), not yet visible.
    _pending: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list, repr=False)

    def reset(self) -> None:
        self.now = None
        with self._lock:
            self._pending = []
        self.load({})

    def add_later(self, tables: dict[str, list[dict[str, Any]]], *, after_seconds: float) -> float:
        """Add *tables*' rows, visible to queries only *after_seconds* from now
        (an ingestion delay); the monotonic time they become visible."""
        visible = time.monotonic() + after_seconds
        with self._lock:
            self._pending.extend(
                (visible, name, row) for name, rows in tables.items() for row in rows
            )
        return visible

    @property
    def pending(self) -> int:
        """Rows added with a delay that no query sees yet."""
        with self._lock:
            return len(self._pending)

    def _release_due(self) -> None:
        with self._lock:
            due = [item for item in self._pending if item[0] <= time.monotonic()]
            if not due:
                return
            self._pending = [item for item in self._pending if item not in due]
            tables = {name: list(rows) for name, rows in self._tables.items()}
        for _, name, row in due:
            tables.setdefault(name, []).append(row)
        self.load(tables)

    def load(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        """Replace the data with *tables* (rows as a Sentinel export has them)."""
        folder = Path(tempfile.mkdtemp(prefix="emulator-tables-"))
        tables = {name: rows for name, rows in tables.items() if rows}
        for name, rows in tables.items():
            (folder / f"{name}.jsonl").write_text(
                "".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8"
            )
        con = duckdb_kql.connect()
        create_tables(con)
        if tables:
            ExportLoader(con).load_directory(folder)
        # Queries see views over these, cut to the request's timespan.
        for name in TABLES:
            con.execute(f'ALTER TABLE "{name}" RENAME TO "data_{name}"')
        with self._lock:
            if self._con is not None:
                self._con.close()
            self._con = con
            self._tables = {name: list(rows) for name, rows in tables.items()}

    def run(self, query: str, *, start: datetime | None, end: datetime | None) -> Result:
        """Run *query* over the rows inside [start, end] (either may be open)."""
        self._release_due()
        with self._lock:
            con = self._con
            self._limit_tables(con, start, end)
            try:
                relation = duckdb_kql.kql(
                    con, query, allow_write=False, query_now=self.now or datetime.now(UTC)
                )
                names = list(relation.columns)
                types = [_kind(str(kind)) for kind in relation.types]
                rows = [list(values) for values in relation.fetchall()]
            except Exception as failure:  # the engine's KqlError and DuckDB errors
                raise QueryFailed(str(failure).strip().splitlines()[0]) from None
        columns = [Column(name, kind) for name, kind in zip(names, types, strict=True)]
        return Result(columns=columns, rows=rows)

    def _limit_tables(self, con: Any, start: datetime | None, end: datetime | None) -> None:
        for name, schema in TABLES.items():
            column = "TimeGenerated" if "TimeGenerated" in schema.columns else schema.time_column
            where = []
            if start is not None:
                where.append(f"\"{column}\" >= TIMESTAMPTZ '{start.isoformat()}'")
            if end is not None:
                where.append(f"\"{column}\" <= TIMESTAMPTZ '{end.isoformat()}'")
            clause = f" WHERE {' AND '.join(where)}" if where else ""
            con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM "data_{name}"{clause}')


def _kind(duckdb_type: str) -> str:
    upper = duckdb_type.upper()
    if upper.startswith("TIMESTAMP") or upper == "DATE":
        return "datetime"
    if upper == "JSON" or upper.endswith("[]") or upper.startswith(("STRUCT", "MAP", "LIST")):
        return "dynamic"
    if upper == "BOOLEAN":
        return "bool"
    if upper in ("INTEGER", "SMALLINT", "TINYINT"):
        return "int"
    if upper in ("BIGINT", "HUGEINT", "UBIGINT"):
        return "long"
    if upper in ("DOUBLE", "FLOAT", "REAL") or upper.startswith("DECIMAL"):
        return "real"
    return "string"


def wire_value(kind: str, value: Any, *, dynamic_as_text: bool) -> Any:
    """A cell as the service writes it: ISO datetimes with ticks, dynamic as JSON."""
    if value is None:
        return None
    if kind == "datetime" and isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        moment = moment.astimezone(UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"
    if kind == "dynamic":
        parsed = json.loads(value) if isinstance(value, str) else value
        return json.dumps(parsed, separators=(",", ":")) if dynamic_as_text else parsed
    return value


def parse_timespan(text: str | None, *, now: datetime) -> tuple[datetime | None, datetime | None]:
    """An ISO 8601 interval or duration as the API reads it; durations end now."""
    if not text:
        return None, None
    if "/" in text:
        first, second = text.split("/", 1)
        start = _instant(first)
        end = start + _duration(second) if second.startswith("P") else _instant(second)
        return start, end
    return now - _duration(text), now


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not an ISO 8601 duration: {text!r}")
    parts = {key: float(value) for key, value in match.groupdict().items() if value}
    return timedelta(**parts)
