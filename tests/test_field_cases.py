"""Field cases B21, B23, B25, B27 and B29 (``../shared/cases/field-cases.md``).

Each case's input goes through the real path: written as an export, loaded,
hunted and correlated by the rendered playbook queries, and read into models
by :mod:`playbooks.rows` and :mod:`playbooks.correlation`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from playbooks.audit import AuditLog
from playbooks.models import FlowEvidence, SignInOutcome, TriState
from playbooks.rows import protocol_kind, sign_in_from_row
from playbooks.settings import Settings
from tests import export_shapes as shapes
from tests.conftest import hunt_rows, load_directory, run_playbook

START = datetime(2025, 3, 1, tzinfo=UTC)
END = START + timedelta(days=1)
USER_ID = "aaaaaaaa-0000-4000-8000-000000000002"


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """A folder of its own for the export (the audit database sits in tmp_path)."""
    folder = tmp_path / "export"
    folder.mkdir()
    return folder


def sign_in(**columns: Any) -> dict[str, Any]:
    return {
        "TimeGenerated": "2025-03-01T09:21:10Z",
        "UserPrincipalName": "Megan.Bowen@contoso.com",
        "UserId": USER_ID,
        "IPAddress": "198.51.100.44",
        "AppId": "29d9ed98-a469-4536-ade2-f981bc1d605e",
        **columns,
    }


# -- B21: telling a device code sign-in apart ---------------------------------------

B21_ROWS = [
    sign_in(Id="r1", SessionId="s1", AuthenticationProtocol="deviceCode", ResultType="0"),
    sign_in(
        Id="r2",
        SessionId="s2",
        AuthenticationProtocol="none",
        OriginalTransferMethod="deviceCodeFlow",
        ResultType=0,
    ),
    sign_in(
        Id="r3",
        SessionId="s3",
        AuthenticationProtocol="none",
        OriginalTransferMethod="none",
        ResultType="0",
    ),
    sign_in(Id="r4", SessionId="s4", AuthenticationProtocol="deviceCode", ResultType="50199"),
    sign_in(
        Id="r5",
        SessionId="s5",
        AuthenticationProtocol="unknownFutureValue",
        ResultType="0",
    ),
]


@pytest.mark.parametrize("shape", sorted(shapes.SIGN_IN_SHAPES))
def test_b21_device_code_rows_are_told_apart_by_protocol_or_transfer_method(
    tmp_path: Path, shape: str
) -> None:
    shapes.SIGN_IN_SHAPES[shape](tmp_path, "AADNonInteractiveUserSignInLogs", B21_ROWS)
    con, _ = load_directory(tmp_path)
    found = {row["Id"]: sign_in_from_row(row) for row in hunt_rows(con, START, END)}

    assert sorted(found) == ["r1", "r2", "r4"]
    r1, r2, r4 = found["r1"], found["r2"], found["r4"]
    assert r1 and (r1.flow_evidence, r1.outcome, r1.result_type) == (
        FlowEvidence.PROTOCOL,
        SignInOutcome.SUCCESS,
        0,
    )
    # Token reuse: only the transfer method names the flow; 0 arrived as an int.
    assert r2 and (r2.flow_evidence, r2.outcome, r2.result_type) == (
        FlowEvidence.TRANSFER_METHOD,
        SignInOutcome.SUCCESS,
        0,
    )
    # 50199 is the interrupt while the code is typed: weak evidence, not success.
    assert r4 and (r4.outcome, r4.result_type) == (SignInOutcome.INTERRUPTED, 50199)


def test_b21_an_unknown_protocol_is_other_and_no_error() -> None:
    assert protocol_kind("unknownFutureValue") == "other"
    assert protocol_kind("brandNewProtocol") == "other"
    assert [
        protocol_kind(value)
        for value in (
            "deviceCode",
            "DeviceCode",
            "none",
            "oAuth2",
            "ropc",
            "saml20",
            "wsFederation",
            "",
        )
    ] == [
        "deviceCode",
        "deviceCode",
        "none",
        "oAuth2",
        "ropc",
        "saml20",
        "wsFederation",
        "none",
    ]
    assert sign_in_from_row({**B21_ROWS[4], "TimeGenerated": START}) is None


# -- B23: device and risk fields ------------------------------------------------------

COMPLIANCE = [True, False, "", None, "True", "false", "NO", "missing"]
EXPECTED_COMPLIANCE = [
    TriState.TRUE,
    TriState.FALSE,
    TriState.UNKNOWN,
    TriState.UNKNOWN,
    TriState.TRUE,
    TriState.FALSE,
    TriState.UNKNOWN,
    TriState.UNKNOWN,
]


@pytest.mark.parametrize("table", shapes.SIGN_IN_TABLES)
@pytest.mark.parametrize("shape", sorted(shapes.SIGN_IN_SHAPES))
def test_b23_compliance_has_three_states_from_every_spelling(
    tmp_path: Path, shape: str, table: str
) -> None:
    rows = []
    for number, value in enumerate(COMPLIANCE):
        device = {"operatingSystem": "Linux"} if value == "missing" else {"isCompliant": value}
        rows.append(
            sign_in(
                Id=f"c{number}",
                SessionId=f"c{number}",
                AuthenticationProtocol="deviceCode",
                DeviceDetail=device,
            )
        )
    shapes.SIGN_IN_SHAPES[shape](tmp_path, table, rows)
    con, _ = load_directory(tmp_path)
    found = {row["Id"]: sign_in_from_row(row) for row in hunt_rows(con, START, END)}
    states = [found[f"c{number}"].is_compliant for number in range(len(COMPLIANCE))]  # type: ignore[union-attr]
    assert states == EXPECTED_COMPLIANCE


def test_b23_risk_event_lists_merge_and_a_tor_exit_scores(
    export: Path, audit_log: AuditLog
) -> None:
    row = sign_in(
        Id="k1",
        SessionId="k1",
        AuthenticationProtocol="deviceCode",
        ResultType="0",
        IPAddress="198.51.100.20",
        RiskEventTypes='["anonymizedIPAddress"]',
        RiskEventTypes_V2='["anonymizedIPAddress","riskyIPAddress"]',
    )
    shapes.diagnostic_records(export, "SigninLogs", [row])
    con, _ = load_directory(export)
    settings = Settings.model_validate({"threat_intel": {"ip_ranges": ["198.51.100.20"]}})
    report = run_playbook(con, audit_log, START, END, settings=settings)

    (finding,) = report.findings
    assert finding.primary.risk_event_types == ("anonymizedIPAddress", "riskyIPAddress")
    signals = {reason.signal for reason in finding.reasons}
    assert {"anonymous_ip_risk", "threat_intel_ip"} <= signals
    scored = [
        record
        for record in audit_log.records(run_id=report.run_id)
        if record.kind == "finding.scored"
    ]
    assert any(reason["signal"] == "threat_intel_ip" for reason in scored[0].data["reasons"])


# -- B25: Safe Links click semantics ---------------------------------------------------

B25_CLICKS = [
    {
        "Timestamp": "2025-03-01T09:00:00Z",
        "ReportId": "r-1",
        "ActionType": "ClickBlocked",
        "IsClickedThrough": False,
        "Url": "https://lure.fabrikam.example/join",
        "UrlChain": '["https://lure.fabrikam.example/join"]',
        "Workload": "Email",
        "NetworkMessageId": "nm-1",
        "AccountUpn": "Megan.Bowen@contoso.com",
    },
    {
        "Timestamp": "2025-03-01T09:00:20Z",
        "ReportId": "r-1",
        "ActionType": "ClickAllowed",
        "IsClickedThrough": "1",
        "Url": "https://lure.fabrikam.example/join",
        "UrlChain": '["https://lure.fabrikam.example/join","https://microsoft.com/devicelogin"]',
        "Workload": "Email",
        "NetworkMessageId": "nm-1",
        "AccountUpn": "megan.bowen@contoso.com",
    },
    {
        "Timestamp": "2025-03-01T09:05:00Z",
        "ReportId": "r-2",
        "ActionType": "UrlScanInProgress",
        "IsClickedThrough": 0,
        "Url": "https://microsoft.com/devicelogin/",
        "Workload": "Teams",
        "NetworkMessageId": "",
        "AccountUpn": "megan.bowen@contoso.com",
    },
]


@pytest.mark.parametrize("shape", ["log-analytics-json", "defender-streaming-records"])
def test_b25_clicks_group_by_report_id_and_count_when_reached(
    export: Path, audit_log: AuditLog, shape: str
) -> None:
    shapes.log_analytics_json(
        export,
        "SigninLogs",
        [
            sign_in(
                Id="s1",
                SessionId="s1",
                AuthenticationProtocol="deviceCode",
                ResultType="0",
            )
        ],
    )
    if shape == "log-analytics-json":
        shapes.log_analytics_json(export, "UrlClickEvents", B25_CLICKS)
    else:
        shapes.defender_streaming(export, {"UrlClickEvents": B25_CLICKS}, envelope=True)
    con, _ = load_directory(export)
    report = run_playbook(con, audit_log, START, END)

    (finding,) = report.findings
    first, second = finding.evidence.url_clicks
    assert (
        first.report_id,
        first.reached,
        first.is_clicked_through,
        first.network_message_id,
    ) == ("r-1", True, True, "nm-1")
    assert "https://microsoft.com/devicelogin" in first.url_chain
    assert first.action_types == ("ClickAllowed", "ClickBlocked")
    assert (
        second.report_id,
        second.reached,
        second.workload,
        second.network_message_id,
    ) == ("r-2", True, "Teams", "")
    assert finding.evidence.emails == ()
    signals = {reason.signal for reason in finding.reasons}
    # devicelogin/ with its trailing slash still matches the device login page.
    assert {
        "url_click_before",
        "click_to_device_login",
        "clicked_through_warning",
    } <= signals


@pytest.mark.parametrize(
    ("spelled", "expected"),
    [
        (True, True),
        (1, True),
        ("1", True),
        ("true", True),
        (False, False),
        (0, False),
        ("0", False),
    ],
)
def test_b25_clicked_through_reads_from_bool_int_or_string(
    tmp_path: Path, spelled: object, expected: bool
) -> None:
    click = {**B25_CLICKS[0], "IsClickedThrough": spelled}
    shapes.defender_streaming(tmp_path, {"UrlClickEvents": [click]})
    con, _ = load_directory(tmp_path)
    assert con.execute("SELECT IsClickedThrough FROM UrlClickEvents").fetchone() == (expected,)


# -- B27: UPN, alias and case across tables ---------------------------------------------


def test_b27_mail_to_an_alias_joins_through_the_click_and_says_so(
    export: Path, audit_log: AuditLog
) -> None:
    shapes.diagnostic_records(
        export,
        "SigninLogs",
        [
            sign_in(
                Id="s1",
                SessionId="s1",
                AuthenticationProtocol="deviceCode",
                ResultType="0",
            )
        ],
    )
    mail = {
        "Timestamp": "2025-03-01T08:55:00Z",
        "RecipientEmailAddress": "mbowen@fabrikam.com",
        "NetworkMessageId": "nm-1",
        "SenderFromAddress": "it@lure.example",
        "Subject": "Verify",
    }
    click = {
        "Timestamp": "2025-03-01T09:00:00Z",
        "AccountUpn": "MEGAN.BOWEN@contoso.com",
        "NetworkMessageId": "nm-1",
        "Url": "https://lure.example/",
        "ActionType": "ClickAllowed",
        "ReportId": "r-1",
    }
    shapes.defender_streaming(export, {"EmailEvents": [mail], "UrlClickEvents": [click]})
    con, _ = load_directory(export)
    report = run_playbook(con, audit_log, START, END)

    (finding,) = report.findings
    (email,) = finding.evidence.emails
    (linked,) = finding.evidence.url_clicks
    assert (email.recipient_email_address, email.joined_by) == (
        "mbowen@fabrikam.com",
        "network_message_id",
    )
    assert (linked.account_upn, linked.joined_by) == ("MEGAN.BOWEN@contoso.com", "upn")


def test_b27_mail_joins_by_object_id_when_the_address_differs(
    export: Path, audit_log: AuditLog
) -> None:
    shapes.log_analytics_json(
        export,
        "SigninLogs",
        [
            sign_in(
                Id="s1",
                SessionId="s1",
                AuthenticationProtocol="deviceCode",
                ResultType="0",
            )
        ],
    )
    mail = {
        "Timestamp": "2025-03-01T08:55:00Z",
        "RecipientEmailAddress": "mbowen@fabrikam.com",
        "RecipientObjectId": USER_ID.upper(),
        "NetworkMessageId": "nm-2",
    }
    same = {
        "Timestamp": "2025-03-01T08:56:00Z",
        "RecipientEmailAddress": "MEGAN.BOWEN@CONTOSO.COM",
        "RecipientObjectId": USER_ID,
        "NetworkMessageId": "nm-3",
    }
    shapes.portal_csv(export, "EmailEvents", [mail, same])
    con, _ = load_directory(export)
    report = run_playbook(con, audit_log, START, END)

    (finding,) = report.findings
    joined = {email.network_message_id: email.joined_by for email in finding.evidence.emails}
    # The address is the stronger path where both match; the object id finds the alias.
    assert joined == {"nm-2": "object_id", "nm-3": "upn"}


# -- B29: timestamp formats ----------------------------------------------------------------

B29_TIMES = [
    "2024-06-21T01:06:41.7433333Z",
    "2024-06-21T01:06:41Z",
    "2024-06-21T01:06:41.743+00:00",
    "2024-06-21T03:06:41.743+02:00",
    "6/21/2024 1:06:41 AM",
    "2024-06-21 01:06:41",
]
B29_INSTANT = datetime(2024, 6, 21, 1, 6, 41, tzinfo=UTC)


def _b29_rows() -> list[dict[str, Any]]:
    return [
        {
            "TimeGenerated": value,
            "UserPrincipalName": f"u{n}@contoso.com",
            "Id": f"t{n}",
        }
        for n, value in enumerate(B29_TIMES)
    ]


def _write_raw(tmp_path: Path, shape: str, rows: list[dict[str, Any]]) -> None:
    # The raw strings go in as they are: the writers would reformat them.
    if shape == "log-analytics-json":
        shapes.log_analytics_json(tmp_path, "SigninLogs", rows)
    elif shape == "log-analytics-api":
        shapes.log_analytics_api(tmp_path, "SigninLogs", rows)
    elif shape == "log-analytics-csv":
        body = "TimeGenerated [UTC],UserPrincipalName,Id\n" + "".join(
            f'"{r["TimeGenerated"]}",{r["UserPrincipalName"]},{r["Id"]}\n' for r in rows
        )
        (tmp_path / "SigninLogs.csv").write_text(body)
    elif shape == "entra-diagnostic-records":
        records = [
            {
                "time": r["TimeGenerated"],
                "category": "SignInLogs",
                "properties": {
                    "userPrincipalName": r["UserPrincipalName"],
                    "id": r["Id"],
                },
            }
            for r in rows
        ]
        (tmp_path / "PT1H.json").write_text(json.dumps({"records": records}))
    elif shape == "graph-sign-ins":
        value = [
            {
                "createdDateTime": r["TimeGenerated"],
                "userPrincipalName": r["UserPrincipalName"],
                "id": r["Id"],
            }
            for r in rows
        ]
        (tmp_path / "signins.json").write_text(json.dumps({"value": value}))
    else:
        mail = [
            {
                "Timestamp": r["TimeGenerated"],
                "RecipientEmailAddress": r["UserPrincipalName"],
            }
            for r in rows
        ]
        shapes.defender_streaming(tmp_path, {"EmailEvents": mail})


@pytest.mark.parametrize("shape", [*sorted(shapes.SIGN_IN_SHAPES), "defender-streaming-records"])
def test_b29_every_time_format_loads_as_the_same_utc_instant_in_every_shape(
    tmp_path: Path, shape: str
) -> None:
    _write_raw(tmp_path, shape, _b29_rows())
    con, summary = load_directory(tmp_path)
    assert summary.files[0].shape == shape
    table, column = (
        ("EmailEvents", "Timestamp")
        if shape.startswith("defender")
        else ("SigninLogs", "TimeGenerated")
    )
    times = [value for (value,) in con.execute(f"SELECT {column} FROM {table}").fetchall()]
    assert len(times) == len(B29_TIMES)
    assert all(
        value.tzinfo is not None and abs(value - B29_INSTANT) < timedelta(seconds=1)
        for value in times
    )


def test_b29_times_without_a_zone_are_taken_as_utc_and_said_so(tmp_path: Path) -> None:
    rows = [{"TimeGenerated": "2024-06-21 01:06:41", "UserPrincipalName": "a@contoso.com"}]
    shapes.log_analytics_json(tmp_path, "SigninLogs", rows)
    con, summary = load_directory(tmp_path)
    assert con.execute("SELECT TimeGenerated FROM SigninLogs").fetchone() == (B29_INSTANT,)
    assert (
        "SigninLogs.jsonl: times such as TimeGenerated '2024-06-21 01:06:41' "
        "carry no zone and were taken as UTC"
    ) in summary.warnings
