"""The inbox worker: one stored delivery at a time, to one run of the playbook.

For each delivery it claims, the worker turns the stored body into the
incident's scope, gets the run's connectors from the tools factory the face
wired in, and runs the engine under the delivery's run id. A heartbeat keeps
the lease while the run lasts. A run that fails is handed back to be tried
again later, up to the inbox's attempts; a worker killed mid-run simply stops
renewing, and the next worker takes the delivery over when the lease runs
out. The run id stays the same on every attempt, so the incident comment (its
id is derived from the run id) is updated, never duplicated.

The worker calls no connector itself: :data:`ToolsFactory` hands it the query
source, the responder and the incident writer for each run.

Known limit: on SQLite every audit record of a run is its own synchronous
transaction, so one worker process finishes one to two runs a second; a
burst of hundreds of incidents is acknowledged at once but worked through
over minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from playbooks.approvals import PlanRefused, load_plan
from playbooks.audit import AuditLog
from playbooks.dryrun import DryRunResponder
from playbooks.engine import NoQueries, Runner, RunRequest
from playbooks.errors import TokenwardError
from playbooks.inbox import DONE, EXECUTE, FAILED, RECONCILED, Claimed, FollowUp, Inbox
from playbooks.incidents import scope_from_incident
from playbooks.jobs import (
    HUNT,
    RECONCILE,
    cycle_problem,
    hunt_window,
    reconcile,
    window_note,
)
from playbooks.models import Mode, RunReport, RunStatus
from playbooks.playbook import Playbook
from playbooks.ports import (
    DirectoryReader,
    IncidentFeed,
    IncidentWriter,
    QuerySource,
    Responder,
)
from playbooks.settings import Settings
from playbooks.times import as_utc, isoformat_z, parse_duration, parse_time, utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunTools:
    """The connectors one run uses."""

    source: QuerySource
    # The Graph responder (also the directory reader) for approve and auto;
    # None where only dry-runs are configured. A dry-run never gets it.
    responder: GraphLike | None
    writer: IncidentWriter | None
    # A pinned clock (exports of a past day); None: the wall clock.
    now: datetime | None = None
    # Lists Sentinel incidents, for reconciliation.
    incidents: IncidentFeed | None = None


class GraphLike(Responder, DirectoryReader, Protocol):
    """A responder that also reads users back (the Graph responder)."""


#: Builds the connectors for one run; the face (server or CLI) provides it.
ToolsFactory = Callable[[], AbstractAsyncContextManager[RunTools]]


def worker_id() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    def __init__(
        self,
        *,
        settings: Settings,
        playbook: Playbook,
        inbox: Inbox,
        audit: AuditLog,
        tools: ToolsFactory,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.playbook = playbook
        self.inbox = inbox
        self.audit = audit
        self.tools = tools
        self.owner = owner or worker_id()
        # When this worker last looked at the inbox (for /readyz).
        self.last_poll: float = 0.0
        self._swept_at = float("-inf")
        # Only runs in approve or auto store plans an approver can approve.
        modes = {settings.webhook.mode}
        if settings.schedule.hunt:
            modes.add(settings.schedule.mode)
        self._may_execute = modes != {Mode.DRY_RUN.value}

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Process deliveries with ``inbox.concurrency`` runs at once until *stop*."""
        lanes: list[asyncio.Task[None]] = []
        try:
            # The clients, and the Graph permission preflight, before any claim.
            start = getattr(self.tools, "start", None)
            if start is not None:
                await start()
            logger.info("worker %s started", self.owner)
            lanes = [
                asyncio.create_task(self._lane(stop), name=f"lane-{n}")
                for n in range(self.settings.inbox.concurrency)
            ]
            await asyncio.gather(*lanes)
        finally:
            for lane in lanes:
                lane.cancel()
            close = getattr(self.tools, "aclose", None)
            if close is not None:
                await close()
            logger.info("worker %s stopped", self.owner)

    async def _lane(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                worked = await self.run_once()
            except Exception:
                # The store is unreachable or a bug: never let one lane die silently.
                logger.exception("worker %s could not take a delivery", self.owner)
                worked = False
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.inbox.poll_seconds)

    async def run_once(self) -> bool:
        """Claim and process one delivery; False when none was due."""
        inbox = self.settings.inbox
        loop = asyncio.get_running_loop()
        self.last_poll = loop.time()
        if self._may_execute and loop.time() - self._swept_at >= inbox.poll_seconds:
            # Plans of the service's runs that an approver approved since.
            self._swept_at = loop.time()
            expiry = timedelta(hours=self.settings.approvals.expire_after_hours)
            await asyncio.to_thread(
                self.inbox.enqueue_approved_plans,
                created_after=isoformat_z(utcnow() - expiry),
            )
        claimed = await asyncio.to_thread(
            self.inbox.claim,
            self.owner,
            lease_s=inbox.lease_seconds,
            max_attempts=inbox.max_attempts,
        )
        if claimed is None:
            return False
        async with self._heartbeat(claimed):
            await self._process(claimed)
        return True

    async def _process(self, claimed: Claimed) -> None:
        logger.info(
            "run %s for delivery %s (attempt %d)",
            claimed.run_id,
            claimed.id,
            claimed.attempts,
        )
        try:
            done = await self._work(claimed)
        except Exception as failure:
            # A bug or an unreachable store: recorded, retried like a failed run.
            logger.exception("run %s stopped on an internal error", claimed.run_id)
            await self._after_failure(claimed, f"internal error: {type(failure).__name__}")
            return
        if done.error is not None:
            await self._after_failure(claimed, done.error)
            return
        await asyncio.to_thread(
            self.inbox.finish,
            claimed.id,
            self.owner,
            status=DONE,
            outcome=done.outcome,
            follow_up=done.follow_up,
        )

    async def _work(self, claimed: Claimed) -> Done:
        """The row's run: an incident's, a scheduled cycle's or an approved plan's."""
        async with self.tools() as tools:
            if claimed.job == HUNT:
                return await self._hunt_cycle(claimed, tools)
            if claimed.job == RECONCILE:
                return await self._reconcile(claimed, tools)
            if claimed.event == EXECUTE:
                return await self._execute(claimed, tools)
            report = await self._incident_run(claimed, tools)
        if report.status is RunStatus.FAILED:
            return Done(_outcome(report), error=report.error or "the run failed")
        return Done(_outcome(report), follow_up=self._rehunt(claimed, report))

    def _rehunt(self, claimed: Claimed, report: RunReport) -> FollowUp | None:
        """Field case B20: nothing found may mean nothing arrived yet; look again later."""
        delays = [parse_duration(item) for item in self.settings.sentinel.rehunt_after]
        done = rehunt_number(claimed.event)
        if report.findings or not report.users or done >= len(delays):
            return None
        at = parse_time(claimed.received_at).value + delays[done]
        return FollowUp(
            label=f"rehunt-{done + 1}",
            at_ms=int(at.timestamp() * 1000),
            why="no device code sign-in found yet; sign-in logs can arrive late",
        )

    def _acting(self, tools: RunTools, mode: Mode) -> tuple[Responder, DirectoryReader | None]:
        """What a run in *mode* acts through: a dry-run never gets the Graph responder."""
        if mode is Mode.DRY_RUN:
            return DryRunResponder(), None
        if tools.responder is None:
            raise TokenwardError(
                f"mode {mode.value} needs the Graph responder, which is not configured"
            )
        return tools.responder, tools.responder

    async def _incident_run(self, claimed: Claimed, tools: RunTools) -> RunReport:
        # The scope, as the delivery's body says it; the clock is the run's.
        sentinel = self.settings.sentinel
        now = tools.now or utcnow()
        scope = scope_from_incident(
            json.loads(claimed.body),
            now=now,
            margin_before=parse_duration(sentinel.window_before),
            margin_after=parse_duration(sentinel.window_after),
        )
        warnings = scope.unresolved + scope.warnings
        if_nothing_found: tuple[str, ...] = ()
        if scope.users:
            # An incident with no account to hunt is never hunted again (see _rehunt).
            done, again = self._rehunt_notes(claimed)
            warnings += done
            if_nothing_found = again
        if claimed.scheme == RECONCILED:
            warnings += (
                "Sentinel never delivered this incident to tokenward's webhook; "
                "reconciliation found it in the incidents API and ran it",
            )
        if claimed.attempts > 1:
            warnings += (f"attempt {claimed.attempts}: an earlier attempt did not finish",)
        mode = Mode(self.settings.webhook.mode)
        request = RunRequest(
            trigger=claimed.trigger,
            mode=mode,
            window=scope.window,
            now=now,
            users=scope.users,
            incident=scope.incident,
            low_confidence_users=scope.low_confidence_users,
            warnings=warnings,
            if_nothing_found=if_nothing_found,
            run_id=claimed.run_id,
        )
        responder, directory = self._acting(tools, mode)
        label = scope.incident.number if scope.incident.number is not None else scope.name
        runner = Runner(
            self.playbook,
            self.settings,
            tools.source,
            self.audit,
            responder=responder,
            directory=directory,
            requested_by=f"tokenward serve for Sentinel incident {label}",
            writer=tools.writer,
        )
        return await runner.run(request)

    async def _hunt_cycle(self, claimed: Claimed, tools: RunTools) -> Done:
        """One scheduled hunt over every user, then the watermark if it completed."""
        schedule = self.settings.schedule
        store = self.audit.store
        now = tools.now or utcnow()
        state = await asyncio.to_thread(store.job, HUNT)
        watermark = as_utc(state["watermark"]) if state and state["watermark"] else None
        first_start = None
        if watermark is None:
            # Fixed once, so every first cycle tried hunts from the same start.
            reach = parse_time(claimed.received_at).value - parse_duration(schedule.first_window)
            first_start = as_utc(
                await asyncio.to_thread(store.job_origin, HUNT, isoformat_z(reach))
            )
        window = hunt_window(watermark, now, schedule, first_start=first_start)
        mode = Mode(schedule.mode)
        responder, directory = self._acting(tools, mode)
        request = RunRequest(
            trigger=claimed.trigger,
            mode=mode,
            window=window,
            now=now,
            warnings=(window_note(window, watermark, now),),
            run_id=claimed.run_id,
        )
        runner = Runner(
            self.playbook,
            self.settings,
            tools.source,
            self.audit,
            responder=responder,
            directory=directory,
            requested_by="tokenward scheduled hunt",
        )
        report = await runner.run(request)
        outcome = {
            **_outcome(report),
            "window": [isoformat_z(window.start), isoformat_z(window.end)],
        }
        problem = cycle_problem(report)
        if problem is not None:
            await asyncio.to_thread(
                self.audit.record,
                claimed.run_id,
                "schedule.window_not_completed",
                {"job": HUNT, "window": outcome["window"], "why": problem},
            )
            return Done(outcome, error=problem)
        await asyncio.to_thread(
            store.advance_job,
            HUNT,
            watermark=isoformat_z(window.end),
            run_id=claimed.run_id,
            detail={"window": outcome["window"], "findings": report.tier_counts()},
        )
        await asyncio.to_thread(
            self.audit.record,
            claimed.run_id,
            "schedule.window_completed",
            {
                "job": HUNT,
                "window": outcome["window"],
                "findings": report.tier_counts(),
                "caught_up": window.end >= now,
            },
        )
        return Done(outcome)

    async def _reconcile(self, claimed: Claimed, tools: RunTools) -> Done:
        """One reconciliation pass; the incidents it recovers run as deliveries."""
        if tools.incidents is None:
            return Done({}, error="reconciliation needs the Sentinel incidents API")
        store = self.audit.store
        try:
            found = await reconcile(
                feed=tools.incidents,
                inbox=self.inbox,
                audit=self.audit,
                settings=self.settings,
                run_id=claimed.run_id,
                now=tools.now or utcnow(),
            )
        except TokenwardError as failure:
            # The incidents API unreachable: what this pass recovered is in the
            # inbox already; the watermark stays, so the next pass lists again.
            await asyncio.to_thread(
                self.audit.record,
                claimed.run_id,
                "reconcile.not_completed",
                {"why": str(failure)[:500]},
            )
            return Done({"run_status": "failed"}, error=str(failure)[:500])
        state = await asyncio.to_thread(store.job, RECONCILE)
        total = int((state or {}).get("detail", {}).get("recovered_total", 0))
        detail = {**found.as_record(), "recovered_total": total + found.recovered}
        if found.newest is not None:
            await asyncio.to_thread(
                store.advance_job,
                RECONCILE,
                watermark=isoformat_z(found.newest),
                run_id=claimed.run_id,
                detail=detail,
            )
        await asyncio.to_thread(self.audit.record, claimed.run_id, "reconcile.finished", detail)
        logger.info(
            "reconciliation %s: %d listed, %d of the rules, %d recovered",
            claimed.run_id,
            found.listed,
            found.matched,
            found.recovered,
        )
        return Done({"run_status": "complete", **detail})

    async def _execute(self, claimed: Claimed, tools: RunTools) -> Done:
        """Execute a plan a named approver approved, exactly as approved."""
        body = json.loads(claimed.body)
        plan_id = str(body["plan_id"])
        stored = await asyncio.to_thread(load_plan, self.audit.store, plan_id)
        approver = stored.approval["by"] if stored.approval else "?"
        incident = None
        source = body.get("source")
        if isinstance(source, dict) and ("object" in source or "properties" in source):
            incident = scope_from_incident(source, now=utcnow()).incident
        if tools.responder is None:
            return Done({}, error="executing a plan needs the Graph responder")
        runner = Runner(
            self.playbook,
            self.settings,
            NoQueries(),
            self.audit,
            responder=tools.responder,
            directory=tools.responder,
            writer=tools.writer,
        )
        try:
            report = await runner.execute_plan(
                plan_id,
                executed_by=f"tokenward serve on approval by {approver}",
                run_id=claimed.run_id,
                resume=claimed.attempts > 1,
                incident=incident,
            )
        except PlanRefused as refused:
            # Already executed (a retry after the work was done), or expired.
            logger.info("plan %s not executed: %s", plan_id, refused)
            return Done({"run_status": "skipped", "plan_id": plan_id, "why": str(refused)})
        return Done(_outcome(report))

    def _rehunt_notes(self, claimed: Claimed) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """What the comment says of re-hunts: always, and only if this run finds nothing."""
        delays = self.settings.sentinel.rehunt_after
        done = rehunt_number(claimed.event)
        always: tuple[str, ...] = ()
        if done:
            always = (
                f"re-hunt {done} of {len(delays)}: the earlier hunt of this incident "
                "found no device code sign-in",
            )
        if done >= len(delays):
            return always, ()
        at = parse_time(claimed.received_at).value + parse_duration(delays[done])
        return always, (
            "no device code sign-in was found, and sign-in logs can reach the workspace "
            f"minutes late: tokenward hunts again at {isoformat_z(at)}",
        )

    async def _after_failure(self, claimed: Claimed, error: str) -> None:
        inbox = self.settings.inbox
        if claimed.attempts < inbox.max_attempts:
            after = inbox.retry_seconds * claimed.attempts
            await asyncio.to_thread(
                self.inbox.retry_later,
                claimed.id,
                self.owner,
                after_s=after,
                error=error[:500],
            )
            return
        await asyncio.to_thread(
            self.inbox.finish,
            claimed.id,
            self.owner,
            status=FAILED,
            outcome={
                "run_status": "failed",
                "error": error[:500],
                "attempts": claimed.attempts,
            },
        )

    @contextlib.asynccontextmanager
    async def _heartbeat(self, claimed: Claimed) -> AsyncIterator[None]:
        lease = self.settings.inbox.lease_seconds

        async def beat() -> None:
            while True:
                await asyncio.sleep(lease / 3)
                held = await asyncio.to_thread(
                    self.inbox.renew, claimed.id, self.owner, lease_s=lease
                )
                if not held:
                    logger.warning(
                        "run %s lost its lease on delivery %s",
                        claimed.run_id,
                        claimed.id,
                    )
                    return

        task = asyncio.create_task(beat(), name=f"heartbeat-{claimed.id}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TokenwardError):
                await task


@dataclass(frozen=True)
class Done:
    """How a row's run ended: its outcome, or an error to retry it for."""

    outcome: dict[str, object]
    error: str | None = None
    follow_up: FollowUp | None = None


def rehunt_number(event: str) -> int:
    """Which re-hunt a delivery's event names: ``Create+rehunt-2`` is 2, ``Create`` 0."""
    _, _, label = event.partition("+rehunt-")
    return int(label) if label.isdigit() else 0


def _outcome(report: RunReport) -> dict[str, object]:
    actions: dict[str, int] = {}
    for action in report.actions:
        key = f"{action.action.value}:{action.status.value}"
        actions[key] = actions.get(key, 0) + 1
    return {
        "run_status": report.status.value,
        "findings": report.tier_counts(),
        "actions": actions,
        "plan_id": report.plan_id,
    }
