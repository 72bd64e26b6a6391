"""One timestamp parser for everything Azure sends, and one way to write times out.

Azure writes the same instant as ``2024-06-21T01:06:41.7433333Z`` (seven-digit
ticks), ``2024-06-21T03:06:41.743+02:00``, ``6/21/2024 1:06:41 AM`` (portal
exports) or a naive ``2024-06-21 01:06:41``. Every parse returns an aware UTC
datetime; a value with no zone is taken as UTC and says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_ISO = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<time>\d{2}:\d{2}(?::\d{2})?)"
    r"(?:[.,](?P<frac>\d+))?\s*(?P<zone>Z|z|[+-]\d{2}:?\d{2}|UTC)?$"
)
_US = re.compile(
    r"^(?P<month>\d{1,2})/(?P<day>\d{1,2})/(?P<year>\d{4}),?\s+"
    r"(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<frac>\d+))?)?"
    r"\s*(?P<ampm>AM|PM|am|pm)?$"
)
LONGEST_DURATION = timedelta(days=3660)
_DURATION = re.compile(r"^(?P<n>\d+)\s*(?P<unit>s|m|h|d|w)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class ParsedTime:
    """A parsed instant, and whether its zone had to be assumed."""

    value: datetime
    assumed_utc: bool


def parse_time(text: str) -> ParsedTime:
    """Parse any timestamp shape Azure emits into an aware UTC datetime.

    >>> parse_time("2024-06-21T01:06:41.7433333Z").value.isoformat()
    '2024-06-21T01:06:41.743333+00:00'

    Raises ``ValueError`` naming the value when it has no known shape.
    """
    raw = text.strip()
    match = _ISO.match(raw)
    if match:
        return _from_iso(match)
    match = _US.match(raw)
    if match:
        return ParsedTime(_from_us(match), assumed_utc=False)
    raise ValueError(f"not a timestamp: {text!r}")


def _from_iso(match: re.Match[str]) -> ParsedTime:
    frac = (match["frac"] or "")[:6].ljust(6, "0")
    zone = match["zone"]
    clock = match["time"] if match["time"].count(":") == 2 else match["time"] + ":00"
    base = datetime.fromisoformat(f"{match['date']}T{clock}.{frac}")
    if zone is None:
        return ParsedTime(base.replace(tzinfo=UTC), assumed_utc=True)
    if zone in ("Z", "z", "UTC"):
        return ParsedTime(base.replace(tzinfo=UTC), assumed_utc=False)
    sign = 1 if zone[0] == "+" else -1
    digits = zone[1:].replace(":", "")
    offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    aware = (base - sign * offset).replace(tzinfo=UTC)
    return ParsedTime(aware, assumed_utc=False)


def _from_us(match: re.Match[str]) -> datetime:
    hour = int(match["hour"])
    ampm = (match["ampm"] or "").upper()
    if ampm == "PM" and hour != 12:
        hour += 12
    elif ampm == "AM" and hour == 12:
        hour = 0
    frac = (match["frac"] or "")[:6].ljust(6, "0")
    return datetime(
        int(match["year"]),
        int(match["month"]),
        int(match["day"]),
        hour,
        int(match["minute"]),
        int(match["second"] or 0),
        int(frac),
        tzinfo=UTC,
    )


def as_utc(value: datetime | str) -> datetime:
    """An aware UTC datetime from a datetime (naive taken as UTC) or a string."""
    if isinstance(value, str):
        return parse_time(value).value
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def isoformat_z(value: datetime) -> str:
    """ISO 8601 with a ``Z``, the one way tokenward writes an instant out."""
    moment = as_utc(value)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + "Z"


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``24h``, ``7d`` or ``2w`` as a timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration (use e.g. 15m, 24h, 7d): {text!r}")
    try:
        duration = timedelta(**{_UNITS[match["unit"]]: int(match["n"])})
    except OverflowError:
        duration = None
    # No window, delay or lookback tokenward reads is anywhere near this; a
    # larger value is a typo, and would overflow the dates it is taken from.
    if duration is None or duration > LONGEST_DURATION:
        raise ValueError(f"longer than {LONGEST_DURATION.days} days: {text!r}")
    return duration


def utcnow() -> datetime:
    return datetime.now(UTC)
