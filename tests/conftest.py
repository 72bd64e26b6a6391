"""Shared fixtures: the network fence, a state database, loaded tables."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb_kql
import pytest

from connectors.exports.loader import ExportLoader
from connectors.exports.local import LocalKqlSource
from playbooks.audit import AuditLog
from playbooks.engine import Runner, RunRequest
from playbooks.models import Mode, RunReport, Window
from playbooks.playbook import load_playbook
from playbooks.ports import RenderedQuery
from playbooks.settings import Settings
from playbooks.store import open_store

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus"


@pytest.fixture(autouse=True)
def no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run offline: any connection beyond loopback fails the test."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = (
                host == "localhost" or isinstance(host, bytes | str) and str(host).startswith("/")
            )
        if not loopback:
            raise AssertionError(f"a test tried to reach {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture
def audit_log(tmp_path: Path) -> AuditLog:
    return AuditLog(open_store(f"sqlite:///{tmp_path / 'state.db'}"))


def write_table(
    directory: Path, table: str, rows: list[dict[str, Any]], *, lines: bool = True
) -> Path:
    """Rows as a Log Analytics export file named after the table."""
    directory.mkdir(parents=True, exist_ok=True)
    if lines:
        path = directory / f"{table}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    else:
        path = directory / f"{table}.json"
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


@pytest.fixture
def load_tables(tmp_path: Path) -> Iterator[Any]:
    """Load ``{table: rows}`` through the real loader; returns the connection."""
    connections: list[Any] = []

    def load(tables: dict[str, list[dict[str, Any]]]) -> Any:
        folder = tmp_path / f"export-{len(connections)}"
        for table, rows in tables.items():
            write_table(folder, table, rows)
        con = duckdb_kql.connect()
        ExportLoader(con).load_directory(folder)
        connections.append(con)
        return con

    yield load
    for con in connections:
        con.close()


def requires_corpus() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not CORPUS.is_dir(),
        reason=f"the public corpus is not beside the project ({CORPUS})",
    )


@pytest.fixture(scope="session")
def emulator() -> Iterator[Any]:
    """The Microsoft APIs on 127.0.0.1 over HTTPS, for the whole session."""
    from tests.emulator import start_emulator

    started = start_emulator()
    yield started
    started.stop()


@pytest.fixture
def emu(emulator: Any) -> Any:
    """The emulator with an empty request log, no faults and fresh service state."""
    emulator.reset()
    return emulator


def load_directory(directory: Path, **options: Any) -> tuple[Any, Any]:
    """A fresh connection with *directory* loaded through the real loader."""
    con = duckdb_kql.connect()
    return con, ExportLoader(con, **options).load_directory(directory)


def hunt_rows(con: Any, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The bundled hunt query's rows over *con*, as the engine receives them."""
    playbook = load_playbook()
    text = playbook.render("hunt", {"start": start, "end": end, "users": []})
    source = LocalKqlSource(con, now=end, origin="test")
    query = RenderedQuery(
        name="hunt",
        tables=("SigninLogs",),
        text=text,
        window=Window(start=start, end=end),
    )
    (outcome,) = asyncio.run(source.run_queries([query]))
    assert outcome.error is None, outcome.error
    return outcome.rows


def run_playbook(
    con: Any,
    audit_log: AuditLog,
    start: datetime,
    end: datetime,
    settings: Settings | None = None,
) -> RunReport:
    """A dry run of the bundled playbook over *con*: hunt, correlate, score, plan."""
    source = LocalKqlSource(con, now=end, origin="test")
    request = RunRequest(
        trigger="test", mode=Mode.DRY_RUN, window=Window(start=start, end=end), now=end
    )
    runner = Runner(load_playbook(), settings or Settings(), source, audit_log)
    return asyncio.run(runner.run(request))
