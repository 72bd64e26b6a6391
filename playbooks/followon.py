"""Follow-on query rows to what the stolen token touched. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from playbooks.models import FollowOnActivity, SessionActivity, TouchedArea
from playbooks.rows import Row, string_list, text, timestamp

AREA_ORDER = {"mail": 0, "files": 1, "directory": 2, "other": 3}


def touched_areas(rows: Iterable[Row]) -> tuple[TouchedArea, ...]:
    """One entry per area, the busiest first among equals by the usual order."""
    areas = [
        TouchedArea(
            area=text(row.get("Area")) or "other",
            requests=int(row.get("Requests") or 0),
            methods=tuple(sorted(set(string_list(row.get("Methods"))))),
            first=_time(row.get("First")),
            last=_time(row.get("Last")),
            ip_addresses=tuple(sorted(set(string_list(row.get("IPAddresses"))))),
            samples=tuple(sorted(set(string_list(row.get("Samples"))))),
        )
        for row in rows
    ]
    return tuple(sorted(areas, key=lambda a: (AREA_ORDER.get(a.area, 9), -a.requests)))


def session_activity(rows: Sequence[Row]) -> SessionActivity | None:
    if not rows:
        return None
    row = rows[0]
    return SessionActivity(
        sign_ins=int(row.get("SignIns") or 0),
        apps=_sorted(row.get("Apps")),
        resources=_sorted(row.get("Resources")),
        ip_addresses=_sorted(row.get("IPAddresses")),
        countries=tuple(sorted({c.upper() for c in string_list(row.get("Countries")) if c})),
        first=_time(row.get("First")),
        last=_time(row.get("Last")),
    )


def follow_on_for(
    hit_ids: Iterable[str],
    *,
    graph_rows: Mapping[str, Sequence[Row]],
    session_rows: Mapping[str, Sequence[Row]],
    since: datetime,
    until: datetime,
    complete: bool,
    notes: Sequence[str] = (),
) -> FollowOnActivity:
    """A finding's follow-on activity from the rows of any of its sign-ins."""
    ids = list(hit_ids)
    graph = [row for hit in ids for row in graph_rows.get(hit, ())]
    session = [row for hit in ids for row in session_rows.get(hit, ())]
    return FollowOnActivity(
        since=since,
        until=until,
        graph_activity=_merge_areas(touched_areas(graph)),
        session=_merge_sessions([s for s in (session_activity([row]) for row in session) if s]),
        complete=complete,
        notes=tuple(notes),
    )


def _merge_areas(areas: Sequence[TouchedArea]) -> tuple[TouchedArea, ...]:
    merged: dict[str, TouchedArea] = {}
    for area in areas:
        known = merged.get(area.area)
        if known is None:
            merged[area.area] = area
            continue
        merged[area.area] = TouchedArea(
            area=area.area,
            requests=known.requests + area.requests,
            methods=tuple(sorted(set(known.methods) | set(area.methods))),
            first=_earliest(known.first, area.first),
            last=_latest(known.last, area.last),
            ip_addresses=tuple(sorted(set(known.ip_addresses) | set(area.ip_addresses))),
            samples=tuple(sorted(set(known.samples) | set(area.samples)))[:5],
        )
    return tuple(sorted(merged.values(), key=lambda a: AREA_ORDER.get(a.area, 9)))


def _merge_sessions(sessions: Sequence[SessionActivity]) -> SessionActivity | None:
    if not sessions:
        return None
    return SessionActivity(
        sign_ins=sum(s.sign_ins for s in sessions),
        apps=tuple(sorted({a for s in sessions for a in s.apps})),
        resources=tuple(sorted({r for s in sessions for r in s.resources})),
        ip_addresses=tuple(sorted({i for s in sessions for i in s.ip_addresses})),
        countries=tuple(sorted({c for s in sessions for c in s.countries})),
        first=min((s.first for s in sessions if s.first), default=None),
        last=max((s.last for s in sessions if s.last), default=None),
    )


def _sorted(value: object) -> tuple[str, ...]:
    return tuple(sorted({item for item in string_list(value) if item}))


def _time(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    return timestamp(value)


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return min((x for x in (a, b) if x), default=None)


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return max((x for x in (a, b) if x), default=None)
