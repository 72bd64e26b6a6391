"""SQL that turns a raw export value into its Log Analytics type.

A shape hands the loader each column as *raw* SQL: text (what DuckDB's readers
give for a scalar, or the JSON text of an object) or JSON (for dynamic
columns). A :class:`Cast` turns it into the schema type in two forms:

* strict, for a normal load: a value that is not of the column's kind stops
  the load through DuckDB's ``error()``, with the column and the value in the
  message, so the loader can name the file and the line;
* lenient, for ``--skip-bad-records``: the value becomes NULL and a failure
  condition says which records to count and leave out.

The casts accept every spelling the exports use: times as ISO 8601 with ``Z``,
an offset or no zone (taken as UTC), seven-digit ticks, or the portal's
``4/28/2021, 2:08:45.221 PM``; flags as ``true``, ``"True"``, ``TRUE``, ``1``;
dynamic values nested or as JSON text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from connectors.exports.schemas import Kind

# Portal and US-locale forms. A slash date without AM/PM is refused: it could
# be day-first, and a wrong month is worse than a stopped load.
TIME_FORMATS = (
    "%m/%d/%Y, %I:%M:%S.%f %p",
    "%m/%d/%Y, %I:%M:%S %p",
    "%m/%d/%Y %I:%M:%S.%f %p",
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y, %I:%M %p",
    "%m/%d/%Y %I:%M %p",
    "%b %d, %Y %I:%M:%S.%f %p",
    "%b %d, %Y %I:%M:%S %p",
)
_FORMATS_SQL = "[" + ", ".join(f"'{form}'" for form in TIME_FORMATS) + "]"
_TRUE = "('true', 'True', 'TRUE', '1')"
_FALSE = "('false', 'False', 'FALSE', '0')"
_NO_VALUE = "('', 'null', 'NULL')"

_KIND_WORDS = {
    Kind.DATETIME: "a time",
    Kind.BOOL: "a bool",
    Kind.INT: "an integer",
    Kind.LONG: "an integer",
    Kind.REAL: "a number",
    Kind.DYNAMIC: "JSON",
    Kind.STRING: "a single value",
}


@dataclass(frozen=True)
class Raw:
    """A column's source value: SQL over the file's records, as text or JSON."""

    sql: str
    json: bool = False

    @property
    def text(self) -> str:
        """The value as text: a JSON string unquoted, any other JSON as its text."""
        return self.over(self.sql)

    def over(self, sql: str) -> str:
        """:attr:`text` of the same kind of value held by *sql*."""
        if not self.json:
            return sql
        as_text = f"CAST({sql} AS VARCHAR)"
        # A JSON string without escapes is its text between the quotes; only
        # one with escapes needs the JSON parser.
        return (
            f"(CASE WHEN {as_text} = 'null' THEN NULL "
            f"WHEN starts_with({as_text}, '\"') AND NOT contains({as_text}, '\\') "
            f"THEN substr({as_text}, 2, length({as_text}) - 2) "
            f"WHEN starts_with({as_text}, '\"') THEN ({sql} ->> '$') "
            f"ELSE {as_text} END)"
        )


def filled(own: Raw | None, fallback: Raw | None) -> Raw | None:
    """A column taken from *own*, or from *fallback* where *own* is missing or empty."""
    if own is None or fallback is None:
        return own or fallback
    return Raw(f"coalesce(nullif({own.text}, ''), {fallback.text})")


Sql = Callable[[str], str]
Check = Callable[[str, str], str]


@dataclass(frozen=True)
class Cast:
    """One column's conversion, strict and lenient.

    ``strict`` is SQL over the raw source. ``lenient`` builds the same value
    with NULL where it is bad, from SQL naming the raw source (text or JSON as
    the shape gave it); ``failure`` says, from that and the lenient value,
    which records are bad.
    """

    column: str
    kind: Kind
    strict: str
    lenient: Sql
    failure: Check | None = None

    def message(self, raw: str) -> str:
        """SQL for the reason a record is bad, as the strict error states it."""
        return _message(self.column, self.kind, raw)


def cast(
    column: str,
    kind: Kind,
    raw: Raw | None,
    *,
    required: bool = False,
) -> Cast:
    """The cast of *raw* to *kind*; a missing column is ``""`` or NULL."""
    if raw is None:
        empty = "''" if kind is Kind.STRING else f"NULL::{kind.duckdb_type}"
        if not required:
            return Cast(column, kind, empty, lambda _: empty)
        missing = f"error({_sql(f'a record has no {column}')})"
        return Cast(column, kind, missing, lambda _: empty, lambda _r, _v: "true")

    made = _CASTS[kind](column, raw)
    if not required:
        return made
    missing = _sql(f"a record has no {column}")
    strict = f"coalesce({made.strict}, error({missing}))"
    earlier = made.failure

    def failure(text: str, value: str) -> str:
        absent = f"({text}) IS NULL" if kind is Kind.STRING else f"({value}) IS NULL"
        return f"({earlier(text, value)} OR {absent})" if earlier else absent

    return Cast(column, kind, strict, made.lenient, failure)


def _string(column: str, raw: Raw) -> Cast:
    # Any JSON value has a text: a string column takes it, an object as its
    # JSON text. Refusing odd text here would let anyone who can type at a
    # sign-in page (the user name of a failed sign-in is what was typed)
    # stop a hunt; and no exporter writes an object where Kusto keeps a string.
    text = raw.text
    value = f"coalesce({text}, '')"
    return Cast(column, Kind.STRING, value, lambda r: f"coalesce({raw.over(r)}, '')")


def _parsed_time(text: str) -> str:
    return f"CAST(try_strptime(trim({text}), {_FORMATS_SQL}) AS TIMESTAMPTZ)"


def _datetime(column: str, raw: Raw) -> Cast:
    text = raw.text
    strict = (
        f"coalesce(TRY_CAST({text} AS TIMESTAMPTZ), "
        f"CASE WHEN nullif(trim({text}), '') IS NULL THEN NULL "
        f"ELSE coalesce({_parsed_time(text)}, "
        f"error({_message(column, Kind.DATETIME, text)})) END)"
    )
    return Cast(
        column,
        Kind.DATETIME,
        strict,
        lambda r: f"coalesce(TRY_CAST({raw.over(r)} AS TIMESTAMPTZ), {_parsed_time(raw.over(r))})",
        lambda r, v: f"(nullif(trim({raw.over(r)}), '') IS NOT NULL AND ({v}) IS NULL)",
    )


def _flag(text: str, otherwise: str) -> str:
    return (
        f"CASE WHEN {text} IS NULL THEN NULL "
        f"WHEN {text} IN {_TRUE} THEN true WHEN {text} IN {_FALSE} THEN false "
        f"WHEN lower(trim({text})) IN ('true', '1') THEN true "
        f"WHEN lower(trim({text})) IN ('false', '0') THEN false "
        f"WHEN trim({text}) IN {_NO_VALUE} THEN NULL "
        f"ELSE {otherwise} END"
    )


def _boolean(column: str, raw: Raw) -> Cast:
    text = raw.text
    strict = _flag(text, f"error({_message(column, Kind.BOOL, text)})")
    return Cast(
        column,
        Kind.BOOL,
        strict,
        lambda r: _flag(raw.over(r), "NULL"),
        lambda r, v: f"(({v}) IS NULL AND trim({raw.over(r)}) NOT IN {_NO_VALUE})",
    )


def _number(kind: Kind) -> Callable[[str, Raw], Cast]:
    target = kind.duckdb_type

    def make(column: str, raw: Raw) -> Cast:
        text = raw.text
        strict = (
            f"coalesce(TRY_CAST({text} AS {target}), "
            f"CASE WHEN nullif(trim({text}), '') IS NULL THEN NULL "
            f"ELSE error({_message(column, kind, text)}) END)"
        )
        return Cast(
            column,
            kind,
            strict,
            lambda r: f"TRY_CAST({raw.over(r)} AS {target})",
            lambda r, v: f"(nullif(trim({raw.over(r)}), '') IS NOT NULL AND ({v}) IS NULL)",
        )

    return make


def _json_or_text(text: str, bad: str) -> str:
    # Text that holds an object or an array becomes JSON; other text becomes a
    # JSON string. Text that starts like JSON but does not parse is a cut or
    # broken cell, and *bad* decides what happens to it.
    return (
        f"CASE WHEN nullif(trim({text}), '') IS NULL THEN NULL "
        f"WHEN left(ltrim({text}), 1) IN ('{{', '[') THEN "
        f"CASE WHEN json_valid({text}) THEN json({text}) ELSE {bad} END "
        f"ELSE to_json({text}) END"
    )


def _dynamic(column: str, raw: Raw) -> Cast:
    def build(source: Raw, bad: str) -> str:
        if not source.json:
            return _json_or_text(source.sql, bad)
        # Nested JSON stays as it is; a JSON string is treated as text.
        as_text = f"CAST({source.sql} AS VARCHAR)"
        inner = f"({source.sql} ->> '$')"
        return (
            f"CASE WHEN {as_text} = 'null' THEN NULL "
            f"WHEN starts_with({as_text}, '\"') THEN {_json_or_text(inner, bad)} "
            f"ELSE CAST({source.sql} AS JSON) END"
        )

    def broken(source: Raw) -> str:
        text = source.text
        return f"(left(ltrim({text}), 1) IN ('{{', '[') AND NOT json_valid({text}))"

    strict = build(raw, f"error({_message(column, Kind.DYNAMIC, raw.text)})")
    return Cast(
        column,
        Kind.DYNAMIC,
        strict,
        lambda r: build(Raw(r, raw.json), "NULL::JSON"),
        lambda r, _v: broken(Raw(r, raw.json)),
    )


_CASTS = {
    Kind.STRING: _string,
    Kind.DATETIME: _datetime,
    Kind.BOOL: _boolean,
    Kind.INT: _number(Kind.INT),
    Kind.LONG: _number(Kind.LONG),
    Kind.REAL: _number(Kind.REAL),
    Kind.DYNAMIC: _dynamic,
}


def _message(column: str, kind: Kind, text: str) -> str:
    # The loader finds the line by searching the file for the value, so the
    # value is quoted whole up to a length that still identifies it.
    return (
        f"{_sql(f'column {column} holds ')} || left(CAST({text} AS VARCHAR), 300) "
        f"|| {_sql(f', which is not {_KIND_WORDS[kind]}')}"
    )


def _sql(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
