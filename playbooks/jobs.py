"""The scheduled jobs' cycles: the hunt over every user, and the reconciliation.

A cycle is a row of the inbox (:meth:`playbooks.inbox.Inbox.enqueue_job`), so
it is leased, heartbeated, retried and recovered after a crash like any
delivery, and rows of one job are never run side by side. What a cycle does
is here; the worker runs it with the connectors of its run.

**The hunt's windows.** Each window ends at the run's clock and starts at the
end of the last window completed, less ``schedule.max_ingestion_delay``: a
sign-in that reached the workspace late, but no later than that, falls in the
next window although its time is in the last one. The end is the job's
watermark, moved only when a cycle completes with the hunt's results whole
(never on a failure or a partial hunt), so a cycle that failed, was skipped or
was killed leaves the watermark where it was and the next window covers the
gap. After a long outage a window is capped at ``schedule.max_window`` and
the rest is caught up by the next cycles. The same sign-in seen in two
overlapping windows, or by the webhook too, is one flow with one id: the
action ledger skips what was done for it.

**Reconciliation.** The incidents API lists the configured workspaces'
incidents created since the newest one seen (less ``reconcile_overlap``),
oldest first, page by page. An incident of the configured analytic rules that
no delivery ever named is put in the inbox as the webhook would have put it
(its entities read from the API), so a late webhook delivery of it collapses
with it; the watermark moves to the newest creation time listed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from playbooks.audit import AuditLog
from playbooks.errors import InputError
from playbooks.inbox import RECONCILED, Inbox, delivery_for
from playbooks.incidents import WORKSPACE_ID
from playbooks.models import RunReport, RunStatus, Window
from playbooks.ports import IncidentFeed
from playbooks.settings import ScheduleSettings, Settings
from playbooks.times import as_utc, isoformat_z, parse_duration, parse_time

logger = logging.getLogger(__name__)

HUNT = "hunt"
RECONCILE = "reconcile"
RECONCILER = "tokenward reconciliation"


# -- the scheduled hunt -------------------------------------------------------------


def hunt_window(
    watermark: datetime | None,
    now: datetime,
    schedule: ScheduleSettings,
    *,
    first_start: datetime | None = None,
) -> Window:
    """The next window: from the last one's end less the ingestion delay, to now.

    The first window (no watermark yet) starts at *first_start*, fixed by the
    first cycle ever tried (:meth:`~playbooks.store.Store.job_origin`), so a
    first cycle that fails leaves no gap at its start; without it,
    ``first_window`` before now.
    """
    overlap = parse_duration(schedule.max_ingestion_delay)
    if watermark is None:
        start = first_start or now - parse_duration(schedule.first_window)
    else:
        # A watermark ahead of the clock (a clock set back) still overlaps.
        start = min(watermark, now) - overlap
    end = min(now, start + parse_duration(schedule.max_window))
    return Window(start=start, end=max(end, start + timedelta(seconds=1)))


def cycle_problem(report: RunReport) -> str | None:
    """Why a hunt cycle must not move the watermark, or None when it may."""
    if report.status is RunStatus.FAILED:
        return report.error or "the run failed"
    partial = [
        query.name
        for query in report.queries
        if query.name == "hunt" and query.status is not RunStatus.COMPLETE
    ]
    if partial:
        return "the hunt's sign-ins came back partial; the window is hunted again"
    return None


def window_note(window: Window, watermark: datetime | None, now: datetime) -> str:
    if watermark is None:
        return (
            f"scheduled hunt: the first window, {isoformat_z(window.start)} to "
            f"{isoformat_z(window.end)}"
        )
    behind = " (catching up: the next cycle goes on from here)" if window.end < now else ""
    return (
        f"scheduled hunt: {isoformat_z(window.start)} to {isoformat_z(window.end)}, "
        f"overlapping the last window completed (to {isoformat_z(watermark)}) by the "
        f"maximum ingestion delay{behind}"
    )


# -- reconciliation -----------------------------------------------------------------


@dataclass
class Reconciled:
    """What one reconciliation pass found."""

    listed: int = 0
    pages: int = 0
    # Of the configured analytic rules.
    matched: int = 0
    # Already in the inbox: the webhook (or an earlier pass) delivered them.
    arrived: int = 0
    # Never delivered: put in the inbox now.
    recovered: int = 0
    refused: int = 0
    newest: datetime | None = None
    recovered_runs: tuple[str, ...] = ()

    def as_record(self) -> dict[str, Any]:
        return {
            "listed": self.listed,
            "pages": self.pages,
            "matched": self.matched,
            "arrived": self.arrived,
            "recovered": self.recovered,
            "refused": self.refused,
            "newest": isoformat_z(self.newest) if self.newest else None,
            "recovered_runs": list(self.recovered_runs),
        }


def of_rules(incident: dict[str, Any], rules: tuple[str, ...]) -> bool:
    """Whether one of *rules* (ids or resource ids, lower case) raised *incident*."""
    related = (incident.get("properties") or {}).get("relatedAnalyticRuleIds") or []
    for item in related:
        text = str(item).lower().rstrip("/")
        if any(text == rule or text.rsplit("/", 1)[-1] == rule for rule in rules):
            return True
    return False


def as_delivery_body(
    incident: dict[str, Any], entities: list[dict[str, Any]], workspace: str
) -> bytes:
    """The incident as the automation rule's trigger would have carried it."""
    match = WORKSPACE_ID.match(workspace)
    parts = workspace.strip("/").split("/")
    properties = dict(incident.get("properties") or {})
    properties["relatedEntities"] = entities
    body = {
        "objectSchemaType": "Incident",
        "objectEventType": "Create",
        "workspaceInfo": {
            "SubscriptionId": parts[1] if match else "",
            "ResourceGroupName": parts[3] if match else "",
            "WorkspaceName": parts[-1] if match else "",
        },
        "object": {**incident, "properties": properties},
    }
    return json.dumps(body, sort_keys=True).encode()


async def reconcile(
    *,
    feed: IncidentFeed,
    inbox: Inbox,
    audit: AuditLog,
    settings: Settings,
    run_id: str,
    now: datetime,
) -> Reconciled:
    """One pass: list, compare with the inbox, store what never arrived."""
    schedule = settings.schedule
    state = await asyncio.to_thread(audit.store.job, RECONCILE)
    seen = as_utc(state["watermark"]) if state and state["watermark"] else None
    after = (
        seen - parse_duration(schedule.reconcile_overlap)
        if seen is not None
        else now - parse_duration(schedule.reconcile_first_window)
    )
    found = Reconciled(newest=seen)
    recovered: list[str] = []
    for workspace in schedule.workspaces:
        link: str | None = None
        while True:
            page = await feed.incidents_created_after(
                workspace=workspace,
                after=after,
                page_size=schedule.page_size,
                next_link=link,
            )
            found.pages += 1
            for incident in page.incidents:
                found.listed += 1
                created = _created(incident)
                if created is not None and (found.newest is None or created > found.newest):
                    found.newest = created
                if not of_rules(incident, schedule.analytic_rules):
                    continue
                found.matched += 1
                run = await _recover(feed, inbox, audit, settings, incident, workspace, now, run_id)
                if run is None:
                    found.arrived += 1
                elif run == "":
                    found.refused += 1
                else:
                    recovered.append(run)
            link = page.next_link
            if not link:
                break
    found.recovered = len(recovered)
    found.recovered_runs = tuple(recovered)
    return found


async def _recover(
    feed: IncidentFeed,
    inbox: Inbox,
    audit: AuditLog,
    settings: Settings,
    incident: dict[str, Any],
    workspace: str,
    now: datetime,
    run_id: str,
) -> str | None:
    """The run id of the incident put in the inbox now; None if it had arrived
    before, "" if it is not an incident the webhook would accept."""
    key = str(incident.get("id", "")).lower()
    if await asyncio.to_thread(inbox.knows_incident, key):
        return None
    entities = await feed.entities(incident_id=str(incident.get("id", "")))
    body = as_delivery_body(incident, entities, workspace)
    sentinel = settings.sentinel
    try:
        delivery, scope = delivery_for(
            body,
            caller=RECONCILER,
            scheme=RECONCILED,
            received=now,
            margin_before=parse_duration(sentinel.window_before),
            margin_after=parse_duration(sentinel.window_after),
            allowed_workspaces=sentinel.allowed_workspaces,
            summary={"recovered": True, "reconciliation": run_id},
        )
    except InputError as failure:
        logger.warning("incident %s not reconciled: %s", key[-36:], failure)
        await asyncio.to_thread(
            audit.record,
            run_id,
            "reconcile.refused",
            {"incident": key, "reason": str(failure)[:500]},
        )
        return ""
    (accepted,) = await asyncio.to_thread(inbox.record, [delivery])
    if accepted.duplicate:
        return None
    logger.info(
        "recovered incident %s (never delivered to the webhook) as run %s",
        scope.incident.number,
        accepted.run_id,
    )
    return accepted.run_id


def _created(incident: dict[str, Any]) -> datetime | None:
    value = (incident.get("properties") or {}).get("createdTimeUtc")
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value).value
    except ValueError:
        return None


__all__ = [
    "HUNT",
    "RECONCILE",
    "Reconciled",
    "as_delivery_body",
    "cycle_problem",
    "hunt_window",
    "of_rules",
    "reconcile",
]
