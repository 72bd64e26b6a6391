"""``tokenward watch``: the scheduled hunt and the reconciliation in one process.

For a deployment with no webhook (nothing calls tokenward): the inbox worker,
the job schedules and a Prometheus listener share one event loop. Cycles go
through the inbox exactly as under ``tokenward serve``, so a watch process
and a serve process on the same store never run two cycles of a job at once
and never act on a sign-in twice; stopping (SIGINT, SIGTERM) stops the
schedules and lets the cycle in flight finish, and a killed process's cycle
is taken over by the next start when its lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client import start_http_server

from playbooks.errors import Location, SettingsError
from playbooks.inbox import SERVICE_RUN
from playbooks.metrics import registry_for
from playbooks.schedule import JobScheduler, jobs_configured
from playbooks.server import build_worker
from playbooks.settings import Settings
from playbooks.wiring import (
    SourceSpec,
    require_credential,
    require_permissions,
    require_source,
    writing_modes,
)
from playbooks.worker import Worker

logger = logging.getLogger(__name__)


def prepare_watch(settings: Settings, spec: SourceSpec) -> Worker:
    """The worker :func:`watch` runs, once everything it needs is checked:
    a job to run, the source, the credential and the playbook.

    Raises :class:`~playbooks.errors.TokenwardError` naming what is wrong, so
    nothing is scheduled by a process that could not run it.
    """
    if not jobs_configured(settings):
        raise SettingsError(
            "tokenward watch has nothing to do: set schedule.hunt = true "
            "or schedule.reconcile = true"
        )
    require_source(spec)
    require_credential(settings, spec)
    if writing_modes(settings):
        from playbooks.playbook import load_playbook

        require_permissions(
            settings,
            load_playbook(settings.playbook.path),
            why=f"tokenward watch ({', '.join(writing_modes(settings))})",
        )
    return build_worker(settings, spec)


async def watch(
    settings: Settings,
    worker: Worker,
    stop: asyncio.Event,
    *,
    on_started: Callable[[], None] = lambda: None,
) -> None:
    """Run the scheduled jobs with *worker* (from :func:`prepare_watch`) until
    *stop* is set; *on_started* is called once the metrics listener is up."""
    scheduler = JobScheduler(settings.schedule, worker.inbox)
    listener = None
    if settings.metrics.enabled:
        metrics = settings.metrics
        try:
            listener, _ = start_http_server(
                metrics.port, addr=metrics.host, registry=registry_for(worker.audit.store)
            )
        except OSError as failure:
            raise SettingsError(
                f"cannot listen for metrics on {metrics.host}:{metrics.port}: "
                f"{failure.strerror or failure}",
                source=Location(key="metrics.port"),
            ) from None
        logger.info("metrics on http://%s:%d/metrics", metrics.host, metrics.port)
    on_started()
    await asyncio.to_thread(
        worker.audit.record,
        SERVICE_RUN,
        "service.started",
        {"face": "watch", "worker": worker.owner, "jobs": scheduler.jobs},
    )
    working = asyncio.create_task(worker.run_forever(stop), name="worker")
    scheduler.start()
    try:
        await working
    finally:
        scheduler.stop()
        if not working.done():
            stop.set()
            await asyncio.gather(working, return_exceptions=True)
        if listener is not None:
            listener.shutdown()
        await asyncio.to_thread(
            worker.audit.record, SERVICE_RUN, "service.stopped", {"face": "watch"}
        )
        with contextlib.suppress(Exception):  # busy: the next stop folds it in
            await asyncio.to_thread(worker.audit.store.checkpoint)


__all__ = ["prepare_watch", "watch"]
