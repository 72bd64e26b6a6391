"""Write the same records in every export shape, for tests to load.

Records are given as Log Analytics rows (PascalCase columns, dynamic columns
nested). Each writer turns them into one shape the way the service that makes
it would: camelCase ``properties`` for diagnostic settings and Graph, the
portal's headers and date format for CSV, ``columns``/``rows`` for the API.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from connectors.exports.schemas import TABLES, Kind
from playbooks.times import parse_time

Row = dict[str, Any]

# Log Analytics column -> the camelCase property of a Graph signIn.
CAMEL = {
    "CreatedDateTime": "createdDateTime",
    "Id": "id",
    "UserPrincipalName": "userPrincipalName",
    "UserId": "userId",
    "UserDisplayName": "userDisplayName",
    "UserType": "userType",
    "HomeTenantId": "homeTenantId",
    "ResourceTenantId": "resourceTenantId",
    "AppId": "appId",
    "AppDisplayName": "appDisplayName",
    "ResourceDisplayName": "resourceDisplayName",
    "AuthenticationProtocol": "authenticationProtocol",
    "OriginalTransferMethod": "originalTransferMethod",
    "IncomingTokenType": "incomingTokenType",
    "ClientAppUsed": "clientAppUsed",
    "IsInteractive": "isInteractive",
    "IPAddress": "ipAddress",
    "UserAgent": "userAgent",
    "RiskLevelDuringSignIn": "riskLevelDuringSignIn",
    "RiskLevelAggregated": "riskLevelAggregated",
    "RiskState": "riskState",
    "RiskEventTypes": "riskEventTypes",
    "RiskEventTypes_V2": "riskEventTypes_v2",
    "ConditionalAccessStatus": "conditionalAccessStatus",
    "CorrelationId": "correlationId",
    "SessionId": "sessionId",
    "UniqueTokenIdentifier": "uniqueTokenIdentifier",
    "DeviceDetail": "deviceDetail",
    "LocationDetails": "location",
    "Status": "status",
}
CATEGORIES = {
    "SigninLogs": "SignInLogs",
    "AADNonInteractiveUserSignInLogs": "NonInteractiveUserSignInLogs",
}
SIGN_IN_TABLES = tuple(CATEGORIES)


def _json_value(value: Any) -> Any:
    """A dynamic column's value as nested JSON (JSON text is parsed)."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        return json.loads(value)
    return value


def _as_text_columns(table: str, row: Row) -> Row:
    """The row as the workspace stores it: JSON text where the column is a string."""
    schema = TABLES[table]
    out = {}
    for column, value in row.items():
        kind = schema.columns.get(column)
        if kind is Kind.STRING and isinstance(value, dict | list):
            value = json.dumps(value)
        out[column] = value
    return out


def _write(path: Path, text: str, *, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def log_analytics_json(
    directory: Path, table: str, rows: Sequence[Row], *, gz: bool = False
) -> Path:
    """JSON lines named after the table, each row carrying its ``Type``."""
    lines = [json.dumps({**_as_text_columns(table, row), "Type": table}) for row in rows]
    return _write(directory / f"{table}.jsonl", "\n".join(lines) + "\n", gz=gz)


def log_analytics_array(
    directory: Path, table: str, rows: Sequence[Row], *, gz: bool = False
) -> Path:
    """A pretty-printed JSON array named after nothing: each row's Type says."""
    body = [{**_as_text_columns(table, row), "Type": table} for row in rows]
    return _write(directory / "query-results.json", json.dumps(body, indent=2), gz=gz)


_API_TYPES = {
    Kind.DATETIME: "datetime",
    Kind.STRING: "string",
    Kind.DYNAMIC: "dynamic",
    Kind.BOOL: "bool",
    Kind.INT: "int",
    Kind.LONG: "long",
    Kind.REAL: "real",
}


def log_analytics_api(
    directory: Path, table: str, rows: Sequence[Row], *, gz: bool = False
) -> Path:
    """Query API results; dynamic values are JSON text, as the API sends them."""
    schema = TABLES[table]
    names = sorted({column for row in rows for column in row} | {"Type"})
    columns = [
        {"name": name, "type": _API_TYPES[schema.columns.get(name, Kind.STRING)]} for name in names
    ]
    values = []
    for row in rows:
        full = {**_as_text_columns(table, row), "Type": table}
        cells = []
        for name in names:
            value = full.get(name)
            if isinstance(value, dict | list):
                value = json.dumps(value)
            cells.append(value)
        values.append(cells)
    document = {"tables": [{"name": "PrimaryResult", "columns": columns, "rows": values}]}
    return _write(directory / "api-response.json", json.dumps(document), gz=gz)


def portal_time(value: str) -> str:
    """An ISO time as the portal writes it: ``4/28/2021, 2:08:45.221 PM``."""
    moment = parse_time(value).value
    hour = moment.hour % 12 or 12
    return (
        f"{moment.month}/{moment.day}/{moment.year}, {hour}:{moment:%M:%S}."
        f"{moment.microsecond // 1000:03d} {'PM' if moment.hour >= 12 else 'AM'}"
    )


def portal_csv(directory: Path, table: str, rows: Sequence[Row], *, gz: bool = False) -> Path:
    """The portal's "Export to CSV": [UTC] headers, _dynamic/_string pairs, TRUE."""
    schema = TABLES[table]
    names = sorted({column for row in rows for column in row} | {"Type"})
    headers: list[str] = []
    for name in names:
        kind = schema.columns.get(name)
        if kind is Kind.DATETIME:
            headers.append(f"{name} [UTC]")
        elif kind is Kind.DYNAMIC:
            headers.extend([f"{name}_dynamic", f"{name}_string"])
        else:
            headers.append(name)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    for row in rows:
        full = {**row, "Type": table}
        cells: list[str] = []
        for name in names:
            kind = schema.columns.get(name)
            value = full.get(name)
            if kind is Kind.DATETIME:
                cells.append(portal_time(value) if value else "")
            elif kind is Kind.DYNAMIC:
                # Pretty-printed, so the cell spans lines as in real exports.
                cells.extend(
                    [
                        json.dumps(_json_value(value), indent=2) if value is not None else "",
                        "",
                    ]
                )
            elif isinstance(value, bool):
                cells.append("TRUE" if value else "FALSE")
            elif isinstance(value, dict | list):
                cells.append(json.dumps(value, indent=2))
            else:
                cells.append("" if value is None else str(value))
        writer.writerow(cells)
    return _write(directory / f"{table}.csv", buffer.getvalue(), gz=gz)


def _camel(row: Row) -> Row:
    properties: Row = {}
    for column, value in row.items():
        name = CAMEL.get(column)
        if name is None:
            continue
        if column in (
            "DeviceDetail",
            "LocationDetails",
            "Status",
            "RiskEventTypes",
            "RiskEventTypes_V2",
        ):
            value = _json_value(value)
        properties[name] = value
    properties.setdefault("createdDateTime", row.get("TimeGenerated"))
    if "ResultType" in row:
        # Graph has no ResultType: the result is the status's error code.
        properties.setdefault("status", {"errorCode": int(row["ResultType"])})
    return properties


def diagnostic_records(
    directory: Path,
    table: str,
    rows: Sequence[Row],
    *,
    envelope: bool = False,
    gz: bool = False,
) -> Path:
    """Entra diagnostic-settings records: category, camelCase properties."""
    records = [
        {
            "time": row.get("TimeGenerated"),
            "resourceId": "/tenants/00000000-0000-0000-0000-000000000000/providers/Microsoft.aadiam",
            "operationName": "Sign-in activity",
            "category": CATEGORIES[table],
            "tenantId": "00000000-0000-0000-0000-000000000000",
            "resultType": str(row.get("ResultType", "0")),
            "resultSignature": "None",
            "callerIpAddress": row.get("IPAddress"),
            "Level": 4,
            "properties": _camel(row),
        }
        for row in rows
    ]
    if envelope:
        return _write(directory / "PT1H.json", json.dumps({"records": records}, indent=1), gz=gz)
    text = "\n".join(json.dumps(record) for record in records) + "\n"
    return _write(directory / "eventhub.log", text, gz=gz)


def graph_sign_ins(directory: Path, table: str, rows: Sequence[Row], *, gz: bool = False) -> Path:
    """Graph ``GET /auditLogs/signIns``; beta says which kind each sign-in is."""
    kind = "interactiveUser" if table == "SigninLogs" else "nonInteractiveUser"
    value = [{**_camel(row), "signInEventTypes": [kind]} for row in rows]
    document = {
        "@odata.context": "https://graph.microsoft.com/beta/$metadata#auditLogs/signIns",
        "value": value,
    }
    return _write(directory / "signins.json", json.dumps(document, indent=4), gz=gz)


Writer = Callable[..., Path]

#: Every shape a sign-in can arrive in, by the name the loader reports.
SIGN_IN_SHAPES: dict[str, Writer] = {
    "log-analytics-json": log_analytics_json,
    "log-analytics-api": log_analytics_api,
    "log-analytics-csv": portal_csv,
    "entra-diagnostic-records": diagnostic_records,
    "graph-sign-ins": graph_sign_ins,
}


def defender_streaming(
    directory: Path, tables: dict[str, Sequence[Row]], *, envelope: bool = False
) -> Path:
    """Defender XDR streaming records: AdvancedHunting-<Table>, PascalCase properties."""
    records = [
        {
            "time": row.get("Timestamp"),
            "tenantId": "00000000-0000-0000-0000-000000000000",
            "operationName": "Publish",
            "category": f"AdvancedHunting-{table}",
            "properties": row,
        }
        for table, rows in tables.items()
        for row in rows
    ]
    if envelope:
        return _write(directory / "defender.json", json.dumps({"records": records}), gz=False)
    return _write(
        directory / "defender.log",
        "\n".join(json.dumps(r) for r in records) + "\n",
        gz=False,
    )
