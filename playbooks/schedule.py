"""The schedules of tokenward's own jobs: the scheduled hunt and the reconciliation.

APScheduler keeps one interval schedule per configured job, with jitter. A
tick does one thing: it puts a cycle of its job in the inbox
(:meth:`playbooks.inbox.Inbox.enqueue_job`), and a worker runs the cycle like a
delivery (:mod:`playbooks.jobs` says what a cycle does). So:

* two cycles of a job never run at once: the tick itself has
  ``max_instances=1``, a tick that finds a cycle already waiting adds none,
  and rows of one job are claimed one at a time;
* a cycle longer than its interval delays the next, which then starts at
  once; ticks missed while the process was busy or stopped are coalesced;
* stopping drops only the schedule: a cycle already queued or being run
  stays in the inbox, finished by the worker or, if the process is killed,
  taken over when its lease runs out.

The scheduler runs in ``tokenward serve`` (beside the webhook, whether or not
the worker runs in another process) and in ``tokenward watch``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from playbooks.inbox import Inbox
from playbooks.jobs import HUNT, RECONCILE
from playbooks.settings import ScheduleSettings, Settings

logger = logging.getLogger(__name__)


def jobs_configured(settings: Settings) -> bool:
    """Whether any scheduled job is turned on."""
    return settings.schedule.hunt or settings.schedule.reconcile


def job_intervals(schedule: ScheduleSettings) -> list[tuple[str, float]]:
    """The jobs turned on and the seconds between their cycles."""
    chosen: list[tuple[str, float]] = []
    if schedule.hunt:
        chosen.append((HUNT, schedule.hunt_every_seconds))
    if schedule.reconcile:
        chosen.append((RECONCILE, schedule.reconcile_every_seconds))
    return chosen


class JobScheduler:
    """Queues each job's cycles on its schedule, in the running event loop."""

    def __init__(self, schedule: ScheduleSettings, inbox: Inbox) -> None:
        self._schedule = schedule
        self._inbox = inbox
        self._scheduler: AsyncIOScheduler | None = None
        # Cycles this scheduler queued, by job (for logs and tests).
        self.queued: dict[str, int] = {}

    @property
    def jobs(self) -> list[str]:
        return [name for name, _ in job_intervals(self._schedule)]

    @property
    def running(self) -> bool:
        return self._scheduler is not None and self._scheduler.running

    def start(self) -> None:
        """Start the schedules; the first cycle of each job is due at once."""
        if self._scheduler is not None:
            return
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone=UTC)
        now = datetime.now(UTC)
        for name, every in job_intervals(self._schedule):
            scheduler.add_job(
                self._tick,
                IntervalTrigger(seconds=every, jitter=self._schedule.jitter_seconds or None),
                args=[name],
                id=name,
                name=f"tokenward {name}",
                max_instances=1,
                coalesce=True,
                # A tick that comes late (a busy loop, a suspended host) still runs.
                misfire_grace_time=None,
                next_run_time=now,
            )
            logger.info("scheduled %s every %g s", name, every)
        scheduler.start()
        self._scheduler = scheduler

    def stop(self) -> None:
        """Stop queueing cycles; what is already queued stays in the inbox."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)

    async def _tick(self, job: str) -> None:
        try:
            run_id = await asyncio.to_thread(self._inbox.enqueue_job, job)
        except Exception as failure:
            # The store is unreachable: the next tick tries again; no window is lost,
            # as a window starts where the last completed one ended.
            logger.warning("no %s cycle queued this time: %s", job, type(failure).__name__)
            return
        if run_id is None:
            logger.info("a %s cycle is still waiting; none added", job)
            return
        self.queued[job] = self.queued.get(job, 0) + 1
        logger.info("queued %s cycle %s", job, run_id)


__all__ = ["JobScheduler", "job_intervals", "jobs_configured"]
