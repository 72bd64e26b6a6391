"""One parser for every timestamp shape Azure emits (field case B29)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from playbooks.times import isoformat_z, parse_duration, parse_time

REFERENCE = datetime(2024, 6, 21, 1, 6, 41, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "assumed"),
    [
        ("2024-06-21T01:06:41.7433333Z", False),
        ("2024-06-21T01:06:41Z", False),
        ("2024-06-21T01:06:41.743+00:00", False),
        ("2024-06-21T03:06:41.743+02:00", False),
        ("6/21/2024 1:06:41 AM", False),
        ("2024-06-21 01:06:41", True),
    ],
)
def test_every_azure_shape_parses_to_aware_utc_within_a_second(text: str, assumed: bool) -> None:
    parsed = parse_time(text)
    assert parsed.value.tzinfo is UTC
    assert abs(parsed.value - REFERENCE) < timedelta(seconds=1)
    assert parsed.assumed_utc is assumed


def test_seven_digit_ticks_are_trimmed_to_microseconds() -> None:
    assert parse_time("2024-06-21T01:06:41.7433333Z").value.microsecond == 743333


def test_portal_export_dates_with_a_comma_and_milliseconds() -> None:
    assert parse_time("4/28/2021, 2:08:45.221 PM").value == datetime(
        2021, 4, 28, 14, 8, 45, 221000, tzinfo=UTC
    )
    assert parse_time("4/28/2021, 12:08:45 AM").value.hour == 0


def test_something_that_is_not_a_time_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'yesterday'"):
        parse_time("yesterday")


def test_instants_are_written_out_with_a_z() -> None:
    assert isoformat_z(datetime(2026, 1, 15, 9, 24, 58, tzinfo=UTC)) == "2026-01-15T09:24:58Z"
    assert (
        isoformat_z(datetime(2026, 1, 15, 9, 24, 58, 120000, tzinfo=UTC))
        == "2026-01-15T09:24:58.120000Z"
    )


def test_durations() -> None:
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("7d") == timedelta(days=7)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


@pytest.mark.parametrize("text", ["3661d", "523w", "99999999999999999999d", "999999999999999999h"])
def test_a_duration_longer_than_ten_years_is_refused_rather_than_overflowing(text: str) -> None:
    with pytest.raises(ValueError, match="longer than 3660 days"):
        parse_duration(text)


def test_ten_years_is_still_a_duration() -> None:
    assert parse_duration("3660d") == timedelta(days=3660)
