"""Every export shape loads into the same typed tables, detected from its content."""

from __future__ import annotations

import gzip
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.exports.shapes import UnreadableExport
from playbooks.errors import ExportError
from tests import export_shapes as shapes
from tests.conftest import hunt_rows, load_directory

START = datetime(2026, 1, 15, tzinfo=UTC)
END = START + timedelta(days=1)

# The code redeemed interactively, then its token reused non-interactively:
# the redemption row names only the flow it came from.
DEVICE_CODE = {
    "TimeGenerated": "2026-01-15T09:24:58.1234567Z",
    "Id": "si-1",
    "UserPrincipalName": "Megan.Bowen@contoso.com",
    "UserId": "aaaaaaaa-0000-4000-8000-000000000002",
    "AppId": "29d9ed98-a469-4536-ade2-f981bc1d605e",
    "AppDisplayName": "Microsoft Authentication Broker",
    "ResourceDisplayName": "Microsoft Graph",
    "AuthenticationProtocol": "deviceCode",
    "IsInteractive": True,
    "ResultType": "0",
    "IPAddress": "198.51.100.44",
    "LocationDetails": {"city": "Lagos", "countryOrRegion": "NG"},
    "DeviceDetail": {
        "operatingSystem": "Linux",
        "isCompliant": False,
        "isManaged": False,
    },
    "UserAgent": "python-requests/2.31.0",
    "CorrelationId": "c-1",
    "SessionId": "s-1",
}
REDEMPTION = {
    **DEVICE_CODE,
    "TimeGenerated": "2026-01-15T09:26:01.5000000Z",
    "Id": "si-2",
    "ResourceDisplayName": "Office 365 Exchange Online",
    "AuthenticationProtocol": "none",
    "OriginalTransferMethod": "deviceCodeFlow",
    "IsInteractive": False,
}
ORDINARY = {
    **DEVICE_CODE,
    "Id": "si-0",
    "AuthenticationProtocol": "none",
    "SessionId": "s-0",
}
RECORDS = {"SigninLogs": DEVICE_CODE, "AADNonInteractiveUserSignInLogs": REDEMPTION}


def found(directory: Path) -> list[dict[str, Any]]:
    con, _ = load_directory(directory)
    return hunt_rows(con, START, END)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("table", shapes.SIGN_IN_TABLES)
@pytest.mark.parametrize("shape", sorted(shapes.SIGN_IN_SHAPES))
def test_a_device_code_sign_in_is_found_alike_in_every_shape(
    tmp_path: Path, shape: str, table: str, gz: bool
) -> None:
    shapes.SIGN_IN_SHAPES[shape](tmp_path, table, [ORDINARY, RECORDS[table]], gz=gz)
    con, summary = load_directory(tmp_path)

    assert [(item.shape, item.tables) for item in summary.files] == [(shape, {table: 2})]
    (row,) = hunt_rows(con, START, END)
    expected = RECORDS[table]
    assert row["SourceTable"] == table
    assert row["Id"] == expected["Id"]
    assert row["UserPrincipalName"] == "Megan.Bowen@contoso.com"
    assert row["UserId"] == expected["UserId"]
    assert row["AppId"] == expected["AppId"]
    assert row["AuthenticationProtocol"] == expected["AuthenticationProtocol"]
    assert row["OriginalTransferMethod"] == expected.get("OriginalTransferMethod", "")
    assert row["IsInteractive"] is expected["IsInteractive"]
    assert row["ResultType"] == "0"
    assert row["IPAddress"] == "198.51.100.44"
    assert (row["Country"], row["City"], row["OS"]) == ("NG", "Lagos", "Linux")
    assert (row["IsCompliant"], row["IsManagedDevice"]) == ("false", "false")
    assert row["SessionId"] == "s-1"
    # The portal writes milliseconds; every other shape keeps microseconds.
    when = datetime.fromisoformat(expected["TimeGenerated"][:26] + "+00:00")
    assert abs(row["TimeGenerated"] - when) < timedelta(milliseconds=1)


def test_an_event_hub_file_loads_the_sign_in_tables_and_counts_the_others(
    tmp_path: Path,
) -> None:
    lines = [
        {
            "time": "2026-01-15T09:00:00Z",
            "category": category,
            "properties": {"userPrincipalName": "a@contoso.com"},
        }
        for category in (
            "SignInLogs",
            "NonInteractiveUserSignInLogs",
            "NonInteractiveUserSignInLogs",
            "ServicePrincipalSignInLogs",
            "ManagedIdentitySignInLogs",
            "AuditLogs",
        )
    ]
    (tmp_path / "PT1H.json").write_text("\n".join(json.dumps(line) for line in lines))
    _, summary = load_directory(tmp_path)
    (item,) = summary.files
    assert item.shape == "entra-diagnostic-records"
    assert item.tables == {"SigninLogs": 1, "AADNonInteractiveUserSignInLogs": 2}
    assert item.skipped == {
        "ServicePrincipalSignInLogs": 1,
        "ManagedIdentitySignInLogs": 1,
        "AuditLogs": 1,
    }


def test_event_hub_messages_in_the_records_envelope_load_one_per_line_or_whole(
    tmp_path: Path,
) -> None:
    record = {
        "time": "2026-01-15T09:00:00Z",
        "category": "SignInLogs",
        "properties": {"userPrincipalName": "a@contoso.com"},
    }
    messages = [{"records": [record, record]}, {"records": [record]}]
    (tmp_path / "lines").mkdir()
    (tmp_path / "lines" / "capture.json").write_text("\n".join(json.dumps(m) for m in messages))
    (tmp_path / "whole").mkdir()
    (tmp_path / "whole" / "PT1H.json").write_text(json.dumps({"records": [record] * 3}, indent=2))
    for folder, framing in (
        ("lines", "records envelope, json-lines"),
        ("whole", "records envelope, json-document"),
    ):
        _, summary = load_directory(tmp_path / folder)
        assert [(f.framing, f.tables) for f in summary.files] == [(framing, {"SigninLogs": 3})]


def test_defender_streaming_records_load_by_category_and_count_unread_tables(
    tmp_path: Path,
) -> None:
    mail = {
        "Timestamp": "2026-01-15T09:10:00Z",
        "NetworkMessageId": "nm-1",
        "RecipientEmailAddress": "a@contoso.com",
        "UrlCount": 1,
    }
    click = {
        "Timestamp": "2026-01-15T09:12:00Z",
        "AccountUpn": "a@contoso.com",
        "Url": "https://x.workers.dev/",
        "IsClickedThrough": 1,
        "IPAddress": "203.0.113.5",
    }
    attachment = {"Timestamp": "2026-01-15T09:10:00Z", "FileName": "invoice.pdf"}
    shapes.defender_streaming(
        tmp_path,
        {
            "EmailEvents": [mail],
            "UrlClickEvents": [click],
            "EmailAttachmentInfo": [attachment],
        },
    )
    con, summary = load_directory(tmp_path)
    (item,) = summary.files
    assert item.shape == "defender-streaming-records"
    assert item.tables == {"EmailEvents": 1, "UrlClickEvents": 1}
    assert item.skipped == {"AdvancedHunting-EmailAttachmentInfo": 1}
    assert con.execute(
        "SELECT IsClickedThrough, IPAddress, Type FROM UrlClickEvents"
    ).fetchone() == (
        True,
        "203.0.113.5",
        "UrlClickEvents",
    )
    assert con.execute("SELECT UrlCount FROM EmailEvents").fetchone() == (1,)


def test_log_analytics_rows_that_name_their_table_are_routed_by_type(
    tmp_path: Path,
) -> None:
    rows = [
        {**ORDINARY, "Type": "SigninLogs"},
        {
            **REDEMPTION,
            "DeviceDetail": json.dumps(REDEMPTION["DeviceDetail"]),
            "Type": "AADNonInteractiveUserSignInLogs",
        },
        {
            "TimeGenerated": "2026-01-15T09:00:00Z",
            "Type": "AADServicePrincipalSignInLogs",
        },
    ]
    (tmp_path / "union-query.json").write_text(json.dumps(rows, indent=2))
    _, summary = load_directory(tmp_path)
    (item,) = summary.files
    assert (item.shape, item.framing) == ("log-analytics-json", "json-array")
    assert item.tables == {"SigninLogs": 1, "AADNonInteractiveUserSignInLogs": 1}
    assert item.skipped == {"AADServicePrincipalSignInLogs": 1}


def test_a_file_named_after_a_table_refuses_rows_of_another(tmp_path: Path) -> None:
    shapes.log_analytics_json(tmp_path, "AADNonInteractiveUserSignInLogs", [REDEMPTION])
    (tmp_path / "AADNonInteractiveUserSignInLogs.jsonl").rename(tmp_path / "SigninLogs.jsonl")
    with pytest.raises(
        ExportError,
        match=r"SigninLogs.jsonl:1: .*Type holds AADNonInteractiveUserSignInLogs, which is not SigninLogs",
    ):
        load_directory(tmp_path)


def test_a_folder_named_after_a_table_names_the_files_in_it(tmp_path: Path) -> None:
    # Log Analytics data export writes am-<Table>/.../PT1H.json.
    folder = tmp_path / "am-EmailEvents" / "y=2026" / "m=01"
    folder.mkdir(parents=True)
    (folder / "PT1H.json").write_text(
        json.dumps(
            {
                "Timestamp": "2026-01-15T09:10:00Z",
                "RecipientEmailAddress": "a@contoso.com",
            }
        )
        + "\n"
    )
    _, summary = load_directory(tmp_path)
    assert summary.rows == {"EmailEvents": 1}


def test_a_file_naming_no_table_is_read_as_the_one_table_its_columns_fit(
    tmp_path: Path,
) -> None:
    click = {
        "Timestamp": "2026-01-15T09:12:00Z",
        "AccountUpn": "a@contoso.com",
        "Url": "https://x.example/",
        "ActionType": "ClickAllowed",
        "IsClickedThrough": False,
    }
    (tmp_path / "clicks.json").write_text(json.dumps([click]))
    _, summary = load_directory(tmp_path)
    assert summary.rows == {"UrlClickEvents": 1}


def test_graph_sign_ins_go_to_the_table_of_their_kind(tmp_path: Path) -> None:
    # v1.0 has no signInEventTypes: a sign-in that is not interactive is a
    # non-interactive row, where token reuse is recorded.
    interactive = {
        "createdDateTime": "2026-01-15T09:24:58Z",
        "userPrincipalName": "a@contoso.com",
        "isInteractive": True,
        "authenticationProtocol": "deviceCode",
    }
    reuse = {
        "createdDateTime": "2026-01-15T09:25:58Z",
        "userPrincipalName": "a@contoso.com",
        "isInteractive": False,
        "originalTransferMethod": "deviceCodeFlow",
    }
    page = {
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#auditLogs/signIns",
        "value": [interactive, reuse],
    }
    (tmp_path / "page-1.json").write_text(json.dumps(page))
    (tmp_path / "records.jsonl").write_text(
        json.dumps(interactive) + "\n" + json.dumps(reuse) + "\n"
    )
    con, summary = load_directory(tmp_path)
    assert [(f.shape, f.framing, f.tables) for f in summary.files] == [
        (
            "graph-sign-ins",
            "value envelope, json-document",
            {"SigninLogs": 1, "AADNonInteractiveUserSignInLogs": 1},
        ),
        (
            "graph-sign-ins",
            "json-lines",
            {"SigninLogs": 1, "AADNonInteractiveUserSignInLogs": 1},
        ),
    ]
    assert len(hunt_rows(con, START, END)) == 4


def test_defender_hunting_results_load_as_the_table_the_file_is_named_after(
    tmp_path: Path,
) -> None:
    results = {
        "schema": [
            {"Name": "Timestamp", "Type": "DateTime"},
            {"Name": "AccountUpn", "Type": "String"},
        ],
        "results": [
            {
                "Timestamp": "2026-01-15T09:12:00.1234567Z",
                "AccountUpn": "a@contoso.com",
                "IsClickedThrough": "True",
            }
        ],
    }
    (tmp_path / "UrlClickEvents.json").write_text(json.dumps(results))
    con, summary = load_directory(tmp_path)
    assert [(f.shape, f.tables) for f in summary.files] == [
        ("defender-hunting-results", {"UrlClickEvents": 1})
    ]
    assert con.execute("SELECT IsClickedThrough FROM UrlClickEvents").fetchone() == (True,)


def test_portal_csv_reads_utc_headers_locale_dates_pairs_and_multiline_cells(
    tmp_path: Path,
) -> None:
    shapes.portal_csv(tmp_path, "SigninLogs", [DEVICE_CODE])
    text = (tmp_path / "SigninLogs.csv").read_text()
    assert "TimeGenerated [UTC]" in text and "DeviceDetail_dynamic" in text and "\n  " in text
    assert "1/15/2026, 9:24:58.123 AM" in text and "TRUE" in text
    con, _ = load_directory(tmp_path)
    row = con.execute(
        "SELECT TimeGenerated, IsInteractive, DeviceDetail->>'$.operatingSystem', "
        "json_type(DeviceDetail) FROM SigninLogs"
    ).fetchone()
    assert row == (
        datetime(2026, 1, 15, 9, 24, 58, 123000, tzinfo=UTC),
        True,
        "Linux",
        "OBJECT",
    )


def test_portal_csv_with_a_byte_order_mark_reads_its_first_column(
    tmp_path: Path,
) -> None:
    (tmp_path / "EmailEvents.csv").write_text(
        '\ufeffTimestamp [UTC],RecipientEmailAddress\n"4/28/2021, 2:08:45.221 PM",a@contoso.com\n',
        encoding="utf-8",
    )
    con, _ = load_directory(tmp_path)
    assert con.execute("SELECT Timestamp FROM EmailEvents").fetchone() == (
        datetime(2021, 4, 28, 14, 8, 45, 221000, tzinfo=UTC),
    )


def test_portal_csv_in_local_time_is_refused_rather_than_shifted(
    tmp_path: Path,
) -> None:
    (tmp_path / "SigninLogs.csv").write_text(
        "TimeGenerated [Local Time],UserPrincipalName\n1/1/2026 9:00:00 AM,a@contoso.com\n"
    )
    with pytest.raises(
        ExportError,
        match=r"SigninLogs.csv:1: .*'Local Time'.*export the query with times in UTC",
    ):
        load_directory(tmp_path)


def test_the_api_result_names_the_shape_and_types_its_cells(tmp_path: Path) -> None:
    shapes.log_analytics_api(tmp_path, "AADNonInteractiveUserSignInLogs", [REDEMPTION], gz=True)
    con, summary = load_directory(tmp_path)
    assert [(f.shape, f.tables) for f in summary.files] == [
        ("log-analytics-api", {"AADNonInteractiveUserSignInLogs": 1})
    ]
    described = dict(
        con.execute(
            "SELECT column_name, column_type FROM (DESCRIBE AADNonInteractiveUserSignInLogs)"
        ).fetchall()
    )
    assert described["DeviceDetail"] == "VARCHAR"
    device = con.execute("SELECT DeviceDetail FROM AADNonInteractiveUserSignInLogs").fetchone()
    assert json.loads(device[0]) == REDEMPTION["DeviceDetail"]


def test_a_gzip_file_is_read_by_its_content_whatever_its_name(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "download", "wt") as handle:
        handle.write(
            json.dumps(
                {
                    "records": [
                        {
                            "time": "2026-01-15T09:00:00Z",
                            "category": "SignInLogs",
                            "properties": {"userPrincipalName": "a@contoso.com"},
                        }
                    ]
                }
            )
        )
    _, summary = load_directory(tmp_path)
    assert summary.rows == {"SigninLogs": 1}


def test_a_first_record_longer_than_the_sniffed_head_is_still_recognised(
    tmp_path: Path,
) -> None:
    record = {
        "time": "2026-01-15T09:00:00Z",
        "category": "SignInLogs",
        "properties": {
            "userPrincipalName": "a@contoso.com",
            "authenticationDetails": [{"detail": "x" * 200_000}],
        },
    }
    (tmp_path / "big.json").write_text(json.dumps(record) + "\n" + json.dumps(record) + "\n")
    _, summary = load_directory(tmp_path)
    assert summary.rows == {"SigninLogs": 2}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (
            '{"error": {"code": "TooManyRequests", "message": "Too many requests."}}',
            "an API error response",
        ),
        (
            '{"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Edm.Boolean", "value": true}',
            "a Graph response",
        ),
        (
            '{"requests": [{"id": "1", "method": "GET", "url": "/me"}]}',
            "a Graph $batch request",
        ),
        ("plain text, not an export\n", "neither JSON nor a CSV"),
        ('{"Query": "DeviceProcessEvents"}', "match no table tokenward reads"),
    ],
)
def test_what_is_not_an_export_is_refused_saying_what_it_is(
    tmp_path: Path, content: str, reason: str
) -> None:
    (tmp_path / "file.json").write_text(content)
    with pytest.raises(
        UnreadableExport,
        match=f"file.json:1: not an export tokenward can read: .*{re.escape(reason)}",
    ):
        load_directory(tmp_path)
