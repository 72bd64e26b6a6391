"""Exported logs load into typed tables, or not at all."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb_kql
import pytest

from connectors.exports.loader import ExportLoader
from playbooks.errors import ExportError
from tests.conftest import write_table

SIGN_IN = {
    "TimeGenerated": "2026-01-15T09:24:58.1234567Z",
    "UserPrincipalName": "target.user@contoso.com",
    "AuthenticationProtocol": "deviceCode",
    "DeviceDetail": {"isCompliant": False, "isManaged": False},
    "LocationDetails": {"countryOrRegion": "NL"},
    "IsInteractive": True,
    "ResultType": 0,
}


def load(directory: Path) -> tuple[Any, Any]:
    con = duckdb_kql.connect()
    return con, ExportLoader(con).load_directory(directory)


def test_json_lines_and_json_arrays_load_into_the_same_typed_table(tmp_path: Path) -> None:
    write_table(tmp_path / "a", "SigninLogs", [SIGN_IN], lines=True)
    write_table(tmp_path / "b", "SigninLogs", [SIGN_IN], lines=False)
    for folder in ("a", "b"):
        con, summary = load(tmp_path / folder)
        assert summary.rows == {"SigninLogs": 1}
        assert summary.files[0].shape == "log-analytics-json"
        row = con.execute(
            "SELECT TimeGenerated, ResultType, IsInteractive, DeviceDetail->>'$.isCompliant', "
            "UserId FROM SigninLogs"
        ).fetchone()
        assert row == (datetime(2026, 1, 15, 9, 24, 58, 123456, tzinfo=UTC), "0", True, "false", "")


def test_dynamic_columns_that_arrive_as_json_text_become_json(tmp_path: Path) -> None:
    text_row = {
        **SIGN_IN,
        "DeviceDetail": json.dumps({"isCompliant": True}),
        "LocationDetails": '{"countryOrRegion":"US"}',
    }
    write_table(tmp_path, "SigninLogs", [text_row])
    con, _ = load(tmp_path)
    rows = duckdb_kql.kql(
        con,
        "SigninLogs | project tostring(DeviceDetail.isCompliant), tostring(LocationDetails.countryOrRegion)",
    ).fetchall()
    assert rows == [("true", "US")]


def test_a_plain_string_in_a_dynamic_column_stays_a_string(tmp_path: Path) -> None:
    write_table(tmp_path, "SigninLogs", [{**SIGN_IN, "DeviceDetail": "Windows"}])
    con, _ = load(tmp_path)
    assert con.execute("SELECT DeviceDetail FROM SigninLogs").fetchone() == ('"Windows"',)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        ("True", True),
        ("1", True),
        (1, True),
        (False, False),
        ("false", False),
        ("0", False),
        ("", None),
        (None, None),
    ],
)
def test_flags_load_from_every_spelling_exports_use(
    tmp_path: Path, value: Any, expected: bool | None
) -> None:
    write_table(
        tmp_path,
        "UrlClickEvents",
        [
            {
                "Timestamp": "2026-01-15T09:21:58Z",
                "AccountUpn": "a@contoso.com",
                "IsClickedThrough": value,
            }
        ],
    )
    con, _ = load(tmp_path)
    assert con.execute("SELECT IsClickedThrough FROM UrlClickEvents").fetchone() == (expected,)


def test_a_flag_that_is_not_a_flag_is_refused_with_the_file(tmp_path: Path) -> None:
    write_table(
        tmp_path,
        "UrlClickEvents",
        [
            {
                "Timestamp": "2026-01-15T09:21:58Z",
                "AccountUpn": "a@contoso.com",
                "IsClickedThrough": "maybe",
            }
        ],
    )
    with pytest.raises(ExportError, match=r"UrlClickEvents.jsonl.*IsClickedThrough holds maybe"):
        load(tmp_path)


def test_defender_tables_get_timestamp_from_time_generated_when_missing(tmp_path: Path) -> None:
    write_table(
        tmp_path,
        "EmailEvents",
        [{"TimeGenerated": "2026-01-15T09:15:58Z", "RecipientEmailAddress": "a@contoso.com"}],
    )
    con, _ = load(tmp_path)
    assert con.execute("SELECT Timestamp FROM EmailEvents").fetchone() == (
        datetime(2026, 1, 15, 9, 15, 58, tzinfo=UTC),
    )


def test_a_bad_timestamp_names_the_file_and_line(tmp_path: Path) -> None:
    write_table(tmp_path, "SigninLogs", [SIGN_IN, {**SIGN_IN, "TimeGenerated": "last tuesday"}])
    with pytest.raises(ExportError) as raised:
        load(tmp_path)
    assert "SigninLogs.jsonl:2" in str(raised.value)
    assert "last tuesday" in str(raised.value)


def test_a_truncated_json_line_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "SigninLogs.jsonl").write_text(
        json.dumps(SIGN_IN) + "\n" + '{"TimeGenerated": "2026-01-15T09:24:58Z", "User\n'
    )
    with pytest.raises(ExportError, match=r"SigninLogs.jsonl:2: not valid JSON"):
        load(tmp_path)


def test_a_file_of_rows_of_no_known_table_is_refused(tmp_path: Path) -> None:
    write_table(tmp_path, "SecurityEvent", [{"TimeGenerated": "2026-01-15T09:24:58Z"}])
    with pytest.raises(
        ExportError, match="SecurityEvent.jsonl: .*neither its name nor its columns say which table"
    ):
        load(tmp_path)


def test_one_bad_file_leaves_nothing_loaded(tmp_path: Path) -> None:
    write_table(
        tmp_path,
        "EmailEvents",
        [{"Timestamp": "2026-01-15T09:15:58Z", "RecipientEmailAddress": "a@contoso.com"}],
    )
    write_table(tmp_path, "SigninLogs", [{**SIGN_IN, "TimeGenerated": "nope"}])
    con = duckdb_kql.connect()
    with pytest.raises(ExportError):
        ExportLoader(con).load_directory(tmp_path)
    assert con.execute("SELECT count(*) FROM EmailEvents").fetchone() == (0,)


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="holds no export files"):
        load(tmp_path)


def test_gzip_files_read_the_same_way(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "SigninLogs.jsonl.gz", "wt") as handle:
        handle.write(json.dumps(SIGN_IN) + "\n")
    _, summary = load(tmp_path)
    assert summary.rows == {"SigninLogs": 1}


def test_an_export_without_device_code_fields_loads_with_a_warning(tmp_path: Path) -> None:
    row = {key: value for key, value in SIGN_IN.items() if key != "AuthenticationProtocol"}
    write_table(tmp_path, "SigninLogs", [row])
    _, summary = load(tmp_path)
    assert summary.rows == {"SigninLogs": 1}
    assert "AuthenticationProtocol" in summary.empty_columns["SigninLogs"]
    assert any("cannot find device code sign-ins" in warning for warning in summary.warnings)


def test_the_non_interactive_table_keeps_detail_columns_as_json_text(tmp_path: Path) -> None:
    row = {**SIGN_IN, "DeviceDetail": json.dumps({"isCompliant": True})}
    write_table(tmp_path, "AADNonInteractiveUserSignInLogs", [row])
    con, _ = load(tmp_path)
    described = dict(
        con.execute(
            "SELECT column_name, column_type FROM (DESCRIBE AADNonInteractiveUserSignInLogs)"
        ).fetchall()
    )
    assert described["DeviceDetail"] == "VARCHAR"
    assert con.execute("SELECT DeviceDetail FROM AADNonInteractiveUserSignInLogs").fetchone() == (
        '{"isCompliant": true}',
    )


def test_a_typed_user_name_that_looks_like_json_loads_as_the_string_it_is(tmp_path: Path) -> None:
    # A failed sign-in records what was typed; an attacker must not be able to
    # stop the hunt by typing a brace.
    typed = {**SIGN_IN, "UserPrincipalName": '{"json": 1}', "ResultType": "50034"}
    write_table(tmp_path, "SigninLogs", [SIGN_IN, typed])
    con, summary = load(tmp_path)
    assert summary.rows == {"SigninLogs": 2}
    assert con.execute(
        "SELECT UserPrincipalName FROM SigninLogs ORDER BY ResultType"
    ).fetchall() == [
        ("target.user@contoso.com",),
        ('{"json": 1}',),
    ]


def test_an_object_where_a_string_belongs_loads_as_its_json_text(tmp_path: Path) -> None:
    write_table(tmp_path, "SigninLogs", [{**SIGN_IN, "UserPrincipalName": {"upn": "x"}}])
    con, _ = load(tmp_path)
    assert con.execute("SELECT UserPrincipalName FROM SigninLogs").fetchone() == ('{"upn":"x"}',)
