"""Export shapes: how a file's records map onto tokenward's tables.

A shape looks at a file's first bytes and name and, when it recognises them,
says which tables the file holds and gives, for each, a DuckDB ``SELECT`` that
yields the table's columns from the file, still raw. The loader then casts
every column to its schema type, so every shape ends up in the same typed
tables. DuckDB reads the file itself; no record passes through Python.

Adding a shape is adding a class with ``name`` and ``reads`` to ``SHAPES``.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from connectors.exports.schemas import Kind, TableSchema, table_named
from playbooks.errors import ExportError, Location

SNIFF_BYTES = 64 * 1024
_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".log", ".txt")


@dataclass(frozen=True)
class Sniff:
    """What the loader knows about a file before choosing a shape."""

    path: Path
    head: bytes
    compressed: bool

    @property
    def stem(self) -> str:
        """The file name without compression and format suffixes."""
        name = self.path.name
        if name.lower().endswith(".gz"):
            name = name[:-3]
        for suffix in _SUFFIXES:
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return name

    @property
    def first_char(self) -> str:
        text = self.head.lstrip(b"\xef\xbb\xbf \t\r\n")
        return chr(text[0]) if text else ""


@dataclass(frozen=True)
class TableRead:
    """One table's rows in one file, as a DuckDB relation of raw columns."""

    table: TableSchema
    sql: str
    # Columns the relation yields; the loader fills the rest of the schema.
    columns: tuple[str, ...]


class Shape(Protocol):
    name: str

    def reads(self, sniff: Sniff) -> Sequence[TableRead] | None:
        """The tables this file holds in this shape, or ``None`` if it is not one."""
        ...


def sniff(path: Path) -> Sniff:
    """The first bytes of *path*, decompressed when it is gzip."""
    with path.open("rb") as raw:
        magic = raw.read(2)
    compressed = magic == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except (OSError, EOFError) as error:
        raise ExportError(
            f"cannot read the file: {error}", source=Location(file=str(path))
        ) from None
    return Sniff(path=path, head=head, compressed=compressed)


def sql_string(value: str) -> str:
    """A DuckDB string literal: file paths are the only values put in load SQL."""
    return "'" + value.replace("'", "''") + "'"


def quote_identifier(name: str) -> str:
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
        raise ValueError(f"{name!r} is not a plain column name")
    return f'"{name}"'


# The types DuckDB's JSON reader casts to while reading. Its casts fail with the
# file and line, so a wrong value is reported where it is. Booleans are read as
# text because exports spell them as true, "True", 1 or "".
_READ_TYPES = {
    Kind.DATETIME: "TIMESTAMPTZ",
    Kind.STRING: "VARCHAR",
    Kind.DYNAMIC: "JSON",
    Kind.BOOL: "VARCHAR",
    Kind.INT: "BIGINT",
    Kind.LONG: "BIGINT",
    Kind.REAL: "DOUBLE",
}


def read_json_sql(sniff: Sniff, table: TableSchema, *, records: str = "true") -> str:
    """``read_json`` over the file with the table's columns at their read types."""
    columns = ", ".join(
        f"{sql_string(name)}: {sql_string(_READ_TYPES[kind])}"
        for name, kind in table.columns.items()
    )
    json_format = "array" if sniff.first_char == "[" else "newline_delimited"
    compression = "gzip" if sniff.compressed else "none"
    return (
        f"SELECT * FROM read_json({sql_string(str(sniff.path))}, "
        f"format={sql_string(json_format)}, records={records}, "
        f"compression={sql_string(compression)}, columns={{{columns}}}, "
        "maximum_object_size=67108864)"
    )


class LogAnalyticsJson:
    """Log Analytics / Sentinel JSON: an array or JSON lines of table rows.

    The table is named by the file (``SigninLogs.json``, ``EmailEvents.jsonl``);
    dynamic columns may be nested or JSON text.
    """

    name = "log-analytics-json"

    def reads(self, sniff: Sniff) -> Sequence[TableRead] | None:
        if sniff.first_char not in ("[", "{"):
            return None
        table = table_named(sniff.stem)
        if table is None:
            return None
        return [
            TableRead(
                table=table,
                sql=read_json_sql(sniff, table),
                columns=tuple(table.columns),
            )
        ]


SHAPES: list[Shape] = [LogAnalyticsJson()]
