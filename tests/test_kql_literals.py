"""Values enter KQL only as literals that evaluate to exactly themselves."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import cast

import duckdb_kql
import pytest

from playbooks.kql import (
    ParamType,
    TrustedQuery,
    kql_datetime,
    kql_string,
    kql_string_list,
    kql_timespan,
    render,
)

HOSTILE = [
    'x" or 1==1 or "',
    "o'brien@contoso.com",
    "a\\",
    '\\"',
    '"; SigninLogs | take 1000 //',
    '" | union SecurityEvent | where "" == "',
    "ünïcödé@exämple.com",
    "😀@x.com",
    "tab\there",
    "line\nbreak",
    "cr\rlf",
    '@"verbatim"',
    'h"obfuscated"',
    "''",
    '""',
    "",
    "x' OR 1=1 --",
    "\\u0041",
    '{"json": 1}',
    "a//b",
    "/* c */",
    "| where true",
]


def test_quotes_escape_backslash_first_then_quote_and_line_breaks() -> None:
    assert kql_string('a\\"b') == '"a\\\\\\"b"'
    assert kql_string("a\nb\rc\td") == '"a\\nb\\rc\\td"'


@pytest.mark.parametrize(
    "value", ["nul\x00", "bell\x07", "esc\x1b", "del\x7f", "ls\u2028", "ps\u2029"]
)
def test_other_control_characters_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        kql_string(value)


def test_a_string_literal_needs_a_string() -> None:
    with pytest.raises(TypeError):
        kql_string(cast(str, 5))


def test_lists_are_dynamic_arrays_and_may_be_empty() -> None:
    assert kql_string_list(["a", 'b"']) == 'dynamic(["a", "b\\""])'
    assert kql_string_list([]) == "dynamic([])"


def test_datetimes_are_utc_and_naive_ones_are_refused() -> None:
    plus_two = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert kql_datetime(plus_two) == "datetime(2024-05-01T10:00:00.000000Z)"
    with pytest.raises(ValueError, match="naive"):
        kql_datetime(datetime(2024, 5, 1, 12, 0))


def test_timespans_use_the_largest_whole_unit() -> None:
    assert kql_timespan(timedelta(days=30)) == "30d"
    assert kql_timespan(timedelta(minutes=60)) == "1h"
    assert kql_timespan(timedelta(minutes=5)) == "5m"
    assert kql_timespan(timedelta(seconds=90)) == "90s"
    with pytest.raises(ValueError):
        kql_timespan(timedelta(minutes=-1))


def test_render_fills_only_declared_parameters_through_their_types() -> None:
    text = render(
        "T | where U in~ ({{users}}) and At > {{start}}",
        {"users": ParamType.STRING_LIST, "start": ParamType.DATETIME},
        {"users": ["a@contoso.com"], "start": datetime(2026, 1, 1, tzinfo=UTC)},
    )
    assert text == (
        'T | where U in~ (dynamic(["a@contoso.com"])) '
        "and At > datetime(2026-01-01T00:00:00.000000Z)"
    )


def test_render_refuses_undeclared_or_missing_parameters() -> None:
    with pytest.raises(ValueError, match="undeclared parameters: who"):
        render("T | where U == {{who}}", {}, {"who": "x"})
    with pytest.raises(ValueError, match="no value for parameters: who"):
        render("T | where U == {{who}}", {"who": "string"}, {})


def test_a_string_cannot_pose_as_a_list_or_a_query() -> None:
    with pytest.raises(TypeError):
        render("{{users}}", {"users": "string_list"}, {"users": "a@b.com"})
    with pytest.raises(TypeError):
        render("{{hits}}", {"hits": "query"}, {"hits": "SigninLogs | take 1"})
    assert (
        render("{{hits}}", {"hits": "query"}, {"hits": TrustedQuery("T | take 1")}) == "T | take 1"
    )


def _fuzz() -> list[str]:
    rnd = random.Random(7)
    alphabet = list("ab\"'\\|;/ @.-_\n\t\rüé😀{}[]()~=!*<>") + ["\\n", "\\u0041", '\\"']
    return ["".join(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 24))) for _ in range(500)]


def test_every_hostile_or_fuzzed_value_round_trips_through_the_engine_exactly() -> None:
    con = duckdb_kql.connect()
    for value in HOSTILE + _fuzz():
        rows = duckdb_kql.kql(con, f"print v = {kql_string(value)}", allow_write=False).fetchall()
        assert rows == [(value,)], value


def test_a_hostile_value_in_a_filter_selects_nothing_and_adds_no_operator() -> None:
    con = duckdb_kql.connect()
    con.execute("CREATE TABLE T AS SELECT 'alice@contoso.com' AS u")
    for value in HOSTILE:
        query = f"T | where u =~ {kql_string(value)} | count"
        assert duckdb_kql.kql(con, query, allow_write=False).fetchall() == [(0,)], value
        listed = f"T | where u in~ ({kql_string_list([value])}) | count"
        assert duckdb_kql.kql(con, listed, allow_write=False).fetchall() == [(0,)], value
    naive = 'T | where u == "x" or 1==1 or "" | count'
    assert duckdb_kql.kql(con, naive).fetchall() == [(1,)], "the contrast: unquoted text injects"
