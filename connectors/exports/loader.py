"""Load a directory of exported logs into typed DuckDB tables.

Each file's shape is detected (:mod:`connectors.exports.shapes`), its records
are read by DuckDB and cast to the table's schema: datetimes to UTC, dynamic
columns to JSON whether they arrived nested or as JSON text, flags to booleans
and missing strings to ``""`` (Kusto strings are never null). A file that
cannot be read stops the whole load and nothing of it is kept: a hunt never
runs over half an export.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.exports.schemas import TABLES, Kind, TableSchema
from connectors.exports.shapes import SHAPES, TableRead, quote_identifier, sniff
from playbooks.errors import ExportError, Location

logger = logging.getLogger(__name__)

_LINE = re.compile(r"\bline (\d+)\b")


@dataclass(frozen=True)
class FileLoad:
    """What one file held."""

    path: str
    shape: str
    tables: dict[str, int]


@dataclass
class LoadSummary:
    """What a load read, table by table, and what a hunt over it cannot see."""

    files: list[FileLoad] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    # Columns of a loaded table that no record carried.
    empty_columns: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


Progress = Callable[[str, int], None]


def create_tables(con: Any, tables: Iterable[TableSchema] = TABLES.values()) -> None:
    """Create every table tokenward reads, empty, with its schema types."""
    for table in tables:
        columns = ", ".join(
            f"{quote_identifier(name)} {kind.duckdb_type}"
            for name, kind in table.columns.items()
        )
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {quote_identifier(table.name)} ({columns})"
        )


class ExportLoader:
    """Loads export files into a DuckDB connection, one transaction for all."""

    def __init__(self, con: Any, *, on_progress: Progress | None = None) -> None:
        self._con = con
        self._on_progress = on_progress

    def load_directory(self, directory: Path) -> LoadSummary:
        if not directory.is_dir():
            raise ExportError(
                "not a directory of exports", source=Location(file=str(directory))
            )
        files = sorted(
            path
            for path in directory.iterdir()
            if path.is_file() and not path.name.startswith(".")
        )
        if not files:
            raise ExportError(
                "the directory holds no export files",
                source=Location(file=str(directory)),
            )
        return self.load_files(files)

    def load_files(self, paths: Iterable[Path]) -> LoadSummary:
        summary = LoadSummary()
        create_tables(self._con)
        self._con.execute("BEGIN TRANSACTION")
        try:
            for path in paths:
                loaded = self._load_file(path)
                summary.files.append(loaded)
                for table, count in loaded.tables.items():
                    summary.rows[table] = summary.rows.get(table, 0) + count
            self._describe(summary)
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")
        return summary

    def _load_file(self, path: Path) -> FileLoad:
        sniffed = sniff(path)
        for shape in SHAPES:
            reads = shape.reads(sniffed)
            if reads is not None:
                break
        else:
            raise ExportError(
                "not an export tokenward can read: name the file after its table "
                f"({', '.join(sorted(TABLES))}) with .json or .jsonl",
                source=Location(file=str(path)),
            )

        counts: dict[str, int] = {}
        for read in reads:
            counts[read.table.name] = counts.get(read.table.name, 0) + self._insert(
                path, read
            )
        logger.info("loaded %s as %s: %s", path.name, shape.name, counts)
        if self._on_progress is not None:
            self._on_progress(path.name, sum(counts.values()))
        return FileLoad(path=str(path), shape=shape.name, tables=counts)

    def _insert(self, path: Path, read: TableRead) -> int:
        table = read.table
        present = set(read.columns)
        targets = ", ".join(quote_identifier(name) for name in table.columns)
        values = ", ".join(
            cast_expression(name, kind, table, present)
            for name, kind in table.columns.items()
        )
        sql = (
            f"INSERT INTO {quote_identifier(table.name)} ({targets}) "
            f"SELECT {values} FROM ({read.sql}) AS src"
        )
        try:
            result = self._con.execute(sql).fetchone()
        except Exception as error:
            raise _export_error(path, table, error) from None
        return int(result[0]) if result else 0

    def _describe(self, summary: LoadSummary) -> None:
        """Note the columns no record carried, and warn when the hunt is blind."""
        for name, rows in summary.rows.items():
            if not rows:
                continue
            table = TABLES[name]
            empty = _empty_columns(self._con, table)
            summary.empty_columns[name] = empty
            if table.signals and all(column in empty for column in table.signals):
                summary.warnings.append(
                    f"no {name} record carries "
                    f"{' or '.join(table.signals)}: a hunt over this export "
                    "cannot find device code sign-ins"
                )


def cast_expression(
    name: str, kind: Kind, table: TableSchema, present: set[str]
) -> str:
    """The SQL that turns a raw source column into its schema type."""
    source = _source_column(name, table, present)
    if source is None:
        return "''" if kind is Kind.STRING else f"NULL::{kind.duckdb_type}"
    if kind is Kind.STRING:
        return f"coalesce(CAST({source} AS VARCHAR), '')"
    if kind is Kind.DYNAMIC:
        return _dynamic(source)
    if kind is Kind.BOOL:
        return _boolean(source, name)
    return f"CAST({source} AS {kind.duckdb_type})"


def _source_column(name: str, table: TableSchema, present: set[str]) -> str | None:
    own = f"src.{quote_identifier(name)}" if name in present else None
    fallback = table.fill_from.get(name)
    other = f"src.{quote_identifier(fallback)}" if fallback in present else None
    if own and other:
        return f"coalesce({own}, {other})"
    return own or other


def _dynamic(source: str) -> str:
    # A dynamic value may arrive nested, or as JSON text inside a JSON string.
    value = f"CAST({source} AS JSON)"
    text = f"({value} ->> '$')"
    return (
        f"CASE WHEN json_type({value}) = 'VARCHAR' AND json_valid({text}) "
        f"AND (starts_with(ltrim({text}), '{{') OR starts_with(ltrim({text}), '[')) "
        f"THEN json({text}) ELSE {value} END"
    )


def _boolean(source: str, name: str) -> str:
    text = f"lower(trim(CAST({source} AS VARCHAR)))"
    return (
        f"CASE WHEN {source} IS NULL THEN NULL "
        f"WHEN {text} IN ('true', '1') THEN true "
        f"WHEN {text} IN ('false', '0') THEN false "
        f"WHEN {text} IN ('', 'null') THEN NULL "
        f"ELSE error('column {name} holds ' || {text} || ', which is not a bool') END"
    )


def _empty_columns(con: Any, table: TableSchema) -> list[str]:
    checks = ", ".join(
        (
            f"count(*) FILTER (WHERE {quote_identifier(name)} <> '')"
            if kind is Kind.STRING
            else f"count({quote_identifier(name)})"
        )
        for name, kind in table.columns.items()
    )
    row = con.execute(f"SELECT {checks} FROM {quote_identifier(table.name)}").fetchone()
    return [name for name, count in zip(table.columns, row or (), strict=False) if not count]


def _export_error(path: Path, table: TableSchema, error: Exception) -> ExportError:
    """A DuckDB read or cast failure, as the file, line and what was wrong.

    DuckDB's line numbers are approximate, so on this (rare) path the file is
    read again to find the exact line: the first that is not JSON, or the
    first that holds the value DuckDB could not cast.
    """
    message = str(error).split("\n")[0]
    message = re.sub(r"^[A-Za-z ]+Error: ", "", message)
    message = re.sub(r'in file "[^"]*", ', "", message)
    message = re.sub(r"^JSON transform error in line \d+: ", "", message)
    if "Malformed JSON" in message:
        line = _first_malformed_line(path)
        message = re.sub(r" at byte \d+ in line \d+", "", message)
    else:
        value = _offending_value(message)
        line = _first_line_holding(path, value) if value else None
    if line is None:
        approximate = _LINE.search(message)
        line = int(approximate.group(1)) if approximate else None
    location = Location(file=str(path), line=line)
    return ExportError(f"cannot load it as {table.name}: {message.strip()}", source=location)


def _offending_value(message: str) -> str | None:
    ours = re.search(r"holds (.*), which is not", message)
    if ours:
        return ours.group(1)
    quoted = re.search(r'"([^"]+)"', message)
    return quoted.group(1) if quoted else None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        yield from enumerate(handle, start=1)


def _first_malformed_line(path: Path) -> int | None:
    first = ""
    for _, text in _lines(path):
        first = text.lstrip("\ufeff \t")
        if first.strip():
            break
    if first.startswith("["):
        with contextlib.suppress(OSError):
            try:
                json.loads("".join(text for _, text in _lines(path)))
            except ValueError as failure:
                return getattr(failure, "lineno", None)
        return None
    for number, text in _lines(path):
        if not text.strip():
            continue
        try:
            json.loads(text)
        except ValueError:
            return number
    return None


def _first_line_holding(path: Path, value: str) -> int | None:
    needle = value.lower()
    for number, text in _lines(path):
        if needle in text.lower():
            return number
    return None
