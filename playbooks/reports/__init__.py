"""Renderings of a run: the terminal, JSON for machines, Markdown and HTML for people."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from playbooks.models import ActionStatus, RunReport, ServiceRequest
from playbooks.whatif import Thresholds, WhatIf

SCHEMA_PATH = Path(str(files("playbooks") / "reports" / "report.schema.json"))

#: Where each service's request paths are rooted, in the public cloud.
DEFAULT_BASES = {
    "graph": "https://graph.microsoft.com/v1.0",
    "sentinel": "https://management.azure.com",
}


@dataclass(frozen=True)
class ReportContext:
    """What a rendering may say beyond the run itself."""

    title: str | None = None
    # The scenario's story, for an exercise.
    description: str | None = None
    scenario: str | None = None
    # How the run differs from the scenario's expected outcome (empty: met);
    # None when there is nothing to check against.
    expected: Sequence[str] | None = None
    # The playbook's tier thresholds, for charts that show them.
    thresholds: Thresholds | None = None
    what_if: WhatIf | None = None


#: An action's status in words, for people who do not read enum values.
STATUS_WORDS = {
    ActionStatus.WOULD_SEND: "would be sent",
    ActionStatus.AWAITING_APPROVAL: "waits for an approver",
    ActionStatus.BLOCKED: "blocked",
    ActionStatus.SKIPPED: "skipped",
    ActionStatus.SUCCEEDED: "succeeded",
    ActionStatus.UNCONFIRMED: "sent, not confirmed",
    ActionStatus.INEFFECTIVE: "sent, does not contain",
    ActionStatus.FAILED: "failed",
    ActionStatus.UNKNOWN: "outcome unknown",
}


def request_line(request: ServiceRequest, bases: dict[str, str] | None = None) -> str:
    """``POST https://graph.microsoft.com/v1.0/users/…`` for a request."""
    base = (bases or DEFAULT_BASES)[request.service].rstrip("/")
    return f"{request.method} {base}{request.path}"


def request_body(request: ServiceRequest) -> str:
    return json.dumps(request.body, sort_keys=True) if request.body is not None else ""


def relative(minutes_before: float) -> str:
    """``3 min before`` or ``20 min after`` the sign-in."""
    amount = abs(minutes_before)
    shown = f"{amount:g}" if amount >= 1 else f"{round(amount * 60)} s"
    unit = "" if amount < 1 else " min"
    return f"{shown}{unit} {'before' if minutes_before >= 0 else 'after'}"


def report_schema() -> dict[str, Any]:
    """The JSON Schema of the report, generated from the models."""
    schema = RunReport.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://tokenward.invalid/schemas/run-report/1"
    return schema


def to_json(report: RunReport) -> str:
    return report.model_dump_json(indent=2)
