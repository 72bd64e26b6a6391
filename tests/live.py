"""Helpers for live-source tests: a run against the emulator through the real SDKs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from connectors.clients import Clients
from connectors.credentials import build_credential
from connectors.live import live_source
from playbooks.audit import AuditLog
from playbooks.engine import RunRequest, Runner
from playbooks.models import Mode, RunReport, Window
from playbooks.playbook import Playbook, load_playbook
from playbooks.settings import Settings, settings_from_dict
from tests.emulator import ENVIRON, settings_data

NOW = datetime.fromisoformat("2026-01-15T12:00:00+00:00")


@dataclass
class LiveRun:
    report: RunReport
    audit: AuditLog

    def records(self, kind: str | None = None) -> list[Any]:
        return [r for r in self.audit.records() if kind is None or r.kind == kind]


def live_settings(emu: Any, **sections: Any) -> Settings:
    return settings_from_dict(settings_data(emu, **sections), environ=ENVIRON)


def run_live(
    emu: Any,
    audit: AuditLog,
    *,
    mode: str = "log_analytics",
    settings: Settings | None = None,
    playbook: Playbook | None = None,
    users: tuple[str, ...] = (),
    start: datetime | None = None,
    end: datetime | None = None,
) -> LiveRun:
    """One dry-run hunt with every table from *mode* (or ``live``: per settings)."""
    chosen = settings or live_settings(emu)
    book = playbook or load_playbook()
    window = Window(start=start or NOW - timedelta(hours=12), end=end or NOW)

    async def run() -> RunReport:
        async with Clients(chosen.azure, build_credential(chosen.azure)) as clients:
            source = live_source(chosen, clients, mode=mode)
            request = RunRequest(trigger="test", mode=Mode.DRY_RUN, window=window, now=NOW, users=users)
            return await Runner(book, chosen, source, audit).run(request)

    return LiveRun(asyncio.run(run()), audit)
