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
from datetime import datetime

from playbooks.audit import AuditLog
from playbooks.engine import Runner, RunRequest
from playbooks.errors import TokenwardError
from playbooks.inbox import DONE, FAILED, Claimed, FollowUp, Inbox
from playbooks.incidents import scope_from_incident
from playbooks.models import Mode, RunReport, RunStatus
from playbooks.playbook import Playbook
from playbooks.ports import IncidentWriter, QuerySource, Responder
from playbooks.settings import Settings
from playbooks.times import isoformat_z, parse_duration, parse_time, utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunTools:
    """The connectors one run uses."""

    source: QuerySource
    responder: Responder
    writer: IncidentWriter | None
    # A pinned clock (exports of a past day); None: the wall clock.
    now: datetime | None = None


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

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Process deliveries with ``inbox.concurrency`` runs at once until *stop*."""
        logger.info("worker %s started", self.owner)
        lanes = [
            asyncio.create_task(self._lane(stop), name=f"lane-{n}")
            for n in range(self.settings.inbox.concurrency)
        ]
        try:
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
                    await asyncio.wait_for(
                        stop.wait(), self.settings.inbox.poll_seconds
                    )

    async def run_once(self) -> bool:
        """Claim and process one delivery; False when none was due."""
        inbox = self.settings.inbox
        loop = asyncio.get_running_loop()
        self.last_poll = loop.time()
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
            report = await self._run(claimed)
        except Exception as failure:
            # A bug or an unreachable store: recorded, retried like a failed run.
            logger.exception("run %s stopped on an internal error", claimed.run_id)
            await self._after_failure(
                claimed, f"internal error: {type(failure).__name__}"
            )
            return
        if report.status is RunStatus.FAILED:
            await self._after_failure(claimed, report.error or "the run failed")
            return
        await asyncio.to_thread(
            self.inbox.finish,
            claimed.id,
            self.owner,
            status=DONE,
            outcome=_outcome(report),
            follow_up=self._rehunt(claimed, report),
        )

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

    async def _run(self, claimed: Claimed) -> RunReport:
        # The scope, as the delivery's body says it; the clock is the run's.
        sentinel = self.settings.sentinel
        async with self.tools() as tools:
            now = tools.now or utcnow()
            scope = scope_from_incident(
                json.loads(claimed.body),
                now=now,
                margin_before=parse_duration(sentinel.window_before),
                margin_after=parse_duration(sentinel.window_after),
            )
            warnings = scope.unresolved + scope.warnings + self._rehunt_note(claimed)
            if claimed.attempts > 1:
                warnings += (
                    f"attempt {claimed.attempts}: an earlier attempt did not finish",
                )
            request = RunRequest(
                trigger=f"sentinel:{claimed.event}",
                mode=Mode(self.settings.webhook.mode),
                window=scope.window,
                now=now,
                users=scope.users,
                incident=scope.incident,
                low_confidence_users=scope.low_confidence_users,
                warnings=warnings,
                run_id=claimed.run_id,
            )
            runner = Runner(
                self.playbook,
                self.settings,
                tools.source,
                self.audit,
                responder=tools.responder,
                writer=tools.writer,
            )
            return await runner.run(request)

    def _rehunt_note(self, claimed: Claimed) -> tuple[str, ...]:
        delays = self.settings.sentinel.rehunt_after
        done = rehunt_number(claimed.event)
        notes = []
        if done:
            notes.append(
                f"re-hunt {done} of {len(delays)}: the earlier hunt of this incident "
                "found no device code sign-in"
            )
        if done < len(delays):
            at = parse_time(claimed.received_at).value + parse_duration(delays[done])
            notes.append(
                "sign-in logs can reach the workspace minutes late: if this run finds no "
                f"device code sign-in, tokenward hunts again at {isoformat_z(at)}"
            )
        return tuple(notes)

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
