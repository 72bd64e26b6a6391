"""Load a directory of exported logs into typed DuckDB tables.

Each file's shape is detected from its content (:mod:`connectors.exports.shapes`),
its records are read by DuckDB and cast to the table's schema: datetimes to
UTC, dynamic columns to JSON whether they arrived nested or as JSON text, flags
to booleans and missing strings to ``""`` (Kusto strings are never null).

A file whose records carry their table (``category``, ``Type``) is first
counted by table; records of tables tokenward reads are loaded, the others are
reported as skipped. A record that cannot be read stops the whole load and
nothing of it is kept, so a hunt never runs over half an export; with
``skip_bad_records`` such records are left out and counted instead.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import logging
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from connectors.exports.casts import Cast, Raw, cast, filled
from connectors.exports.schemas import TABLES, Kind, TableSchema
from connectors.exports.shapes import (
    FileRead,
    ReadOptions,
    UnreadableExport,
    detect,
    quote_identifier,
    sniff,
    sql_string,
)
from playbooks.errors import ExportError, Location

logger = logging.getLogger(__name__)

_LINE = re.compile(r"\bline:? (\d+)\b", re.IGNORECASE)
_CSV_LINE = re.compile(r"CSV Error on Line: (\d+)")
# Files this large are not parsed in Python to find where their JSON breaks.
_LOCATE_LIMIT = 64 * 1024 * 1024
_tags = itertools.count(1)


SIGN_IN_TABLES = ("SigninLogs", "AADNonInteractiveUserSignInLogs")
#: The evidence tables whose absence the findings cannot show by themselves.
EVIDENCE_TABLES = {
    "EmailEvents": "no sign-in can be linked to the mail that came before it",
    "UrlClickEvents": "no sign-in can be linked to a click on the lure",
}


@dataclass(frozen=True)
class FileLoad:
    """What one file held, and what of it was loaded."""

    path: str
    shape: str
    framing: str
    tables: dict[str, int]
    # Records of tables tokenward does not read, by the name the file gives them.
    skipped: dict[str, int] = field(default_factory=dict)
    # Records left out because they could not be read (skip_bad_records only).
    bad_records: int = 0
    problem: str | None = None
    # What a person should know about how the file was read.
    notes: tuple[str, ...] = ()


@dataclass
class LoadSummary:
    """What a load read, table by table, and what a hunt over it cannot see."""

    files: list[FileLoad] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    bad_records: int = 0
    # Files in no known shape, with the reason (skip_bad_records only).
    skipped_files: list[str] = field(default_factory=list)
    # Columns of a loaded table that no record carried.
    empty_columns: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LoadSummary:
        data = json.loads(text)
        data["files"] = [
            FileLoad(**{**item, "notes": tuple(item.get("notes", ()))})
            for item in data.get("files", [])
        ]
        return cls(**data)


Progress = Callable[[str, int], None]


def create_tables(
    con: Any,
    tables: Iterable[TableSchema] = TABLES.values(),
    *,
    keep: Mapping[str, Collection[str]] | None = None,
) -> None:
    """Create every table tokenward reads, empty, with its schema types.

    With *keep*, a table has only the columns listed for it (see
    :func:`connectors.exports.schemas.columns_used`).
    """
    for table in tables:
        columns = ", ".join(
            f"{quote_identifier(name)} {kind.duckdb_type}"
            for name, kind in table.columns.items()
            if _kept(table, name, keep)
        )
        con.execute(f"CREATE TABLE IF NOT EXISTS {quote_identifier(table.name)} ({columns})")


# DuckDB databases (a --cache kept beside the exports) and their working files.
_DATABASE_SUFFIXES = (".duckdb", ".duckdb.wal", ".duckdb.building", ".duckdb.building.wal")


def export_files(directory: Path) -> list[Path]:
    """Every file under *directory*, in a stable order.

    Hidden files and DuckDB databases (a cache kept among the exports) are
    left out.
    """
    if not directory.is_dir():
        raise ExportError("not a directory of exports", source=Location(file=str(directory)))
    files = sorted(
        path
        for path in directory.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(directory).parts)
        and not path.name.lower().endswith(_DATABASE_SUFFIXES)
        and not any(part.endswith(".duckdb.tmp") for part in path.parts)
    )
    if not files:
        raise ExportError(
            "the directory holds no export files", source=Location(file=str(directory))
        )
    return files


class ExportLoader:
    """Loads export files into a DuckDB connection, one transaction for all."""

    def __init__(
        self,
        con: Any,
        *,
        on_progress: Progress | None = None,
        skip_bad_records: bool = False,
        columns: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        self._con = con
        self._on_progress = on_progress
        self._skip = skip_bad_records
        # The columns worth storing, by table; None stores every schema column.
        self._keep = columns

    def load_directory(self, directory: Path) -> LoadSummary:
        return self.load_files(export_files(directory))

    def load_files(self, paths: Iterable[Path]) -> LoadSummary:
        summary = LoadSummary()
        create_tables(self._con, keep=self._keep)
        # Rows keep no order in Kusto; not keeping it lets DuckDB load in parallel.
        ordered = self._con.execute("SELECT current_setting('preserve_insertion_order')").fetchone()
        self._con.execute("SET preserve_insertion_order = false")
        try:
            if self._skip:
                self._load_each(summary, paths)
            else:
                self._load_all(summary, paths)
        finally:
            keep = bool(ordered[0]) if ordered else True
            with contextlib.suppress(Exception):
                self._con.execute(f"SET preserve_insertion_order = {str(keep).lower()}")
        return summary

    def _load_all(self, summary: LoadSummary, paths: Iterable[Path]) -> None:
        # One transaction: a file that cannot be read leaves nothing loaded.
        self._con.execute("BEGIN TRANSACTION")
        try:
            for path in paths:
                self._add(summary, self._load_file(path))
            self._describe(summary)
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    def _load_each(self, summary: LoadSummary, paths: Iterable[Path]) -> None:
        # A transaction per file: one that cannot be read at all is left out
        # whole, and said so, while the others load.
        for path in paths:
            self._con.execute("BEGIN TRANSACTION")
            try:
                loaded = self._load_file(path)
            except ExportError as refused:
                self._con.execute("ROLLBACK")
                logger.warning("left out %s: %s", path.name, refused.message)
                summary.skipped_files.append(str(refused))
                continue
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")
            self._add(summary, loaded)
        self._describe(summary)

    @staticmethod
    def _add(summary: LoadSummary, loaded: FileLoad) -> None:
        summary.files.append(loaded)
        for table, count in loaded.tables.items():
            summary.rows[table] = summary.rows.get(table, 0) + count
        for name, count in loaded.skipped.items():
            summary.skipped[name] = summary.skipped.get(name, 0) + count
        summary.bad_records += loaded.bad_records

    def _load_file(self, path: Path) -> FileLoad:
        options = ReadOptions(
            skip_bad_records=self._skip,
            rejects_table=f"tokenward_rejects_{next(_tags)}",
        )
        sniffed = sniff(path)
        if sniffed.complete and not sniffed.head.lstrip(b"\xef\xbb\xbf \t\r\n"):
            # An export of a table with nothing in it: no records, not an error.
            return FileLoad(
                path=str(path),
                shape="empty",
                framing="none",
                tables={},
                notes=("the file is empty: no records were read from it",),
            )
        read = detect(sniffed, options)

        plan, skipped, unnamed = self._plan(path, read)
        counts: dict[str, int] = {}
        bad = 0
        problem: str | None = None
        for table, where in plan:
            loaded, left_out, reason = self._insert(path, read, table, where)
            counts[table.name] = counts.get(table.name, 0) + loaded
            bad += left_out
            problem = problem or reason
        if unnamed:
            bad += unnamed
            problem = problem or f"{unnamed} record(s) name no table"
        rejected, reason = self._rejected(options)
        bad += rejected
        problem = problem or reason

        logger.info(
            "loaded %s as %s (%s): %s; skipped %s; bad %d",
            path.name,
            read.shape,
            read.framing,
            counts,
            skipped,
            bad,
        )
        if self._on_progress is not None:
            self._on_progress(path.name, sum(counts.values()))
        return FileLoad(
            path=str(path),
            shape=read.shape,
            framing=read.framing,
            tables=counts,
            skipped=skipped,
            bad_records=bad,
            problem=problem,
            notes=read.notes,
        )

    # -- which records go where --------------------------------------------------

    def _plan(
        self, path: Path, read: FileRead
    ) -> tuple[list[tuple[TableSchema, str | None]], dict[str, int], int]:
        """The tables to load with their record filters, the skipped, the unnamed."""
        if read.route is None:
            assert read.table is not None
            return [(read.table, None)], {}, 0
        if read.table is not None and not self._skip:
            # Named after its table, and every record should say the same.
            return [(read.table, _same_table(read))], {}, 0

        census = self._run(
            path,
            None,
            f"SELECT {read.route} AS name, count(*) FROM ({read.relation}) AS src GROUP BY ALL",
        ).fetchall()
        wanted: dict[str, tuple[TableSchema, list[str | None]]] = {}
        skipped: dict[str, int] = {}
        unnamed = 0
        for name, count in census:
            table = read.route_table(name) if name else read.table
            if table is not None:
                wanted.setdefault(table.name, (table, []))[1].append(name)
            elif name:
                skipped[name] = skipped.get(name, 0) + int(count)
            else:
                unnamed += int(count)
        if unnamed and not self._skip:
            raise ExportError(
                f"{unnamed} record(s) name no table (no {read.route})",
                source=Location(file=str(path)),
            )
        if not wanted and not self._skip:
            held = ", ".join(f"{name} ({count})" for name, count in sorted(skipped.items()))
            raise UnreadableExport(
                f"holds only records of tables tokenward does not read: {held}",
                source=Location(file=str(path)),
            )
        plan: list[tuple[TableSchema, str | None]] = [
            (table, _route_filter(read, names)) for table, names in wanted.values()
        ]
        return plan, skipped, unnamed

    # -- loading one table ---------------------------------------------------------

    def _casts(self, read: FileRead, table: TableSchema) -> list[tuple[Cast, Raw | None]]:
        raws = read.columns_for(table)
        made = []
        for name, kind in table.columns.items():
            if not _kept(table, name, self._keep):
                continue
            fallback = table.fill_from.get(name)
            raw = filled(raws.get(name), raws.get(fallback) if fallback else None)
            made.append(
                (
                    cast(
                        name,
                        kind,
                        raw,
                        required=name in table.required,
                    ),
                    raw,
                )
            )
        return made

    def _insert(
        self, path: Path, read: FileRead, table: TableSchema, where: str | None
    ) -> tuple[int, int, str | None]:
        """Rows loaded, rows left out as bad, and the first bad one's reason."""
        casts = self._casts(read, table)
        targets = ", ".join(
            quote_identifier(name) for name in table.columns if _kept(table, name, self._keep)
        )
        relation = read.relation_for(table) if read.relation_for else read.relation
        source = f"FROM ({relation}) AS src" + (f" WHERE {where}" if where else "")
        if not self._skip:
            values = ", ".join(made.strict for made, _ in casts)
            sql = f"INSERT INTO {quote_identifier(table.name)} ({targets}) SELECT {values} {source}"
            result = self._run(path, table, sql, read).fetchone()
            return (int(result[0]) if result else 0), 0, None
        return self._insert_lenient(path, read, table, casts, targets, source)

    def _insert_lenient(
        self,
        path: Path,
        read: FileRead,
        table: TableSchema,
        casts: list[tuple[Cast, Raw | None]],
        targets: str,
        source: str,
    ) -> tuple[int, int, str | None]:
        # Stage the cast rows with the reason each bad one is bad, then keep
        # the good ones: one read of the file for both.
        inner: list[str] = []
        checks: list[str] = []
        for number, (made, raw) in enumerate(casts):
            column = quote_identifier(made.column)
            held = f"__raw_{number}"
            inner.append(f"{made.lenient(raw.sql) if raw else made.strict} AS {column}")
            if made.failure is None:
                continue
            if raw is None:
                checks.append(f"WHEN true THEN {sql_string(f'a record has no {made.column}')}")
                continue
            inner.append(f"{raw.sql} AS {held}")
            why = made.message(Raw(held, raw.json).text)
            if made.column in table.required:
                absent = sql_string(f"a record has no {made.column}")
                why = f"CASE WHEN {held} IS NULL THEN {absent} ELSE {why} END"
            checks.append(f"WHEN {made.failure(held, column)} THEN {why}")
        problem = f"CASE {' '.join(checks)} END" if checks else "NULL::VARCHAR"
        stage = quote_identifier(f"tokenward_stage_{next(_tags)}")
        self._run(
            path,
            table,
            f"CREATE TEMP TABLE {stage} AS SELECT *, {problem} AS __problem "
            f"FROM (SELECT {', '.join(inner)} {source})",
            read,
        )
        try:
            inserted = self._con.execute(
                f"INSERT INTO {quote_identifier(table.name)} ({targets}) "
                f"SELECT {targets} FROM {stage} WHERE __problem IS NULL"
            ).fetchone()
            bad = self._con.execute(
                f"SELECT count(*), min(__problem) FROM {stage} WHERE __problem IS NOT NULL"
            ).fetchone()
        finally:
            self._con.execute(f"DROP TABLE {stage}")
        left_out = int(bad[0]) if bad else 0
        reason: str | None = str(bad[1]) if bad and bad[1] else None
        if reason and reason.startswith("a record has no ") and read.framing == "json-lines":
            # A line that is not JSON at all reaches here as an empty record.
            broken = _first_malformed_line(path)
            reason = f"line {broken} is not valid JSON" if broken else reason
        elif reason:
            value = _offending_value(reason)
            line = _first_line_holding(path, value) if value else None
            reason = f"{reason} (line {line})" if line else reason
        return (int(inserted[0]) if inserted else 0), left_out, reason

    def _rejected(self, options: ReadOptions) -> tuple[int, str | None]:
        """CSV rows the reader could not parse, when it was told to go on."""
        if not options.skip_bad_records:
            return 0, None
        table = quote_identifier(options.rejects_table)
        exists = self._con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?",
            [options.rejects_table],
        ).fetchone()
        if not exists or not exists[0]:
            return 0, None
        found = self._con.execute(
            f"SELECT count(DISTINCT line), min(line), min(error_message) FROM {table}"
        ).fetchone()
        for name in (options.rejects_table, options.rejects_table + "_scan"):
            with contextlib.suppress(Exception):
                self._con.execute(f"DROP TABLE IF EXISTS {quote_identifier(name)}")
        if not found or not found[0]:
            return 0, None
        return int(found[0]), f"line {found[1]}: {found[2]}"

    def _run(
        self,
        path: Path,
        table: TableSchema | None,
        sql: str,
        read: FileRead | None = None,
    ) -> Any:
        try:
            return self._con.execute(sql)
        except Exception as error:
            raise _export_error(path, table, error, read) from None

    # -- what the load means for a hunt ---------------------------------------------

    def _describe(self, summary: LoadSummary) -> None:
        """Note the columns no record carried, and warn when the hunt is blind."""
        for name, rows in summary.rows.items():
            if not rows:
                continue
            table = TABLES[name]
            empty = _empty_columns(self._con, table, self._keep)
            summary.empty_columns[name] = empty
            if table.signals and all(column in empty for column in table.signals):
                summary.warnings.append(
                    f"no {name} record carries "
                    f"{' or '.join(table.signals)}: a hunt over this export "
                    "cannot find device code sign-ins"
                )
        if any(summary.rows.get(name) for name in SIGN_IN_TABLES):
            for name, lost in EVIDENCE_TABLES.items():
                if not summary.rows.get(name):
                    summary.warnings.append(f"the export holds no {name} records: {lost}")
        if summary.bad_records:
            summary.warnings.append(
                f"{summary.bad_records:,} bad record(s) were left out "
                "(--skip-bad-records); the hunt does not see them"
            )
        for refused in summary.skipped_files:
            summary.warnings.append(f"left out {refused}")
        for item in summary.files:
            summary.warnings.extend(f"{Path(item.path).name}: {note}" for note in item.notes)


def _same_table(read: FileRead) -> str:
    """A filter that refuses a record of another table in a file named after one."""
    assert read.table is not None and read.route is not None
    name = read.table.name
    route = read.route
    return (
        f"CASE WHEN {route} = {sql_string(name)} OR nullif({route}, '') IS NULL "
        f"OR lower({route}) = {sql_string(name.lower())} THEN true "
        "ELSE error('column Type holds ' || "
        f"{route} || ', which is not {name}: a file named after a table holds only "
        "its records (rename it to load each record by its Type)') END"
    )


def _route_filter(read: FileRead, names: list[str | None]) -> str:
    assert read.route is not None
    listed = [name for name in names if name]
    parts = []
    if listed:
        parts.append(f"{read.route} IN ({', '.join(sql_string(n) for n in listed)})")
    if len(listed) < len(names):
        parts.append(f"nullif({read.route}, '') IS NULL")
    return " OR ".join(parts)


def _kept(table: TableSchema, column: str, keep: Mapping[str, Collection[str]] | None) -> bool:
    return keep is None or table.name not in keep or column in keep[table.name]


def _empty_columns(
    con: Any, table: TableSchema, keep: Mapping[str, Collection[str]] | None = None
) -> list[str]:
    # One probe per column that stops at its first value: a column with values
    # costs a row or two to read, not a scan of the table.
    stored = {name: kind for name, kind in table.columns.items() if _kept(table, name, keep)}
    probes = ", ".join(
        f"EXISTS (SELECT 1 FROM {quote_identifier(table.name)} WHERE "
        + (
            f"{quote_identifier(name)} <> '')"
            if kind is Kind.STRING
            else f"{quote_identifier(name)} IS NOT NULL)"
        )
        for name, kind in stored.items()
    )
    row = con.execute(f"SELECT {probes}").fetchone()
    return [name for name, seen in zip(stored, row or (), strict=False) if not seen]


# -- where a failure is --------------------------------------------------------------


def _export_error(
    path: Path, table: TableSchema | None, error: Exception, read: FileRead | None
) -> ExportError:
    """A DuckDB read or cast failure, as the file, line and what was wrong.

    DuckDB's line numbers are approximate for JSON, so on this (rare) path the
    file is read again to find the exact line: the first that is not JSON, or
    the first that holds the value DuckDB could not cast.
    """
    full = str(error)
    if type(error).__name__ == "OutOfMemoryException" or "failed to allocate" in full:
        # Not the file's fault: DuckDB ran out of the memory it was allowed.
        return ExportError(
            f"cannot load it{f' as {table.name}' if table else ''}: DuckDB ran out of memory "
            "under its limit; give more with --memory-limit (e.g. 2GB)",
            source=Location(file=str(path)),
        )
    message = full.split("\n")[0]
    message = re.sub(r"^[A-Za-z ]+Error: ", "", message)
    message = re.sub(r'in file "[^"]*", ', "", message)
    message = re.sub(r"^JSON transform error in line \d+: ", "", message)
    line: int | None = None
    csv_line = _CSV_LINE.search(full)
    if csv_line:
        line = int(csv_line.group(1))
        reason = re.search(r"\n([^\n]*(?:quote|column|delimiter)[^\n]*)\n", full, re.I)
        message = reason.group(1).strip() if reason else "the CSV cannot be parsed"
    elif "Malformed JSON" in message:
        line = _first_malformed_line(path)
        detail = message.split(":", 1)[1].strip() if ":" in message else message
        message = f"not valid JSON: {detail.rstrip('. ')}"
    else:
        value = _offending_value(message)
        line = _first_line_holding(path, value) if value else None
    if line is None and (read is None or read.lines):
        approximate = _LINE.search(message)
        line = int(approximate.group(1)) if approximate else None
    what = f"cannot load it as {table.name}" if table else "cannot read it"
    location = Location(file=str(path), line=line)
    return ExportError(f"{what}: {message.strip()}", source=location)


def _offending_value(message: str) -> str | None:
    ours = re.search(r"holds (.*), which is not", message, re.S)
    if ours:
        return ours.group(1)[:300]
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
    if not first.startswith("{") or _is_document(path):
        if path.stat().st_size > _LOCATE_LIMIT:
            return None
        try:
            json.loads("".join(text for _, text in _lines(path)).lstrip("\ufeff"))
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


def _is_document(path: Path) -> bool:
    # A document spread over lines: its first line is not a whole JSON value.
    for _, text in _lines(path):
        if text.strip():
            try:
                json.loads(text)
            except ValueError:
                return True
            return False
    return False


def _first_line_holding(path: Path, value: str) -> int | None:
    # The value as DuckDB printed it may differ from the file in whitespace and
    # in JSON escaping (a JSON text cell is a quoted string in the file).
    needles = {_squeezed(value), _squeezed(json.dumps(value)[1:-1])} - {""}
    for number, text in _lines(path):
        line = _squeezed(text)
        if any(needle in line for needle in needles):
            return number
    return None


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()
