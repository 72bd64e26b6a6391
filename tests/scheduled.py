"""Helpers for the scheduled path: the seed phish happening now, and tokenward watch
running in a background thread against the emulator."""

from __future__ import annotations

import asyncio
import copy
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from playbooks.exercises import find_scenario, load_scenario
from playbooks.settings import Settings, settings_from_dict
from playbooks.store import open_store
from playbooks.times import isoformat_z, parse_time
from playbooks.watch import prepare_watch, watch
from playbooks.wiring import SourceSpec
from tests.emulator import ENVIRON, settings_data
from tests.graph_helpers import ALL_ROLES, GRAPH_AUDIENCE, graph_calls

SEED = load_scenario(find_scenario("seed-true-positive"))
TARGET = "target.user@contoso.com"
TARGET_ID = "6f1a7a3e-1c2b-4d8e-9a41-3b7c2d9e0f11"
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def phish_tables(sign_in: datetime) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The seed true positive with every time moved so its device code sign-in
    is at *sign_in*: the other rows, and the device code sign-in row itself."""
    tables = SEED.tables()
    phish = next(r for r in tables["SigninLogs"] if r.get("AuthenticationProtocol") == "deviceCode")
    shift = sign_in - parse_time(phish["TimeGenerated"]).value
    moved: dict[str, list[dict[str, Any]]] = {}
    row_out: dict[str, Any] = {}
    for name, rows in tables.items():
        for row in rows:
            item = copy.deepcopy(row)
            for key, value in item.items():
                if isinstance(value, str) and _INSTANT.match(value):
                    item[key] = isoformat_z(parse_time(value).value + shift)
            if row is phish:
                row_out = item
            else:
                moved.setdefault(name, []).append(item)
    return moved, row_out


def recent(created_minutes_ago: float, **properties: Any) -> dict[str, Any]:
    """A fresh incident (trigger body) of the seed phish, created that many minutes ago."""
    from tests.service import incident

    created = minutes_ago(created_minutes_ago)
    return incident(
        createdTimeUtc=isoformat_z(created),
        firstActivityTimeUtc=isoformat_z(created - timedelta(minutes=6)),
        lastActivityTimeUtc=isoformat_z(created - timedelta(minutes=3)),
        **properties,
    )


def scheduled_settings(emu: Any, directory: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a scheduled hunt against *emu*, every half second, in auto."""
    base: dict[str, dict[str, Any]] = {
        "store": {"url": f"sqlite:///{directory / 'tokenward.db'}"},
        "inbox": {"poll_seconds": 0.05, "lease_seconds": 5, "retry_seconds": 0.2},
        "threat_intel": {"ip_ranges": ["185.220.101.0/24"]},
        "graph": {"verify_delay": 0, "identity_protection_wait": 0},
        "schedule": {
            "hunt": True,
            "hunt_every_seconds": 0.5,
            "max_ingestion_delay": "10m",
            "first_window": "1h",
            "mode": "auto",
            "jitter_seconds": 0,
        },
        "metrics": {"enabled": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    settings = settings_from_dict(settings_data(emu, **base), environ=ENVIRON)
    return SEED.with_settings(settings)


def tenant(emu: Any) -> None:
    """The target user in Graph, and every Graph role tokenward may need."""
    emu.identity.roles[GRAPH_AUDIENCE] = list(ALL_ROLES)
    emu.graph.add_user(TARGET, TARGET_ID)


def revokes(emu: Any) -> list[str]:
    """The revokeSignInSessions calls Graph received, by path."""
    return [
        path
        for method, path, _ in graph_calls(emu, writes_only=True)
        if "revokeSignInSessions" in path
    ]


@contextmanager
def watching(settings: Settings, source: str = "log_analytics") -> Iterator[list[BaseException]]:
    """``tokenward watch`` in a thread of its own until the block ends; the
    list holds what it raised, if it stopped on an error."""
    failures: list[BaseException] = []
    ready = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        async def main() -> None:
            box["loop"] = asyncio.get_running_loop()
            box["stop"] = asyncio.Event()
            ready.set()
            await watch(settings, worker, box["stop"])

        try:
            worker = prepare_watch(settings, SourceSpec.parse(source))
            asyncio.run(main())
        except BaseException as failure:  # reported to the test
            failures.append(failure)
            ready.set()

    thread = threading.Thread(target=run, name="tokenward-watch", daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield failures
    finally:
        if "loop" in box:
            box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)
        assert not thread.is_alive(), "tokenward watch did not stop"


def wait_for(check: Callable[[], Any], *, timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


def records(settings: Settings, kind: str) -> list[Any]:
    """The audit records of *kind* in the settings' store, oldest first."""
    from playbooks.audit import AuditLog

    return [r for r in AuditLog(open_store(settings.store.url)).records() if r.kind == kind]


def job(settings: Settings, name: str) -> dict[str, Any] | None:
    return open_store(settings.store.url).job(name)


def minutes_ago(minutes: float) -> datetime:
    from playbooks.times import utcnow

    return utcnow() - timedelta(minutes=minutes)
