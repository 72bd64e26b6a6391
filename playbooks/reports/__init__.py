"""Renderings of a run: the terminal, JSON for machines, Markdown for people."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from playbooks.models import FollowOnActivity, RunReport, ServiceRequest

SCHEMA_PATH = Path(str(files("playbooks") / "reports" / "report.schema.json"))

#: Where each service's request paths are rooted, in the public cloud.
DEFAULT_BASES = {
    "graph": "https://graph.microsoft.com/v1.0",
    "sentinel": "https://management.azure.com",
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


def follow_on_lines(activity: FollowOnActivity | None) -> list[str]:
    """What a stolen token did next, in sentences: one per area, one for the session."""
    if activity is None:
        return []
    lines = []
    for area in activity.graph_activity:
        samples = "; ".join(area.samples[:3])
        lines.append(
            f"after the sign-in the token touched {area.area}: {area.requests} Graph "
            f"request(s) ({', '.join(area.methods) or '?'}) from {', '.join(area.ip_addresses) or '?'}"
            + (f", e.g. {samples}" if samples else "")
        )
    if not activity.graph_activity:
        lines.append("no Graph requests with this sign-in's token were logged")
    session = activity.session
    if session is not None:
        lines.append(
            f"{session.sign_ins} later non-interactive sign-in(s) in the same session to "
            f"{', '.join(session.resources) or '?'} via {', '.join(session.apps) or '?'} from "
            f"{', '.join(session.ip_addresses) or '?'} ({', '.join(session.countries) or '??'})"
        )
    if not activity.complete:
        lines.append("a follow-on query failed or was partial: more may have happened")
    return lines


def report_schema() -> dict[str, Any]:
    """The JSON Schema of the report, generated from the models."""
    schema = RunReport.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://tokenward.invalid/schemas/run-report/1"
    return schema


def to_json(report: RunReport) -> str:
    return report.model_dump_json(indent=2)
