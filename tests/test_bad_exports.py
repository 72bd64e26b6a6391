"""Bad input stops the load naming the file and line, or is left out and counted.

Never a silent wrong load: either the load stops with the reason, or, with
``skip_bad_records``, the bad records are left out and the summary says how
many and why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.exports.shapes import UnreadableExport
from playbooks.errors import ExportError
from tests.conftest import load_directory

GOOD = {
    "TimeGenerated": "2026-01-15T09:24:58Z",
    "UserPrincipalName": "a@contoso.com",
    "AuthenticationProtocol": "deviceCode",
    "IsInteractive": True,
}
# Enough good lines that the bad one lies beyond what the loader sniffs, so
# DuckDB's reader, not the sniffer, meets it.
PADDING = 2000


def lines(path: Path, records: list[str]) -> Path:
    path.write_text("\n".join(records) + "\n", encoding="utf-8")
    return path


def good_lines(count: int = PADDING) -> list[str]:
    return [json.dumps(GOOD)] * count


def test_a_truncated_json_line_deep_in_a_file_names_its_line(tmp_path: Path) -> None:
    lines(
        tmp_path / "SigninLogs.jsonl",
        [*good_lines(), '{"TimeGenerated": "2026-01-15', *good_lines(3)],
    )
    with pytest.raises(ExportError, match=rf"SigninLogs.jsonl:{PADDING + 1}: .*not valid JSON"):
        load_directory(tmp_path)


def test_a_csv_with_a_broken_quote_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "SigninLogs.csv").write_text(
        "TimeGenerated [UTC],UserPrincipalName,AuthenticationProtocol\n"
        '"1/15/2026, 9:24:58.000 AM",a@contoso.com,deviceCode\n'
        '"1/15/2026, 9:25:58.000 AM","b@contoso.com,deviceCode\n'
    )
    with pytest.raises(
        ExportError,
        match=r"SigninLogs.csv:3: cannot load it as SigninLogs: .*unterminated quote",
    ):
        load_directory(tmp_path)


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        (
            "TimeGenerated",
            "last tuesday",
            "column TimeGenerated holds last tuesday, which is not a time",
        ),
        ("TimeGenerated", "13/01/2026 09:24:58", ".*, which is not a time"),
        (
            "IsInteractive",
            "maybe",
            "column IsInteractive holds maybe, which is not a bool",
        ),
        (
            "DurationMs",
            "12 ms",
            "column DurationMs holds 12 ms, which is not an integer",
        ),
        (
            "DeviceDetail",
            '{"isCompliant": tru',
            "column DeviceDetail holds .*, which is not JSON",
        ),
    ],
)
def test_a_wrong_type_in_a_column_the_hunt_uses_names_the_line_and_value(
    tmp_path: Path, column: str, value: object, expected: str
) -> None:
    lines(
        tmp_path / "SigninLogs.jsonl",
        [*good_lines(5), json.dumps({**GOOD, column: value}), *good_lines(5)],
    )
    with pytest.raises(
        ExportError,
        match=rf"SigninLogs.jsonl:6: cannot load it as SigninLogs: {expected}",
    ):
        load_directory(tmp_path)


def test_a_record_without_its_time_is_refused(tmp_path: Path) -> None:
    lines(
        tmp_path / "SigninLogs.jsonl",
        [json.dumps({"UserPrincipalName": "a@contoso.com"})],
    )
    with pytest.raises(ExportError, match="a record has no TimeGenerated"):
        load_directory(tmp_path)


def test_a_file_in_no_known_shape_is_refused_at_its_first_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("incident notes\nnothing to load\n")
    with pytest.raises(UnreadableExport, match=r"notes.txt:1: not an export tokenward can read"):
        load_directory(tmp_path)


def test_a_file_holding_only_tables_tokenward_does_not_read_is_refused(
    tmp_path: Path,
) -> None:
    record = {
        "time": "2026-01-15T09:00:00Z",
        "category": "ServicePrincipalSignInLogs",
        "properties": {"appId": "x"},
    }
    lines(tmp_path / "PT1H.json", [json.dumps(record)] * 2)
    with pytest.raises(
        UnreadableExport,
        match=r"holds only records of tables tokenward does not read: ServicePrincipalSignInLogs \(2\)",
    ):
        load_directory(tmp_path)


def test_skipping_leaves_out_bad_lines_and_counts_them(tmp_path: Path) -> None:
    lines(
        tmp_path / "SigninLogs.jsonl",
        [
            *good_lines(3),
            '{"TimeGenerated": "2026-01-15',
            json.dumps({**GOOD, "IsInteractive": "maybe"}),
            json.dumps({**GOOD, "TimeGenerated": "last tuesday"}),
            *good_lines(2),
        ],
    )
    con, summary = load_directory(tmp_path, skip_bad_records=True)
    assert summary.rows == {"SigninLogs": 5}
    assert summary.bad_records == 3
    assert con.execute("SELECT count(*) FROM SigninLogs").fetchone() == (5,)
    assert any("3 bad record(s) were left out" in warning for warning in summary.warnings)
    (item,) = summary.files
    assert item.bad_records == 3 and item.problem


def test_a_skipped_line_that_is_not_json_is_named_by_its_line(tmp_path: Path) -> None:
    lines(tmp_path / "SigninLogs.jsonl", [*good_lines(2), '{"TimeGenerated": ', *good_lines(1)])

    _, summary = load_directory(tmp_path, skip_bad_records=True)

    assert summary.rows == {"SigninLogs": 3}
    (item,) = summary.files
    assert item.bad_records == 1
    assert item.problem == "line 3 is not valid JSON"


def test_skipping_leaves_out_a_broken_csv_row_and_counts_it(tmp_path: Path) -> None:
    (tmp_path / "SigninLogs.csv").write_text(
        "TimeGenerated [UTC],UserPrincipalName,IsInteractive\n"
        '"1/15/2026, 9:24:58.000 AM",a@contoso.com,TRUE\n'
        '"1/15/2026, 9:25:58.000 AM",b@contoso.com,maybe\n'
        '"1/15/2026, 9:26:58.000 AM",c@contoso.com,FALSE,extra\n'
        '"1/15/2026, 9:27:58.000 AM",d@contoso.com,FALSE\n'
    )
    _, summary = load_directory(tmp_path, skip_bad_records=True)
    assert summary.rows == {"SigninLogs": 2}
    assert summary.bad_records == 2


def test_skipping_leaves_out_a_file_in_no_known_shape_and_names_it(
    tmp_path: Path,
) -> None:
    lines(tmp_path / "SigninLogs.jsonl", good_lines(2))
    (tmp_path / "notes.txt").write_text("incident notes\n")
    _, summary = load_directory(tmp_path, skip_bad_records=True)
    assert summary.rows == {"SigninLogs": 2}
    (left_out,) = summary.skipped_files
    assert "notes.txt:1: not an export tokenward can read" in left_out
    assert any(warning.startswith("left out ") for warning in summary.warnings)


def test_skipping_counts_records_that_name_no_table(tmp_path: Path) -> None:
    record = {
        "time": "2026-01-15T09:00:00Z",
        "category": "SignInLogs",
        "properties": {"userPrincipalName": "a@contoso.com"},
    }
    lines(tmp_path / "PT1H.json", [json.dumps(record), "not json", json.dumps(record)])
    _, summary = load_directory(tmp_path, skip_bad_records=True)
    assert summary.rows == {"SigninLogs": 2}
    assert summary.bad_records == 1
