"""Renderings of a run: the terminal, JSON for machines, Markdown and HTML for people.

Helpers shared by the renderers live here: request lines, status words, signal
labels and groups, and the :class:`ReportContext` a rendering may be given.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from importlib.resources import files
from pathlib import Path
from typing import Any

from playbooks.models import (
    ActionKind,
    ActionStatus,
    FollowOnActivity,
    RunReport,
    ServiceRequest,
)
from playbooks.whatif import PlannedItem, Thresholds, WhatIf

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
    # How long before and after a sign-in mail and clicks were searched.
    correlation: tuple[timedelta, timedelta] | None = None
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


_ACTION_TITLES = {
    ActionKind.REVOKE_SESSIONS: "Revoke sessions",
    ActionKind.DISABLE_ACCOUNT: "Disable account",
    ActionKind.CONFIRM_COMPROMISED: "Confirm compromised",
    ActionKind.COMMENT_ON_INCIDENT: "Comment on the incident",
}


def action_title(kind: ActionKind) -> str:
    return _ACTION_TITLES.get(kind, kind.value.replace("_", " ").capitalize())


def planned_words(items: Sequence[PlannedItem]) -> str:
    """``revoke sessions (would be sent), disable account (…)``, or ``nothing``."""
    if not items:
        return "nothing"
    return ", ".join(
        f"{action_title(item.action).lower()} ({STATUS_WORDS[item.status]})" for item in items
    )


#: Short names of the scoring signals, for charts and tables.
SIGNAL_LABELS = {
    "high_value_app": "High-value app",
    "unmanaged_device": "Unmanaged device",
    "non_compliant_device": "Non-compliant device",
    "sign_in_risk": "Sign-in risk",
    "aggregated_risk": "User risk (aggregated)",
    "anonymous_ip_risk": "Anonymising network",
    "unusual_country": "Country new for the user",
    "country_not_allowed": "Country not allowed",
    "threat_intel_ip": "Threat-intel address",
    "scripted_user_agent": "Scripted client",
    "url_click_before": "Link clicked just before",
    "click_to_device_login": "Link leads to device login",
    "click_lure_host": "Link on a lure host",
    "clicked_through_warning": "Warning clicked through",
    "phishing_email": "Mail flagged as phishing",
    "lure_email": "Link came in a mail",
    "suspicious_email": "Outside mail with links",
    "ip_differs_from_click": "Redeemed from another address",
    "first_device_code_use": "First device code use",
    "token_burst": "Token used in a burst",
    "sign_in_not_successful": "No token issued",
    "sanctioned_use": "Sanctioned use",
}


class SignalGroup(StrEnum):
    """What part of the story a signal is about, for the score chart's colours."""

    LURE = "lure"
    SIGN_IN = "sign_in"
    HISTORY = "history"
    LOWERS = "lowers"
    OTHER = "other"

    @property
    def heading(self) -> str:
        return {
            "lure": "Lure: mail and click",
            "sign_in": "Sign-in: app, device, network, risk",
            "history": "History and token use",
            "lowers": "Lowers the score",
            "other": "Other",
        }[self.value]


_GROUPS = {
    SignalGroup.LURE: (
        "url_click_before",
        "click_to_device_login",
        "click_lure_host",
        "clicked_through_warning",
        "phishing_email",
        "lure_email",
        "suspicious_email",
        "ip_differs_from_click",
    ),
    SignalGroup.SIGN_IN: (
        "high_value_app",
        "unmanaged_device",
        "non_compliant_device",
        "sign_in_risk",
        "aggregated_risk",
        "anonymous_ip_risk",
        "unusual_country",
        "country_not_allowed",
        "threat_intel_ip",
        "scripted_user_agent",
    ),
    SignalGroup.HISTORY: ("first_device_code_use", "token_burst"),
}


def signal_label(signal: str) -> str:
    return SIGNAL_LABELS.get(signal, signal.replace("_", " ").capitalize())


def signal_group(signal: str, weight: int) -> SignalGroup:
    if weight < 0:
        return SignalGroup.LOWERS
    for group, members in _GROUPS.items():
        if signal in members:
            return group
    return SignalGroup.OTHER


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
