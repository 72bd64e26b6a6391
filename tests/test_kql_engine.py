"""Conformance of the local KQL engine on what tokenward's templates rely on.

Each test states a KQL rule as the Kusto documentation gives it and checks
that duckdb-kql, over tables from tokenward's own loader, follows it. An
engine upgrade that changes one of these fails here, not in a hunt.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import duckdb_kql
import pytest

ROWS = [
    {
        "TimeGenerated": "2024-05-01T10:00:00.1234567Z",
        "UserPrincipalName": "Alice@Contoso.com",
        "AuthenticationProtocol": "deviceCode",
        "UserAgent": "python-requests/2.31",
        "DeviceDetail": {"isCompliant": False, "isManaged": True, "operatingSystem": "Linux"},
        "LocationDetails": {"countryOrRegion": "NL", "city": "Amsterdam"},
        "ResultType": "0",
    },
    {
        "TimeGenerated": "2024-05-01T11:00:00Z",
        "UserPrincipalName": "bob@contoso.com",
        "AuthenticationProtocol": "DeviceCode",
        "UserAgent": "Mozilla/5.0",
        "DeviceDetail": {},
        "LocationDetails": None,
        "ResultType": 50199,
    },
    {
        "TimeGenerated": "2024-05-02T09:00:00Z",
        "UserPrincipalName": "carol@fabrikam.com",
        "AuthenticationProtocol": "none",
        "UserAgent": "",
        "DeviceDetail": {"isCompliant": True},
        "LocationDetails": {"countryOrRegion": "US"},
    },
]
CLICKS = [
    {
        "Timestamp": "2024-05-01T09:57:00Z",
        "AccountUpn": "alice@contoso.com",
        "Url": "https://a.workers.dev",
    },
    {
        "Timestamp": "2024-05-01T08:00:00Z",
        "AccountUpn": "ALICE@contoso.com",
        "Url": "https://old.example",
    },
    {
        "Timestamp": "2024-05-01T10:59:00Z",
        "AccountUpn": "bob@contoso.com",
        "Url": "https://b.pages.dev",
    },
]
NOW = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def con(load_tables: Any) -> Any:
    return load_tables({"SigninLogs": ROWS, "UrlClickEvents": CLICKS})


def run(con: Any, query: str) -> list[tuple[Any, ...]]:
    return duckdb_kql.kql(con, query, allow_write=False, query_now=NOW).fetchall()


def test_double_equals_is_case_sensitive(con: Any) -> None:
    assert run(con, 'SigninLogs | where AuthenticationProtocol == "deviceCode" | count') == [(1,)]


def test_tilde_equals_ignores_case(con: Any) -> None:
    assert run(con, 'SigninLogs | where AuthenticationProtocol =~ "devicecode" | count') == [(2,)]


def test_in_tilde_ignores_case_and_in_does_not(con: Any) -> None:
    users = '("alice@contoso.com", "BOB@contoso.com")'
    assert run(con, f"SigninLogs | where UserPrincipalName in~ {users} | count") == [(2,)]
    assert run(con, f"SigninLogs | where UserPrincipalName in {users} | count") == [(0,)]


def test_in_accepts_a_dynamic_array_and_an_empty_one_matches_nothing(con: Any) -> None:
    found = (
        'SigninLogs | where tolower(UserPrincipalName) in (dynamic(["alice@contoso.com"])) | count'
    )
    assert run(con, found) == [(1,)]
    empty = "SigninLogs | where array_length(dynamic([])) == 0 | count"
    assert run(con, empty) == [(3,)]


def test_has_matches_whole_terms_not_substrings(con: Any) -> None:
    assert run(con, 'SigninLogs | where UserAgent has "python" | count') == [(1,)]
    assert run(con, 'SigninLogs | where UserAgent has "pyth" | count') == [(0,)]
    assert run(con, 'SigninLogs | where UserAgent has "python-requests" | count') == [(1,)]


def test_tostring_of_dynamic_bools_is_lower_case_and_of_missing_is_empty(con: Any) -> None:
    rows = run(
        con,
        "SigninLogs | order by TimeGenerated asc "
        "| project c = tostring(DeviceDetail.isCompliant), m = tostring(DeviceDetail.isManaged)",
    )
    assert rows == [("false", "true"), ("", ""), ("true", "")]


def test_dynamic_property_access_reads_nested_values_and_nulls_become_empty(con: Any) -> None:
    rows = run(
        con,
        "SigninLogs | order by TimeGenerated asc | project tostring(LocationDetails.countryOrRegion)",
    )
    assert rows == [("NL",), ("",), ("US",)]


def test_parse_json_reads_json_text(con: Any) -> None:
    rows = run(con, 'print v = tostring(parse_json("{\\"isCompliant\\":true}").isCompliant)')
    assert rows == [("true",)]


def test_strings_missing_from_an_export_are_empty_not_null(con: Any) -> None:
    assert run(con, 'SigninLogs | where ResultType == "" | count') == [(1,)]
    assert run(con, "SigninLogs | where isempty(ResultType) | count") == [(1,)]


def test_numbers_in_a_string_column_arrive_as_their_text(con: Any) -> None:
    assert run(con, 'SigninLogs | where ResultType == "50199" | count') == [(1,)]


def test_between_on_datetimes_is_inclusive_and_keeps_microseconds(con: Any) -> None:
    query = (
        "SigninLogs | where TimeGenerated between "
        "(datetime(2024-05-01T10:00:00.123456Z) .. datetime(2024-05-01T11:00:00Z)) | count"
    )
    assert run(con, query) == [(2,)]


def test_ago_uses_the_pinned_clock(con: Any) -> None:
    assert run(con, "SigninLogs | where TimeGenerated > ago(1d) | count") == [(1,)]


def test_join_inner_on_a_computed_key_with_a_time_window(con: Any) -> None:
    query = """
        let hits = SigninLogs | where AuthenticationProtocol =~ "deviceCode"
            | project Key = tolower(UserPrincipalName), HitTime = TimeGenerated;
        UrlClickEvents
        | extend Key = tolower(AccountUpn)
        | join kind=inner hits on Key
        | where Timestamp between ((HitTime - 60m) .. (HitTime + 5m))
        | project Key, Url
        | order by Key asc
    """
    assert run(con, query) == [
        ("alice@contoso.com", "https://a.workers.dev"),
        ("bob@contoso.com", "https://b.pages.dev"),
    ]


def test_default_join_is_innerunique(con: Any) -> None:
    query = """
        let left = datatable(K: string, L: int)["a", 1, "a", 2];
        let right = datatable(K: string, R: int)["a", 10];
        left | join right on K | count
    """
    # innerunique keeps one left row per key before joining.
    assert run(con, query) == [(1,)]


def test_union_with_an_empty_datatable_adds_missing_optional_columns(con: Any) -> None:
    query = """
        union SigninLogs, (datatable(NotInTheTable: string)[])
        | project v = tostring(NotInTheTable) | distinct v
    """
    assert run(con, query) == [("",)]


def test_summarize_make_set_and_countif(con: Any) -> None:
    rows = run(
        con,
        'SigninLogs | summarize n = countif(AuthenticationProtocol =~ "deviceCode"), '
        "countries = make_set(tostring(LocationDetails.countryOrRegion), 10)",
    )
    assert rows[0][0] == 2
    assert sorted(json.loads(rows[0][1])) == ["", "NL", "US"]


def test_writes_are_refused(con: Any) -> None:
    with pytest.raises(duckdb_kql.KqlUnsupportedError, match="writes are disabled"):
        run(con, ".set-or-replace Stolen <| SigninLogs")


def test_functions_the_engine_lacks_fail_loudly_not_wrongly(con: Any) -> None:
    with pytest.raises(duckdb_kql.KqlUnsupportedError):
        run(con, "SigninLogs | extend x = column_ifexists('Nope', '')")
