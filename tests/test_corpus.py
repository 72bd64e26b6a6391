"""The public corpus beside the project: real exports load as ``INDEX.md`` says.

Skipped, with the reason, where ``../shared/corpus`` is not there (a plain
clone of the repository).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.exports.shapes import UnreadableExport
from playbooks.errors import ExportError
from tests import export_shapes as shapes
from tests.conftest import CORPUS, hunt_rows, load_directory, requires_corpus

pytestmark = requires_corpus()

# file → (shape, rows per table loaded, records of unread tables skipped)
EXPORTS: dict[str, tuple[str, dict[str, int], dict[str, int]]] = {
    "elastic-integrations-azure-signinlogs/test-signinlogs-raw.log": (
        "entra-diagnostic-records",
        {"SigninLogs": 1, "AADNonInteractiveUserSignInLogs": 1},
        {
            "ServicePrincipalSignInLogs": 1,
            "MicrosoftServicePrincipalSignInLogs": 1,
            "ManagedIdentitySignInLogs": 1,
        },
    ),
    "elastic-integrations-azure-signinlogs/test-signinlogs-sample.log": (
        "entra-diagnostic-records",
        {"SigninLogs": 2},
        {},
    ),
    "elastic-integrations-azure-signinlogs/test-non-interactive-user-sample.log": (
        "entra-diagnostic-records",
        {"AADNonInteractiveUserSignInLogs": 6},
        {},
    ),
    "elastic-integrations-azure-signinlogs/test-non-interactive-user-signin.log": (
        "entra-diagnostic-records",
        {"AADNonInteractiveUserSignInLogs": 1},
        {},
    ),
    "elastic-integrations-m365_defender/test-email.log": (
        "defender-streaming-records",
        {"EmailEvents": 1, "EmailUrlInfo": 1, "UrlClickEvents": 1},
        {
            "AdvancedHunting-EmailAttachmentInfo": 1,
            "AdvancedHunting-EmailPostDeliveryEvents": 1,
        },
    ),
    "azure-sentinel-training-lab/sign-in_adelete.csv": (
        "log-analytics-csv",
        {"SigninLogs": 4},
        {},
    ),
}
GRAPH_SIGN_INS = "msgraph-docs/signin-list.v1.0.example1.response.json"
# API bodies and examples that are not logs: each is refused, saying what it is.
NOT_EXPORTS = {
    "azure-rest-api-specs-securityinsights-2024-09-01/CreateIncidentComment.json": "an API example",
    "azure-rest-api-specs-securityinsights-2024-09-01/GetAllIncidentAlerts.json": "an API example",
    "azure-rest-api-specs-securityinsights-2024-09-01/GetIncidentById.json": "an API example",
    "github-issues-graph-errors/graph-429-TooManyRequests.from-microsoft-graph-docs-contrib-issue-1975.json": "an API error response",
    "msgraph-docs/errors.example-error-response.json": "an API error response",
    "msgraph-docs/json-batching.example.request.json": "a Graph $batch request",
    "msgraph-docs/riskyuser-confirmcompromised.v1.0.request.json": "match no table",
    "msgraph-docs/user-revokesigninsessions.v1.0.response.json": "a Graph response",
    "msgraph-docs/security-runhuntingquery.v1.0.example1.request.json": "match no table",
    "msgraph-docs/security-runhuntingquery.v1.0.example2.request.json": "match no table",
    # Real hunting results, but of DeviceProcessEvents, which tokenward does not read.
    "msgraph-docs/security-runhuntingquery.v1.0.example1.response.json": "Defender advanced hunting results",
    "msgraph-docs/security-runhuntingquery.v1.0.example2.response.json": "Defender advanced hunting results",
    "msgraph-docs/security-runhuntingquery.v1.0.example3-sdk-tab.response.json": "Defender advanced hunting results",
}
WHOLE_CORPUS = (datetime(2019, 1, 1, tzinfo=UTC), datetime(2023, 1, 1, tzinfo=UTC))


def copy(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "export"
    folder.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(CORPUS / name, folder / Path(name).name)
    return folder


def test_the_corpus_lists_no_file_this_test_does_not_know() -> None:
    known = set(EXPORTS) | set(NOT_EXPORTS) | {GRAPH_SIGN_INS}
    present = {
        str(path.relative_to(CORPUS))
        for path in CORPUS.rglob("*")
        if path.is_file() and path.suffix != ".md"
    }
    assert present == known


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_each_real_export_loads_its_tables_and_counts_what_it_skips(
    tmp_path: Path, name: str
) -> None:
    shape, tables, skipped = EXPORTS[name]
    _, summary = load_directory(copy(tmp_path, name))
    (item,) = summary.files
    assert (item.shape, item.tables, item.skipped) == (shape, tables, skipped)


def test_real_sign_ins_load_with_their_field_types(tmp_path: Path) -> None:
    con, _ = load_directory(copy(tmp_path, *EXPORTS))
    types = dict(
        con.execute("SELECT column_name, column_type FROM (DESCRIBE SigninLogs)").fetchall()
    )
    assert (
        types["TimeGenerated"],
        types["IsInteractive"],
        types["DeviceDetail"],
        types["ResultType"],
    ) == (
        "TIMESTAMP WITH TIME ZONE",
        "BOOLEAN",
        "JSON",
        "VARCHAR",
    )

    # The portal CSV: locale date with milliseconds, TRUE, a _dynamic cell.
    csv_row = con.execute(
        "SELECT TimeGenerated, IsInteractive, ResultType, DeviceDetail->>'$.browser', "
        "Status->>'$.errorCode', Location FROM SigninLogs WHERE Category = 'SignInLogs' "
        "AND UserPrincipalName = 'adelev@m365x816222.onmicrosoft.com' ORDER BY TimeGenerated"
    ).fetchall()
    assert csv_row[0] == (
        datetime(2021, 4, 28, 14, 8, 45, 221000, tzinfo=UTC),
        True,
        "0",
        "Edge 90.0.818",
        "0",
        "IL",
    )
    assert [row[2] for row in csv_row] == ["0", "0", "16000", "50058"]

    # Diagnostic settings: the 7-digit time with an offset, errorCode as an int,
    # the interrupt's result type from the record, deviceDetail nested.
    (raw,) = con.execute(
        "SELECT CreatedDateTime, ResultType, Status->>'$.errorCode', IsInteractive, "
        "LocationDetails->>'$.countryOrRegion', IPAddress FROM SigninLogs "
        "WHERE UserPrincipalName = 'test@elastic.co'"
    ).fetchall()
    assert raw == (
        datetime(2019, 10, 18, 9, 45, 48, 72989, tzinfo=UTC),
        "50140",
        "50140",
        False,
        "FR",
        "81.2.69.144",
    )

    # The non-interactive table keeps its detail columns as JSON text.
    (compliant,) = con.execute(
        "SELECT DeviceDetail, IsInteractive FROM AADNonInteractiveUserSignInLogs "
        "WHERE UserPrincipalName = 'nikhita.sethi@cyberfortgroup.com'"
    ).fetchall()
    assert json.loads(compliant[0])["isCompliant"] is True and compliant[1] is False


def test_real_defender_streaming_records_load_with_their_field_types(
    tmp_path: Path,
) -> None:
    con, _ = load_directory(copy(tmp_path, "elastic-integrations-m365_defender/test-email.log"))
    assert con.execute(
        "SELECT Timestamp, NetworkMessageId, AuthenticationDetails, UrlCount, ThreatTypes FROM EmailEvents"
    ).fetchone() == (
        datetime(2022, 11, 22, 6, 19, 40, tzinfo=UTC),
        "a194a8a6-d97c-4be1-ae31-08dacc512345",
        '{"DKIM":"none","DMARC":"none"}',
        0,
        "",
    )
    assert con.execute(
        "SELECT IsClickedThrough, AccountUpn, NetworkMessageId FROM UrlClickEvents"
    ).fetchone() == (
        True,
        "",
        "a194a8a6-d97c-4be1-ae31-08dacc512345",
    )


def test_the_graph_doc_example_is_refused_at_its_trailing_comma(tmp_path: Path) -> None:
    with pytest.raises(ExportError) as raised:
        load_directory(copy(tmp_path, GRAPH_SIGN_INS))
    assert str(raised.value).endswith(
        "signin-list.v1.0.example1.response.json:63: not valid JSON: a trailing comma before ']'"
    )


@pytest.mark.parametrize("name", sorted(NOT_EXPORTS))
def test_api_bodies_that_are_not_logs_are_refused_saying_what_they_are(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(UnreadableExport, match=NOT_EXPORTS[name].replace("$", r"\$")):
        load_directory(copy(tmp_path, name))


def test_with_skip_bad_records_the_whole_corpus_loads_and_says_what_it_left_out(
    tmp_path: Path,
) -> None:
    shutil.copytree(CORPUS, tmp_path / "corpus", ignore=shutil.ignore_patterns("*.md"))
    con, summary = load_directory(tmp_path / "corpus", skip_bad_records=True)
    assert summary.rows == {
        "SigninLogs": 7,
        "AADNonInteractiveUserSignInLogs": 8,
        "EmailEvents": 1,
        "EmailUrlInfo": 1,
        "UrlClickEvents": 1,
    }
    # Every API body is left out whole, and so is the Graph example that is
    # not valid JSON, each with its reason.
    assert len(summary.skipped_files) == len(NOT_EXPORTS) + 1
    assert any(
        item.endswith(
            "signin-list.v1.0.example1.response.json:63: not valid JSON: a trailing comma before ']'"
        )
        for item in summary.skipped_files
    )


def test_the_hunt_over_the_real_exports_finds_no_device_code_sign_in(
    tmp_path: Path,
) -> None:
    con, _ = load_directory(copy(tmp_path, *EXPORTS))
    assert hunt_rows(con, *WHOLE_CORPUS) == []


def _fixed_graph_example() -> dict[str, Any]:
    text = (CORPUS / GRAPH_SIGN_INS).read_text()
    return json.loads(text.replace("},\n              ]", "}\n              ]"))


def test_a_real_record_set_to_device_code_is_found_in_each_of_its_shapes(
    tmp_path: Path,
) -> None:
    # Diagnostic settings: a real interactive record and a real token reuse.
    lines = (
        (CORPUS / "elastic-integrations-azure-signinlogs/test-signinlogs-sample.log")
        .read_text()
        .splitlines()
    )
    interactive = json.loads(lines[0])
    interactive["properties"]["authenticationProtocol"] = "deviceCode"
    reuse = json.loads(
        (
            CORPUS / "elastic-integrations-azure-signinlogs/test-non-interactive-user-signin.log"
        ).read_text()
    )
    reuse["properties"]["originalTransferMethod"] = "deviceCodeFlow"
    (tmp_path / "diagnostic").mkdir()
    (tmp_path / "diagnostic" / "eventhub.log").write_text(
        json.dumps(interactive) + "\n" + json.dumps(reuse) + "\n"
    )

    # Graph: the doc example with its trailing comma mended.
    graph = _fixed_graph_example()
    graph["value"][0]["authenticationProtocol"] = "deviceCode"
    (tmp_path / "graph").mkdir()
    (tmp_path / "graph" / "signins.json").write_text(json.dumps(graph, indent=4))

    # The portal CSV: the 2021 schema has no AuthenticationProtocol column; add it.
    rows = list(
        csv.reader(
            io.StringIO((CORPUS / "azure-sentinel-training-lab/sign-in_adelete.csv").read_text())
        )
    )
    rows[0].append("AuthenticationProtocol")
    rows[1].append("deviceCode")
    for row in rows[2:]:
        row.append("none")
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "sign-in_adelete.csv").write_text(out.getvalue())

    expected = {
        "diagnostic": {
            ("mpliftrelastic20210901@outlook.com", "SigninLogs", "deviceCode", ""),
            (
                "nikhita.sethi@cyberfortgroup.com",
                "AADNonInteractiveUserSignInLogs",
                "none",
                "deviceCodeFlow",
            ),
        },
        "graph": {("testaccount1@contoso.com", "SigninLogs", "", "")},
        "csv": {("adelev@m365x816222.onmicrosoft.com", "SigninLogs", "deviceCode", "")},
    }
    expected["graph"] = {("testaccount1@contoso.com", "SigninLogs", "deviceCode", "")}
    for folder, wanted in expected.items():
        con, _ = load_directory(tmp_path / folder)
        hits = hunt_rows(con, *WHOLE_CORPUS)
        assert {
            (
                row["UserPrincipalName"],
                row["SourceTable"],
                row["AuthenticationProtocol"],
                row["OriginalTransferMethod"],
            )
            for row in hits
        } == wanted, folder


def test_a_real_record_keeps_its_columns_through_every_shape(tmp_path: Path) -> None:
    # The real diagnostic record, as loaded, written out again in every shape.
    con, _ = load_directory(
        copy(tmp_path, "elastic-integrations-azure-signinlogs/test-signinlogs-sample.log")
    )
    columns = [
        "TimeGenerated",
        "Id",
        "UserPrincipalName",
        "UserId",
        "AppId",
        "AppDisplayName",
        "ResourceDisplayName",
        "IsInteractive",
        "ResultType",
        "IPAddress",
        "UserAgent",
        "CorrelationId",
        "DeviceDetail",
        "LocationDetails",
    ]
    cursor = con.execute(
        f"SELECT {', '.join(columns)} FROM SigninLogs ORDER BY TimeGenerated LIMIT 1"
    )
    values = dict(zip(columns, cursor.fetchone(), strict=True))
    record = {
        **values,
        "TimeGenerated": values["TimeGenerated"].isoformat().replace("+00:00", "Z"),
        "DeviceDetail": json.loads(values["DeviceDetail"]),
        "LocationDetails": json.loads(values["LocationDetails"]),
        "AuthenticationProtocol": "deviceCode",
    }
    window = (
        values["TimeGenerated"] - timedelta(minutes=1),
        values["TimeGenerated"] + timedelta(minutes=1),
    )
    for shape, write in shapes.SIGN_IN_SHAPES.items():
        folder = tmp_path / shape
        folder.mkdir()
        write(folder, "SigninLogs", [record])
        loaded, _ = load_directory(folder)
        (row,) = hunt_rows(loaded, *window)
        for column in (
            "Id",
            "UserPrincipalName",
            "UserId",
            "AppId",
            "IPAddress",
            "UserAgent",
            "CorrelationId",
        ):
            assert row[column] == values[column], (shape, column)
        assert (row["Country"], row["Browser"], row["OS"]) == (
            "IN",
            "Edge 97.0.1072",
            "Windows 10",
        ), shape
