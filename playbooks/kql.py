"""KQL literals and template rendering: the only way a value enters a query.

Log Analytics has no bind parameters, so values are quoted on the client. The
rules follow the KQL string data type: a double-quoted literal in which ``\\``
is escaped first, then ``"``, CR, LF and TAB. Every other control character is
refused rather than trusted to each front end's ``\\u`` handling.

Templates are ``.kql`` files with ``{{name}}`` placeholders. Each placeholder
is declared with a type in the playbook, and rendering accepts nothing else::

    >>> render("T | where U in~ ({{users}})", {"users": "string_list"},
    ...        {"users": ["a@contoso.com"]})
    'T | where U in~ (dynamic(["a@contoso.com"]))'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from playbooks.times import as_utc

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u2028\u2029]")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ParamType(StrEnum):
    """The types a template parameter may have."""

    STRING = "string"
    STRING_LIST = "string_list"
    DATETIME = "datetime"
    TIMESPAN = "timespan"
    INT = "int"
    BOOL = "bool"
    # Another query of the same playbook, rendered first: trusted text from the
    # playbook, never from incident data.
    QUERY = "query"


def kql_string(value: str) -> str:
    """A KQL string literal that evaluates to exactly *value*."""
    if not isinstance(value, str):
        raise TypeError(f"a KQL string needs str, not {type(value).__name__}")
    bad = _FORBIDDEN.search(value)
    if bad:
        raise ValueError(
            f"control character U+{ord(bad.group()):04X} is not allowed in a KQL string literal"
        )
    return '"' + "".join(_ESCAPES.get(char, char) for char in value) + '"'


def kql_string_list(values: Iterable[str]) -> str:
    """A ``dynamic([...])`` array of string literals; empty is allowed.

    A dynamic array works both in ``in~ (…)`` and in ``array_length(…)``, so a
    template can say "these users, or everyone when the list is empty".
    """
    return "dynamic([" + ", ".join(kql_string(value) for value in values) + "])"


def kql_datetime(value: datetime) -> str:
    """A ``datetime(…)`` literal in UTC; naive datetimes are refused."""
    if not isinstance(value, datetime):
        raise TypeError(f"a KQL datetime needs datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError("a naive datetime has no zone; pass an aware one")
    moment = as_utc(value)
    return "datetime(" + moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") + ")"


def kql_timespan(value: timedelta) -> str:
    """A timespan literal such as ``30d``, ``60m`` or ``90s``."""
    if not isinstance(value, timedelta):
        raise TypeError(f"a KQL timespan needs timedelta, not {type(value).__name__}")
    if value < timedelta(0):
        raise ValueError("a negative timespan is not allowed here")
    seconds = value.total_seconds()
    if seconds != int(seconds):
        return f"{int(seconds * 1000)}ms"
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def kql_int(value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a KQL int needs int, not {type(value).__name__}")
    return str(value)


def kql_bool(value: bool) -> str:
    if not isinstance(value, bool):
        raise TypeError(f"a KQL bool needs bool, not {type(value).__name__}")
    return "true" if value else "false"


def kql_identifier(name: str) -> str:
    """A table or column name from the playbook; refused unless a plain name."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a plain KQL identifier")
    return name


def placeholders(template: str) -> set[str]:
    """The parameter names a template uses."""
    return set(_PLACEHOLDER.findall(template))


def render(
    template: str,
    declared: Mapping[str, ParamType | str],
    values: Mapping[str, Any],
) -> str:
    """Fill every ``{{name}}`` through the quoting helper of its declared type."""
    used = placeholders(template)
    undeclared = used - set(declared)
    if undeclared:
        raise ValueError(f"undeclared parameters: {', '.join(sorted(undeclared))}")
    missing = used - set(values)
    if missing:
        raise ValueError(f"no value for parameters: {', '.join(sorted(missing))}")

    rendered = {name: _literal(ParamType(declared[name]), values[name]) for name in used}
    return _PLACEHOLDER.sub(lambda match: rendered[match.group(1)], template)


def _literal(kind: ParamType, value: Any) -> str:
    if kind is ParamType.STRING:
        return kql_string(value)
    if kind is ParamType.STRING_LIST:
        if isinstance(value, str):
            raise TypeError("a string_list needs a list of strings, not one string")
        return kql_string_list(value)
    if kind is ParamType.DATETIME:
        return kql_datetime(value)
    if kind is ParamType.TIMESPAN:
        return kql_timespan(value)
    if kind is ParamType.INT:
        return kql_int(value)
    if kind is ParamType.BOOL:
        return kql_bool(value)
    if isinstance(value, HitsTable):
        return value.render()
    if not isinstance(value, TrustedQuery):
        raise TypeError("a query parameter needs another rendered playbook query or a HitsTable")
    # Not parenthesised: `let hits = <query>;` is valid KQL as it stands.
    return value.text.strip()


class TrustedQuery:
    """Rendered text of a playbook's own query, for use inside another one."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


#: The hunt columns a query given the hunt's rows may read, with their types.
HITS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("Id", "string"),
    ("TimeGenerated", "datetime"),
    ("UserPrincipalName", "string"),
    ("UserId", "string"),
    ("IPAddress", "string"),
    ("CorrelationId", "string"),
    ("SessionId", "string"),
    ("UniqueTokenIdentifier", "string"),
)


class HitsTable:
    """The hunt's rows as a ``datatable(...)[...]`` literal.

    Used where a query runs in another service than the hunt (Defender has no
    SigninLogs): it gets the hunt's rows instead of the hunt's text, and reads
    them exactly as it would read ``let hits = <hunt>``. Every cell goes
    through :func:`kql_string` or :func:`kql_datetime`; a row without an aware
    ``TimeGenerated`` is refused.

    The literal grows by about 250 characters a hit, and it is not chunked: a
    hunt of thousands of hits makes a query of hundreds of kilobytes, which a
    service's query size limit may refuse (the query then fails, visibly).
    """

    __slots__ = ("rows",)

    def __init__(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.rows = tuple(_hit_cells(row) for row in rows)

    def __len__(self) -> int:
        return len(self.rows)

    def render(self) -> str:
        header = ", ".join(f"{name}:{kind}" for name, kind in HITS_COLUMNS)
        if not self.rows:
            return f"datatable({header})[]"
        lines = ",\n    ".join(", ".join(cells) for cells in self.rows)
        return f"datatable({header})[\n    {lines}\n]"


def _hit_cells(row: Mapping[str, Any]) -> tuple[str, ...]:
    cells = []
    for name, kind in HITS_COLUMNS:
        value = row.get(name)
        if kind == "datetime":
            if isinstance(value, str):
                value = as_utc(value)
            if not isinstance(value, datetime):
                raise ValueError(f"a hit needs {name} as a datetime, not {value!r}")
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            cells.append(kql_datetime(value))
        else:
            cells.append(kql_string("" if value is None else str(value)))
    return tuple(cells)
