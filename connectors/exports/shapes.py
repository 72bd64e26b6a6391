"""Export shapes: how a file's records map onto tokenward's tables.

A shape is recognised from the file's first bytes (its name only says which
table a file holds when its records do not). It answers with a
:class:`FileRead`: a DuckDB ``SELECT`` whose rows are the file's records, and
for each table the SQL of every column, still raw (text or JSON). The loader
casts those to the schema types, so every shape ends up in the same typed
tables. DuckDB's own readers (``read_json``, ``read_csv``) read the file;
no record passes through Python.

The shapes, in the order they are tried:

* ``log-analytics-csv``: the portal's "Export to CSV" (``TimeGenerated [UTC]``
  headers, ``4/28/2021, 2:08:45.221 PM`` dates, ``<Col>_dynamic`` and
  ``<Col>_string`` pairs, multi-line JSON cells, ``TRUE``);
* ``log-analytics-api``: query API results (``tables[].columns[]/rows[]``);
* ``defender-hunting-results``: Graph ``runHuntingQuery`` results
  (``schema[]/results[]``);
* ``entra-diagnostic-records`` and ``defender-streaming-records``: records
  from diagnostic settings or the Defender XDR streaming API, through Event
  Hub or storage, one per line or in ``{"records": [...]}``, the table named by
  ``category``, the columns in ``properties`` (camelCase from Entra, PascalCase
  from Defender);
* ``graph-sign-ins``: Graph ``GET /auditLogs/signIns`` (``{"value": [...]}``,
  or its records as an array or one per line), camelCase;
* ``log-analytics-json``: rows as the workspace holds them, an array or one
  per line, the table named by each row's ``Type``, by the file, or by the
  columns that only one table has.

Any of them may be gzip-compressed.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from connectors.exports.casts import Raw
from connectors.exports.schemas import (
    TABLES,
    Kind,
    TableSchema,
    table_by_columns,
    table_for_category,
    table_named,
)
from playbooks.errors import ExportError, Location
from playbooks.times import parse_time

SNIFF_BYTES = 64 * 1024
# A first record larger than this is not looked at whole; its shape is still
# recognised from the envelope around it.
MAX_SNIFF_BYTES = 16 * 1024 * 1024
# DuckDB's limit for one JSON value: a line, an array element, or a whole
# envelope document (which it holds in memory while it reads it).
LINE_OBJECT_BYTES = 16 * 1024 * 1024
MAX_DOCUMENT_BYTES = 2 * 1024 * 1024 * 1024 - 1

_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".log", ".txt")
_ENVELOPE = re.compile(
    r'^\{\s*(?:"@odata\.[A-Za-z]+"\s*:\s*"(?:[^"\\]|\\.)*"\s*,\s*)*'
    r'"(records|value|tables|schema|results)"\s*:\s*\['
)


@dataclass(frozen=True)
class Sniff:
    """What the loader knows about a file before choosing a shape."""

    path: Path
    head: bytes
    compressed: bool
    # The head is the whole file.
    complete: bool
    # Uncompressed size in bytes, when it is known.
    size: int | None = None

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
    def text(self) -> str:
        """The head as text, without a byte order mark or a cut last character."""
        return self.head.decode("utf-8", errors="ignore").lstrip("\ufeff")

    @property
    def first_char(self) -> str:
        text = self.text.lstrip(" \t\r\n")
        return text[0] if text else ""

    @property
    def named_table(self) -> TableSchema | None:
        """The table the file, or a folder it is in, is named after.

        Log Analytics data export writes ``am-<Table>/.../PT1H.json``.
        """
        table = table_named(self.stem)
        for folder in self.path.parents:
            if table is not None:
                break
            name = folder.name
            table = table_named(name.removeprefix("am-")) if name else None
        return table


def sniff(path: Path) -> Sniff:
    """The first bytes of *path* (more when its first record is longer)."""
    try:
        with path.open("rb") as raw:
            magic = raw.read(2)
        compressed = magic == b"\x1f\x8b"
        size = _gzip_size(path) if compressed else path.stat().st_size
        opener = gzip.open if compressed else open
        wanted = SNIFF_BYTES
        while True:
            with opener(path, "rb") as handle:
                head = handle.read(wanted + 1)
            complete = len(head) <= wanted
            head = head[:wanted]
            if complete or b"\n" in head or wanted >= MAX_SNIFF_BYTES:
                return Sniff(path, head, compressed, complete, size)
            wanted *= 16
    except (OSError, EOFError) as error:
        raise ExportError(
            f"cannot read the file: {error}", source=Location(file=str(path))
        ) from None


def exported_size(path: Path) -> int:
    """The bytes of exported text in *path*, uncompressed."""
    with path.open("rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    size = _gzip_size(path) if compressed else None
    # A gzip member's recorded size wraps at 4 GiB; compressed text is rarely
    # less than a tenth of the original.
    return max(size or 0, path.stat().st_size * (10 if compressed else 1))


def _gzip_size(path: Path) -> int | None:
    # The last four bytes of a gzip member hold its size modulo 2**32.
    with path.open("rb") as raw:
        raw.seek(-4, 2)
        (size,) = struct.unpack("<I", raw.read(4))
    return int(size) or None


def _zone_notes(record: Mapping[str, Any] | None, *keys: str) -> tuple[str, ...]:
    """A note when the first record's time has no zone (it is taken as UTC)."""
    for key in keys:
        value = (record or {}).get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        try:
            assumed = parse_time(value).assumed_utc
        except ValueError:
            return ()
        if assumed:
            return (f"times such as {key} {value!r} carry no zone and were taken as UTC",)
        return ()
    return ()


class UnreadableExport(ExportError):
    """A file in no shape tokenward reads, or holding no table it reads.

    Unlike a broken record, such a file can be left out whole
    (``skip_bad_records``) without loading any part of it wrongly.
    """


# -- what a shape answers -------------------------------------------------------


ColumnsFor = Callable[[TableSchema], Mapping[str, Raw]]


@dataclass(frozen=True)
class FileRead:
    """How to read one file: its records as SQL, and each table's columns."""

    shape: str
    framing: str
    # A SELECT whose rows are the file's records; the columns refer to it as src.
    relation: str
    # The raw SQL of each column a table can take from this file.
    columns_for: ColumnsFor
    # The records as read for one table, when that differs from ``relation``.
    relation_for: Callable[[TableSchema], str] | None = None
    # The table every record belongs to, when the file holds one table.
    table: TableSchema | None = None
    # SQL naming each record's table, when records carry it (Type, category).
    route: str | None = None
    # What a route value names: a table tokenward reads, or None.
    route_table: Callable[[str], TableSchema | None] = table_named
    # Whether DuckDB's line numbers are the file's (one record per line).
    lines: bool = False
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReadOptions:
    """How forgiving a read is."""

    # Unreadable lines become empty records (JSON lines) or rejected rows (CSV,
    # listed in ``rejects_table``) instead of stopping the read.
    skip_bad_records: bool = False
    rejects_table: str = "tokenward_rejects"


class Shape(Protocol):
    name: str

    def reads(self, sniff: Sniff, head: JsonHead | None, options: ReadOptions) -> FileRead | None:
        """How to read this file in this shape, or ``None`` if it is not one."""
        ...


# -- SQL helpers ----------------------------------------------------------------


def sql_string(value: str) -> str:
    """A DuckDB string literal: file paths are the only values put in load SQL."""
    return "'" + value.replace("'", "''") + "'"


def quote_identifier(name: str) -> str:
    """A column name as a DuckDB identifier; any text, quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def read_type(kind: Kind) -> str:
    """The type DuckDB's readers hand over a column of *kind* in: JSON or text."""
    return "JSON" if kind is Kind.DYNAMIC else "VARCHAR"


def _struct(fields: Mapping[str, str]) -> str:
    inner = ", ".join(f"{quote_identifier(name)} {kind}" for name, kind in fields.items())
    return f"STRUCT({inner})"


def _read_json(
    sniff: Sniff,
    columns: Mapping[str, str],
    *,
    json_format: str,
    skip_bad: bool = False,
) -> str:
    listed = ", ".join(f"{sql_string(name)}: {sql_string(kind)}" for name, kind in columns.items())
    if json_format == "unstructured":
        largest = min(max((sniff.size or 0) + 1, LINE_OBJECT_BYTES), MAX_DOCUMENT_BYTES)
    else:
        largest = LINE_OBJECT_BYTES
    options = [
        f"format={sql_string(json_format)}",
        "records=true",
        f"compression={sql_string('gzip' if sniff.compressed else 'none')}",
        f"columns={{{listed}}}",
        f"maximum_object_size={largest}",
    ]
    if skip_bad and json_format == "newline_delimited":
        options.append("ignore_errors=true")
    return f"read_json({sql_string(str(sniff.path))}, {', '.join(options)})"


# -- the first record -------------------------------------------------------------


@dataclass(frozen=True)
class JsonHead:
    """A JSON file's framing and its first record, read from the head."""

    # "json-lines", "json-array" or "json-document".
    framing: str
    # "records", "value", "tables", "schema"/"results", or None for bare records.
    envelope: str | None
    first: dict[str, Any] | None
    # The top-level object, when the head holds all of it.
    document: dict[str, Any] | None = None

    @property
    def duckdb_format(self) -> str:
        return {
            "json-lines": "newline_delimited",
            "json-array": "array",
            "json-document": "unstructured",
        }[self.framing]


def json_head(sniff: Sniff, *, lenient_lines: bool = False) -> JsonHead | None:
    """The framing and first record of a JSON file; ``None`` if it is not JSON.

    JSON that is broken within the head is refused here, with its line: Python's
    parser is strict where DuckDB's forgives (a trailing comma, for one). With
    *lenient_lines*, a broken line of a JSON-lines file is left for the reader
    to skip.
    """
    text = sniff.text
    body = text.lstrip(" \t\r\n")
    skipped_lines = text[: len(text) - len(body)].count("\n")
    if not body or body[0] not in "[{":
        return None
    decoder = json.JSONDecoder()

    def broken(error: json.JSONDecodeError) -> ExportError:
        line = skipped_lines + body.count("\n", 0, error.pos) + 1
        message = f"not valid JSON: {error.msg.lower()} (column {error.colno})"
        before = body[: error.pos].rstrip()
        closing = body[error.pos : error.pos + 1]
        if before.endswith(",") and closing in ("]", "}"):
            # Python points at the bracket; the mistake is the comma before it.
            line = skipped_lines + before.count("\n") + 1
            message = f"not valid JSON: a trailing comma before {closing!r}"
        return ExportError(message, source=Location(file=str(sniff.path), line=line))

    def decode(start: int) -> tuple[Any, int] | None:
        try:
            return decoder.raw_decode(body, start)
        except json.JSONDecodeError as error:
            # A failure on the head's last, cut line is the end of the head.
            if not sniff.complete and "\n" not in body[error.pos :]:
                return None
            raise broken(error) from None

    if body[0] == "[":
        position = _skip_space(body, 1)
        if position < len(body) and body[position] == "]":
            return JsonHead("json-array", None, None)
        found = decode(position)
        first = found[0] if found else None
        if sniff.complete:
            decode(0)
        return JsonHead("json-array", None, first if isinstance(first, dict) else None)

    try:
        found = decode(0)
    except ExportError:
        later = _later_line(body) if lenient_lines else None
        if later is None:
            raise
        return _envelope_of(later, "json-lines")
    if found is not None:
        value, end = found
        rest = _skip_space(body, end)
        framing = "json-document"
        if rest < len(body):
            if body[rest] != "{" and not lenient_lines:
                raise broken(json.JSONDecodeError("Extra data", body, rest))
            framing = "json-lines"
            if not lenient_lines:
                _check_lines(body, rest, broken, complete=sniff.complete)
        if isinstance(value, dict):
            return _envelope_of(value, framing)
        return None

    # The head holds only the start of one large document: its envelope key
    # and what follows it say what it is.
    match = _ENVELOPE.match(body)
    if match is None:
        return JsonHead("json-lines", None, None)
    envelope = match.group(1)
    if envelope in ("schema", "tables"):
        # The column list comes before the rows; the rows may not fit the head.
        columns = _list_after(body, '"columns"' if envelope == "tables" else None, match)
        key = "tables" if envelope == "tables" else "results"
        listed = {"columns": columns} if envelope == "tables" else None
        document = {"schema": columns} if envelope == "schema" else None
        return JsonHead("json-document", key, listed, document)
    found = decode(_skip_space(body, match.end()))
    first = found[0] if found else None
    return JsonHead("json-document", envelope, first if isinstance(first, dict) else None)


def _list_after(body: str, key: str | None, match: re.Match[str]) -> list[Any]:
    """The JSON list at the envelope's ``[`` (or after *key* inside it), if whole."""
    start = match.end() - 1
    if key is not None:
        found = body.find(key, start)
        start = body.find("[", found) if found >= 0 else -1
    if start < 0:
        return []
    try:
        value, _ = json.JSONDecoder().raw_decode(body, start)
    except json.JSONDecodeError:
        return []
    return value if isinstance(value, list) else []


def _later_line(body: str) -> dict[str, Any] | None:
    """The first line after the first that is a whole JSON object, if any."""
    for line in body.split("\n")[1:-1]:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _check_lines(
    body: str,
    start: int,
    broken: Callable[[json.JSONDecodeError], ExportError],
    *,
    complete: bool,
) -> None:
    # Every complete line in the head must parse on its own: a record that
    # does not close on its line is broken there, not where the next one starts.
    position = start
    while position < len(body):
        end = body.find("\n", position)
        if end == -1:
            if not complete:
                return
            end = len(body)
        line = body[position:end]
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as error:
                raise broken(json.JSONDecodeError(error.msg, body, position + error.pos)) from None
        position = end + 1


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _envelope_of(value: dict[str, Any], framing: str) -> JsonHead:
    for key in ("records", "value", "tables", "results"):
        items = value.get(key)
        if isinstance(items, list):
            first = items[0] if items and isinstance(items[0], dict) else None
            return JsonHead(framing, key, first, value)
    return JsonHead(framing, None, value, value)


# -- Entra sign-in records in camelCase (diagnostic settings, Graph) -------------

# The properties of a Graph signIn, and of a diagnostic record's ``properties``,
# with the type DuckDB reads each in.
_SIGN_IN_PROPERTIES: dict[str, str] = {
    **{
        name: "VARCHAR"
        for name in (
            "createdDateTime",
            "id",
            "userPrincipalName",
            "userId",
            "userDisplayName",
            "userType",
            "alternateSignInName",
            "appId",
            "appDisplayName",
            "resourceDisplayName",
            "resourceId",
            "resourceServicePrincipalId",
            "resourceTenantId",
            "homeTenantId",
            "authenticationProtocol",
            "originalTransferMethod",
            "incomingTokenType",
            "authenticationRequirement",
            "clientAppUsed",
            "isInteractive",
            "isRisky",
            "ipAddress",
            "autonomousSystemNumber",
            "userAgent",
            "riskLevelDuringSignIn",
            "riskLevelAggregated",
            "riskState",
            "riskDetail",
            "conditionalAccessStatus",
            "correlationId",
            "originalRequestId",
            "sessionId",
            "uniqueTokenIdentifier",
            "tokenIssuerType",
            "crossTenantAccessType",
            "processingTimeInMilliseconds",
        )
    },
    **{
        name: "JSON"
        for name in (
            "deviceDetail",
            "location",
            "status",
            "appliedConditionalAccessPolicies",
            "mfaDetail",
            "authenticationDetails",
            "authenticationProcessingDetails",
            "networkLocationDetails",
            "riskEventTypes",
            # Graph and diagnostic settings spell it with a lower-case v.
            "riskEventTypes_v2",
            "signInEventTypes",
        )
    },
}

# Column ← the property it is taken from, for the columns that are a rename.
_SIGN_IN_RENAMES = {
    "Id": "id",
    "HomeTenantId": "homeTenantId",
    "ResourceTenantId": "resourceTenantId",
    "UserPrincipalName": "userPrincipalName",
    "UserId": "userId",
    "UserDisplayName": "userDisplayName",
    "UserType": "userType",
    "AlternateSignInName": "alternateSignInName",
    "AppId": "appId",
    "AppDisplayName": "appDisplayName",
    "ResourceDisplayName": "resourceDisplayName",
    "ResourceIdentity": "resourceId",
    "ResourceServicePrincipalId": "resourceServicePrincipalId",
    "AuthenticationProtocol": "authenticationProtocol",
    "OriginalTransferMethod": "originalTransferMethod",
    "IncomingTokenType": "incomingTokenType",
    "AuthenticationRequirement": "authenticationRequirement",
    "AuthenticationDetails": "authenticationDetails",
    "AuthenticationProcessingDetails": "authenticationProcessingDetails",
    "ClientAppUsed": "clientAppUsed",
    "IsInteractive": "isInteractive",
    "IsRisky": "isRisky",
    "AutonomousSystemNumber": "autonomousSystemNumber",
    "UserAgent": "userAgent",
    "RiskLevelDuringSignIn": "riskLevelDuringSignIn",
    "RiskLevelAggregated": "riskLevelAggregated",
    "RiskState": "riskState",
    "RiskDetail": "riskDetail",
    "RiskEventTypes": "riskEventTypes",
    "ConditionalAccessStatus": "conditionalAccessStatus",
    "OriginalRequestId": "originalRequestId",
    "SessionId": "sessionId",
    "UniqueTokenIdentifier": "uniqueTokenIdentifier",
    "TokenIssuerType": "tokenIssuerType",
    "CrossTenantAccessType": "crossTenantAccessType",
    "NetworkLocationDetails": "networkLocationDetails",
    "DeviceDetail": "deviceDetail",
    "LocationDetails": "location",
    "Status": "status",
    "ConditionalAccessPolicies": "appliedConditionalAccessPolicies",
    "MfaDetail": "mfaDetail",
    "ProcessingTimeInMilliseconds": "processingTimeInMilliseconds",
    "ProcessingTimeInMs": "processingTimeInMilliseconds",
}

# The top-level fields of a diagnostic-settings or streaming record.
_RECORD_FIELDS = {
    "time": "VARCHAR",
    "category": "VARCHAR",
    "operationName": "VARCHAR",
    "tenantId": "VARCHAR",
    "resultType": "VARCHAR",
    "resultSignature": "VARCHAR",
    "resultDescription": "VARCHAR",
    "durationMs": "VARCHAR",
    "callerIpAddress": "VARCHAR",
    "correlationId": "VARCHAR",
    "location": "VARCHAR",
}


def _prop(name: str) -> Raw:
    kind = _SIGN_IN_PROPERTIES[name]
    return Raw(f"src.properties.{quote_identifier(name)}", json=kind == "JSON")


def _top(name: str) -> Raw:
    return Raw(f"src.{quote_identifier(name)}")


def _text_in(raw: Raw, path: str) -> Raw:
    return Raw(f"({raw.sql} ->> {sql_string(path)})")


def _first_of(*raws: Raw) -> Raw:
    return Raw("coalesce(" + ", ".join(f"nullif({raw.text}, '')" for raw in raws) + ")")


def _sign_in_columns(table: TableSchema) -> dict[str, Raw]:
    """A sign-in table's columns from a camelCase record (``src.properties``)."""
    status = _prop("status")
    columns: dict[str, Raw] = {
        column: _prop(prop) for column, prop in _SIGN_IN_RENAMES.items() if column in table.columns
    }
    columns.update(
        {
            "TimeGenerated": _first_of(_top("time"), _prop("createdDateTime")),
            "CreatedDateTime": _first_of(_prop("createdDateTime"), _top("time")),
            "OperationName": _top("operationName"),
            "Category": _top("category"),
            "TenantId": _top("tenantId"),
            "AADTenantId": _top("tenantId"),
            "ResultType": _first_of(_top("resultType"), _text_in(status, "$.errorCode")),
            "ResultSignature": _top("resultSignature"),
            "ResultDescription": _first_of(
                _top("resultDescription"), _text_in(status, "$.failureReason")
            ),
            "IPAddress": _first_of(_prop("ipAddress"), _top("callerIpAddress")),
            "Location": _first_of(
                _top("location"), _text_in(_prop("location"), "$.countryOrRegion")
            ),
            "RiskEventTypes_V2": _prop("riskEventTypes_v2"),
            "CorrelationId": _first_of(_prop("correlationId"), _top("correlationId")),
            "DurationMs": _top("durationMs"),
            "Type": Raw(sql_string(table.name)),
        }
    )
    return columns


_DEFENDER_TABLES = ("EmailEvents", "UrlClickEvents", "EmailUrlInfo")


def _defender_properties() -> dict[str, str]:
    fields: dict[str, str] = {}
    for name in _DEFENDER_TABLES:
        for column, kind in TABLES[name].columns.items():
            # JSON wins: a column dynamic in one table is read as JSON for all.
            if fields.get(column) != "JSON":
                fields[column] = read_type(kind)
    return fields


def _defender_columns(table: TableSchema) -> dict[str, Raw]:
    """A Defender table's columns from a streaming record (PascalCase properties)."""
    read = _defender_properties()
    columns = {
        column: Raw(f"src.properties.{quote_identifier(column)}", json=read[column] == "JSON")
        for column in table.columns
    }
    columns["TimeGenerated"] = _first_of(columns["TimeGenerated"], _top("time"))
    columns["Type"] = Raw(sql_string(table.name))
    return columns


def _record_columns(table: TableSchema) -> dict[str, Raw]:
    if table.name in _DEFENDER_TABLES:
        return _defender_columns(table)
    return _sign_in_columns(table)


def _looks_like_sign_in(record: Mapping[str, Any]) -> bool:
    return "createdDateTime" in record and bool(
        {"userPrincipalName", "userId", "appId"} & set(record)
    )


class DiagnosticRecords:
    """Diagnostic-settings and Defender streaming records, bare or in ``records``."""

    name = "entra-diagnostic-records"

    def reads(self, sniff: Sniff, head: JsonHead | None, options: ReadOptions) -> FileRead | None:
        if head is None or head.envelope not in (None, "records"):
            return None
        record = head.first
        if not record or not isinstance(record.get("properties"), dict):
            return None
        if not isinstance(record.get("category"), str):
            return None

        def relation(properties: Mapping[str, str] | None) -> str:
            # Entra's camelCase and Defender's PascalCase differ only in case
            # (ipAddress, IPAddress), which one DuckDB struct cannot hold: each
            # table's rows are read with its own family's properties.
            fields = dict(_RECORD_FIELDS)
            if properties is not None:
                fields["properties"] = _struct(properties)
            if head.envelope == "records":
                reader = _read_json(
                    sniff,
                    {"records": _struct(fields) + "[]"},
                    json_format=head.duckdb_format,
                )
                return f"SELECT record.* FROM (SELECT unnest(records) AS record FROM {reader})"
            reader = _read_json(
                sniff,
                fields,
                json_format=head.duckdb_format,
                skip_bad=options.skip_bad_records,
            )
            return f"SELECT * FROM {reader}"

        def relation_for(table: TableSchema) -> str:
            if table.name in _DEFENDER_TABLES:
                return relation(_defender_properties())
            return relation(_SIGN_IN_PROPERTIES)

        streaming = record["category"].lower().startswith("advancedhunting-")
        return FileRead(
            shape="defender-streaming-records" if streaming else self.name,
            framing=(
                f"records envelope, {head.framing}" if head.envelope == "records" else head.framing
            ),
            relation=relation(None),
            relation_for=relation_for,
            columns_for=_record_columns,
            route="src.category",
            route_table=table_for_category,
            lines=head.framing == "json-lines" and head.envelope is None,
            notes=_zone_notes(record, "time"),
        )


class GraphSignIns:
    """Graph ``GET /auditLogs/signIns``: ``{"value": [...]}`` or its records."""

    name = "graph-sign-ins"

    def reads(self, sniff: Sniff, head: JsonHead | None, options: ReadOptions) -> FileRead | None:
        if head is None or head.envelope not in (None, "value"):
            return None
        context = str((head.document or {}).get("@odata.context", ""))
        record = head.first
        if "auditLogs/signIns" not in context and not (record and _looks_like_sign_in(record)):
            return None

        properties = _struct(_SIGN_IN_PROPERTIES)
        # The record itself is what a diagnostic record keeps in ``properties``.
        nothing = ", ".join(f"NULL::VARCHAR AS {quote_identifier(name)}" for name in _RECORD_FIELDS)
        if head.envelope == "value":
            reader = _read_json(sniff, {"value": properties + "[]"}, json_format=head.duckdb_format)
            relation = f"SELECT {nothing}, unnest(value) AS properties FROM {reader}"
            framing = f"value envelope, {head.framing}"
        else:
            reader = _read_json(
                sniff,
                dict(_SIGN_IN_PROPERTIES),
                json_format=head.duckdb_format,
                skip_bad=options.skip_bad_records,
            )
            # Bare records: each becomes what a diagnostic record holds in
            # ``properties``, so one mapping serves both.
            packed = ", ".join(
                f"{quote_identifier(name)} := {quote_identifier(name)}"
                for name in _SIGN_IN_PROPERTIES
            )
            relation = f"SELECT {nothing}, struct_pack({packed}) AS properties FROM {reader}"
            framing = head.framing
        # v1.0 returns interactive sign-ins; beta says which kind each one is.
        events = "CAST(src.properties.signInEventTypes AS VARCHAR)"
        route = (
            f"CASE WHEN contains({events}, '\"nonInteractiveUser\"') "
            "THEN 'NonInteractiveUserSignInLogs' "
            f"WHEN contains({events}, '\"interactiveUser\"') THEN 'SignInLogs' "
            f"WHEN contains({events}, '\"servicePrincipal\"') "
            "THEN 'ServicePrincipalSignInLogs' "
            f"WHEN contains({events}, '\"managedIdentity\"') "
            "THEN 'ManagedIdentitySignInLogs' "
            "WHEN lower(src.properties.isInteractive) = 'false' "
            "THEN 'NonInteractiveUserSignInLogs' ELSE 'SignInLogs' END"
        )
        return FileRead(
            shape=self.name,
            framing=framing,
            relation=relation,
            columns_for=_sign_in_columns,
            route=route,
            route_table=table_for_category,
            lines=head.framing == "json-lines" and head.envelope is None,
            notes=_zone_notes(record, "createdDateTime"),
        )


# -- tables with Log Analytics column names ----------------------------------------


def _table_of(sniff: Sniff, columns: set[str], what: str) -> tuple[TableSchema, str]:
    """The one table a file without per-record names holds, and how it was told."""
    named = sniff.named_table
    if named is not None:
        return named, "file name"
    inferred = table_by_columns(columns)
    if inferred is not None:
        return inferred, "columns"
    raise UnreadableExport(
        f"{what}, but neither its name nor its columns say which table it holds: "
        f"name the file after its table ({', '.join(sorted(TABLES))}), "
        f"e.g. SigninLogs{sniff.path.suffix}",
        source=Location(file=str(sniff.path)),
    )


def _candidates(table: TableSchema | None) -> list[TableSchema]:
    return [table] if table is not None else list(TABLES.values())


def _union_columns(tables: Sequence[TableSchema]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for table in tables:
        for column, kind in table.columns.items():
            # A column dynamic in one table and text in another is read as JSON.
            if merged.get(column) != "JSON":
                merged[column] = read_type(kind)
    return merged


def _routed_by_type(
    sniff: Sniff, names: set[str], what: str
) -> tuple[TableSchema | None, str | None]:
    """The file's table, or the per-record route when records carry ``Type``."""
    named = sniff.named_table
    if "Type" in names:
        return named, 'src."Type"'
    table, _ = _table_of(sniff, names, what)
    return table, None


def _plain_columns(columns: Mapping[str, str]) -> ColumnsFor:
    def columns_for(table: TableSchema) -> dict[str, Raw]:
        return {
            column: Raw(f"src.{quote_identifier(column)}", json=kind == "JSON")
            for column, kind in columns.items()
            if column in table.columns
        }

    return columns_for


class LogAnalyticsJson:
    """Rows as the workspace holds them: a JSON array, or one row per line."""

    name = "log-analytics-json"

    def reads(self, sniff: Sniff, head: JsonHead | None, options: ReadOptions) -> FileRead | None:
        if head is None or head.envelope is not None:
            return None
        if head.framing == "json-document" and head.first is not None:
            # One row as a whole document reads as one line would.
            head = JsonHead("json-lines", None, head.first)
        record = head.first or {}
        names = set(record)
        known = {column for table in TABLES.values() for column in table.columns}
        if not names & known and sniff.named_table is None:
            return None
        table, route = _routed_by_type(sniff, names, "it holds Log Analytics rows")
        columns = _union_columns(_candidates(table if route is None else None))
        reader = _read_json(
            sniff,
            columns,
            json_format=head.duckdb_format,
            skip_bad=options.skip_bad_records,
        )
        return FileRead(
            shape=self.name,
            framing=head.framing,
            relation=f"SELECT * FROM {reader}",
            columns_for=_plain_columns(columns),
            table=table,
            route=route,
            lines=head.framing == "json-lines",
            notes=_zone_notes(record, "TimeGenerated", "Timestamp", "CreatedDateTime"),
        )


class LogAnalyticsApi:
    """Query API results: ``{"tables": [{"name", "columns", "rows"}]}``."""

    name = "log-analytics-api"

    def reads(self, sniff: Sniff, head: JsonHead | None, options: ReadOptions) -> FileRead | None:
        if head is None or head.envelope != "tables":
            return None
        first = head.first or {}
        names = {
            str(column.get("name"))
            for column in first.get("columns", [])
            if isinstance(column, dict)
        }
        table, route = _routed_by_type(sniff, names, "it holds Log Analytics query results")
        shape = (
            "STRUCT(name VARCHAR, columns STRUCT(name VARCHAR, type VARCHAR)[], rows JSON[][])[]"
        )
        reader = _read_json(sniff, {"tables": shape}, json_format=head.duckdb_format)
        relation = (
            "SELECT list_transform(result.columns, lambda c: c.name) AS __names, "
            "unnest(result.rows) AS __row "
            f"FROM (SELECT unnest(tables) AS result FROM {reader})"
        )

        def cell(column: str) -> Raw:
            return Raw(
                f"src.__row[list_position(src.__names, {sql_string(column)})]",
                json=True,
            )

        def columns_for(table: TableSchema) -> dict[str, Raw]:
            return {column: cell(column) for column in table.columns}

        return FileRead(
            shape=self.name,
            framing=head.framing,
            relation=relation,
            columns_for=columns_for,
            table=table,
            route=cell("Type").text if route else None,
        )


class DefenderHuntingResults:
    """Graph ``runHuntingQuery`` results: ``{"schema": [...], "results": [...]}``."""

    name = "defender-hunting-results"

    def reads(self, sniff: Sniff, head: JsonHead | None, options: ReadOptions) -> FileRead | None:
        if head is None or head.envelope != "results":
            return None
        schema = (head.document or {}).get("schema") or []
        names = {
            str(item.get("name") or item.get("Name")) for item in schema if isinstance(item, dict)
        } or set(head.first or {})
        table, _ = _table_of(sniff, names, "it holds Defender advanced hunting results")
        columns = {column: read_type(kind) for column, kind in table.columns.items()}
        reader = _read_json(
            sniff,
            {"results": _struct(columns) + "[]"},
            json_format=head.duckdb_format,
        )
        return FileRead(
            shape=self.name,
            framing=head.framing,
            relation=f"SELECT unnest(results) AS row FROM {reader}",
            columns_for=lambda t: {
                column: Raw(f"src.row.{quote_identifier(column)}", json=kind == "JSON")
                for column, kind in columns.items()
            },
            table=table,
        )


# -- the portal's CSV export ----------------------------------------------------------

_ZONE = re.compile(r"^(?P<name>.*?)\s*\[(?P<zone>[^\]]*)\]$")


@dataclass(frozen=True)
class CsvHeader:
    """The portal's header, each cell mapped to the column it fills."""

    cells: tuple[str, ...]
    # Column → the cells it is read from, in order of preference.
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)


def csv_header(sniff: Sniff) -> CsvHeader | None:
    """The header of a CSV export, or ``None`` if the head is not one."""
    text = sniff.text
    first_line = text.split("\n", 1)[0].rstrip("\r")
    if "," not in first_line or first_line.lstrip()[:1] in ("{", "["):
        return None
    try:
        cells = next(csv.reader([first_line]))
    except (csv.Error, StopIteration):
        return None
    known = {column for table in TABLES.values() for column in table.columns}
    sources: dict[str, list[str]] = {}
    for cell in cells:
        name = cell.strip()
        zone = _ZONE.match(name)
        if zone:
            if zone["zone"].strip().upper() != "UTC":
                raise ExportError(
                    f"column {cell!r} holds times in {zone['zone']!r}, which cannot be "
                    "placed in UTC: export the query with times in UTC",
                    source=Location(file=str(sniff.path), line=1),
                )
            name = zone["name"]
        for suffix in ("_dynamic", "_string"):
            if name.endswith(suffix) and name[: -len(suffix)] in known:
                name = name[: -len(suffix)]
        sources.setdefault(name, []).append(cell)
    if not set(sources) & known:
        return None
    return CsvHeader(tuple(cells), {name: tuple(found) for name, found in sources.items()})


class LogAnalyticsCsv:
    """The portal's "Export to CSV" of a query over one table."""

    name = "log-analytics-csv"

    def reads(self, sniff: Sniff, head: JsonHead | None, options: ReadOptions) -> FileRead | None:
        if head is not None:
            return None
        header = csv_header(sniff)
        if header is None:
            return None
        if len(set(header.cells)) != len(header.cells):
            raise ExportError(
                "the header names a column twice", source=Location(str(sniff.path), 1)
            )
        names = set(header.sources)
        table, route = _routed_by_type(sniff, names, "it is a CSV export")
        listed = ", ".join(f"{sql_string(cell)}: 'VARCHAR'" for cell in header.cells)
        rejects = ""
        if options.skip_bad_records:
            table_name = sql_string(options.rejects_table)
            rejects = (
                ", ignore_errors=true, store_rejects=true, "
                f"rejects_table={table_name}, "
                f"rejects_scan={sql_string(options.rejects_table + '_scan')}"
            )
        reader = (
            f"read_csv({sql_string(str(sniff.path))}, header=true, auto_detect=false, "
            "delim=',', quote='\"', escape='\"', "
            f"compression={sql_string('gzip' if sniff.compressed else 'none')}, "
            f"columns={{{listed}}}, max_line_size={LINE_OBJECT_BYTES}{rejects})"
        )

        def source(column: str) -> Raw | None:
            cells = header.sources.get(column)
            if not cells:
                return None
            if len(cells) == 1:
                return Raw(f"src.{quote_identifier(cells[0])}")
            return Raw(
                "coalesce("
                + ", ".join(f"nullif(src.{quote_identifier(c)}, '')" for c in cells)
                + ")"
            )

        def columns_for(table: TableSchema) -> dict[str, Raw]:
            found = {column: source(column) for column in table.columns}
            return {column: raw for column, raw in found.items() if raw is not None}

        type_column = source("Type") if route else None
        return FileRead(
            shape=self.name,
            framing="csv",
            relation=f"SELECT * FROM {reader}",
            columns_for=columns_for,
            table=table,
            route=type_column.sql if type_column is not None else None,
            lines=True,
        )


SHAPES: list[Shape] = [
    LogAnalyticsCsv(),
    LogAnalyticsApi(),
    DefenderHuntingResults(),
    DiagnosticRecords(),
    GraphSignIns(),
    LogAnalyticsJson(),
]


def detect(sniffed: Sniff, options: ReadOptions | None = None) -> FileRead:
    """How to read the file, or an error saying what it looks like instead."""
    chosen = options or ReadOptions()
    lenient = chosen.skip_bad_records
    head = json_head(sniffed, lenient_lines=lenient)
    while head is not None and head.first is None and head.document is None:
        # The first record is longer than the head: look at more of the file.
        larger = _resniff(sniffed)
        if larger is None:
            break
        sniffed, head = larger, json_head(larger, lenient_lines=lenient)
    for shape in SHAPES:
        read = shape.reads(sniffed, head, chosen)
        if read is not None:
            return read
    raise UnreadableExport(
        f"not an export tokenward can read: {_looks_like(sniffed, head)}",
        source=Location(file=str(sniffed.path), line=1),
    )


def _resniff(sniffed: Sniff) -> Sniff | None:
    if sniffed.complete or len(sniffed.head) >= MAX_SNIFF_BYTES:
        return None
    wanted = min(len(sniffed.head) * 16, MAX_SNIFF_BYTES)
    opener = gzip.open if sniffed.compressed else open
    with opener(sniffed.path, "rb") as handle:
        head = handle.read(wanted + 1)
    complete = len(head) <= wanted
    return Sniff(sniffed.path, head[:wanted], sniffed.compressed, complete, sniffed.size)


def _looks_like(sniffed: Sniff, head: JsonHead | None) -> str:
    if head is None:
        if sniffed.first_char in ("", "\x00"):
            return "the file is empty or binary"
        return "it is neither JSON nor a CSV whose header names Log Analytics columns"
    record = head.first or head.document or {}
    if "error" in record:
        return "it is an API error response, not exported logs"
    context = record.get("@odata.context")
    if isinstance(context, str):
        return f"it is a Graph response ({context.rsplit('#', 1)[-1]}), not exported logs"
    if {"parameters", "responses"} <= set(record):
        return "it is an API example (parameters and responses), not exported logs"
    if "requests" in record:
        return "it is a Graph $batch request, not exported logs"
    if isinstance(record.get("category"), str):
        return f"its records are of category {record['category']!r}, which has no properties"
    keys = ", ".join(sorted(record)[:8]) or "none"
    return (
        f"its records' keys ({keys}) match no table tokenward reads ({', '.join(sorted(TABLES))})"
    )


__all__ = [
    "SHAPES",
    "FileRead",
    "UnreadableExport",
    "JsonHead",
    "ReadOptions",
    "Shape",
    "Sniff",
    "detect",
    "json_head",
    "quote_identifier",
    "sniff",
    "sql_string",
]
