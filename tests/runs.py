"""Runs for specification tests: the seed scenario's tables behind the local engine."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb_kql

from connectors.exports.loader import ExportLoader
from connectors.exports.local import LocalKqlSource
from playbooks.exercises import Scenario, find_scenario, load_scenario
from playbooks.ports import IncidentWrite
from playbooks.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures"


def trigger_body() -> dict[str, Any]:
    """The realistic trigger body: the seed scenario's victim, as Sentinel sends it."""
    return json.loads((FIXTURES / "sentinel-incident-trigger.json").read_text())


def seed_scenario() -> Scenario:
    return load_scenario(find_scenario("seed-true-positive"))


def export_scenario(scenario: Scenario, directory: Path) -> Path:
    """The scenario's tables as export files, as `tokenward exercise` writes them."""
    directory.mkdir(parents=True, exist_ok=True)
    for table, rows in scenario.tables().items():
        if rows:
            with (directory / f"{table}.jsonl").open("w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in rows)
    return directory


def local_source(scenario: Scenario, directory: Path) -> LocalKqlSource:
    con = duckdb_kql.connect()
    ExportLoader(con).load_directory(export_scenario(scenario, directory))
    return LocalKqlSource(con, now=scenario.clock, origin=f"scenario {scenario.name}")


def scenario_settings(scenario: Scenario, base: Settings | None = None) -> Settings:
    return scenario.with_settings(base or Settings())


@dataclass
class RecordingWriter:
    """An IncidentWriter that keeps what it was asked to write."""

    comments: dict[tuple[str, str], str] = field(default_factory=dict)
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    fail_with: Exception | None = None

    async def comment(self, *, incident_id: str, comment_id: str, message: str) -> IncidentWrite:
        self.calls.append("comment")
        if self.fail_with is not None:
            raise self.fail_with
        created = (incident_id, comment_id) not in self.comments
        self.comments[(incident_id, comment_id)] = message
        return IncidentWrite(
            http_status=201 if created else 200, created=created, detail="comment created"
        )

    async def label(self, *, incident_id: str, labels: Sequence[str]) -> IncidentWrite:
        self.calls.append("label")
        self.labels[incident_id] = tuple(labels)
        return IncidentWrite(http_status=200, detail="labels set: " + ", ".join(labels))
