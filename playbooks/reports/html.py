"""A run as one self-contained HTML page: what a tabletop team looks at together.

The page opens on a summary of the whole run, then gives each finding its
timeline (drawn to scale), its score signal by signal, the evidence rows, and
the exact requests tokenward planned with the guardrails that held them; the
plan, the queries and the notes close it.

Built from a :class:`~playbooks.models.RunReport` alone (plus the optional
:class:`~playbooks.reports.ReportContext`): the view is plain data made here,
the markup is a Jinja2 template shipped as package data, and the charts are
matplotlib SVG inlined by :mod:`playbooks.reports.charts`. Nothing in the
page loads from anywhere: no script, no font, no image, no stylesheet link,
and a Content-Security-Policy that forbids them, so a browser would refuse
one even if it crept in.

Every value from the logs is escaped by the template (autoescape); the only
markup inserted raw is the charts' SVG, which matplotlib escapes itself.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from playbooks.models import (
    ActionReport,
    ActionStatus,
    Finding,
    FlowEvidence,
    Gate,
    Mode,
    RunReport,
    SignIn,
    SignInOutcome,
)
from playbooks.reports import (
    STATUS_WORDS,
    ReportContext,
    action_title,
    planned_words,
    relative,
    request_line,
    signal_group,
    signal_label,
)
from playbooks.reports.charts import score_svg, timeline_svg
from playbooks.reports.timeline import (
    Mark,
    actions_for,
    offset_text,
    timeline_for,
)
from playbooks.times import isoformat_z
from playbooks.whatif import FindingChange, WhatIf


def to_html(report: RunReport, *, context: ReportContext | None = None) -> str:
    """The whole page as text."""
    view = build_view(report, context or ReportContext())
    return _environment().get_template("report.html.j2").render(view=view)


# -- the view: everything the template shows, as plain data -------------------


@dataclass(frozen=True)
class ActionView:
    number: int
    id: str
    title: str
    kind: str
    target: str
    status: str
    status_words: str
    gate: str
    request_line: str
    body: str
    decisions: tuple[tuple[str, str, str], ...]
    notes: tuple[str, ...]
    detail: str


@dataclass(frozen=True)
class ReasonView:
    signal: str
    label: str
    weight: int
    detail: str
    group: str


@dataclass(frozen=True)
class MarkView:
    time: str
    offset: str
    lane: str
    lane_title: str
    kind: str
    title: str
    detail: str
    primary: bool


@dataclass(frozen=True)
class Fact:
    label: str
    value: str
    code: bool = False


@dataclass(frozen=True)
class FactSheet:
    """One evidence row as labelled facts: easier to read than a wide table."""

    kind: str
    title: str
    when: str
    facts: tuple[Fact, ...]


@dataclass(frozen=True)
class FindingView:
    number: int
    anchor: str
    user: str
    user_id: str
    tier: str
    score: int
    raw_total: int
    headline: str
    # For the summary table: the sign-in, the lure, and what would be done.
    sign_in_line: str
    lure_line: str
    action_line: str
    timeline_svg: Markup
    marks: tuple[MarkView, ...]
    score_svg: Markup
    reasons: tuple[ReasonView, ...]
    evidence: tuple[FactSheet, ...]
    # The flow's other rows (interrupts, token redemptions), as a table.
    flow_rows: tuple[dict[str, str], ...]
    baseline: str
    actions: tuple[ActionView, ...]
    actions_elsewhere: str
    guest: bool
    allowlisted: bool
    change: FindingChange | None


@dataclass(frozen=True)
class View:
    title: str
    description: str
    scenario: str
    dry_run: bool
    mode: str
    status: str
    error: str
    run_id: str
    clock: str
    window: str
    source: str
    playbook: str
    thresholds: str
    counts: dict[str, int]
    action_counts: tuple[tuple[str, str, int], ...]
    expected: tuple[str, ...] | None
    findings: tuple[FindingView, ...]
    actions: tuple[ActionView, ...]
    plan_id: str
    plan_hash: str
    queries: tuple[dict[str, str], ...]
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    what_if: WhatIf | None
    generator: str


def build_view(report: RunReport, context: ReportContext) -> View:
    """The page's content, computed once, for the template to lay out."""
    all_actions = tuple(_action_view(n, a) for n, a in enumerate(report.actions, start=1))
    by_id = {action.id: action for action in all_actions}
    findings = tuple(
        _finding_view(number, finding, report, context, by_id)
        for number, finding in enumerate(report.findings, start=1)
    )
    statuses = Counter(action.status for action in report.actions)
    thresholds = context.thresholds
    return View(
        title=context.title or f"tokenward {report.mode.value} run {report.run_id}",
        description=context.description or "",
        scenario=context.scenario or "",
        dry_run=report.mode is Mode.DRY_RUN,
        mode=report.mode.value,
        status=report.status.value,
        error=report.error or "",
        run_id=report.run_id,
        clock=_when(report.now),
        window=f"{_when(report.window.start)} to {_when(report.window.end)}",
        source=report.source,
        playbook=report.playbook,
        thresholds=thresholds.describe() if thresholds else "",
        counts=report.tier_counts(),
        action_counts=tuple(
            (status.value, STATUS_WORDS[status], statuses[status])
            for status in ActionStatus
            if statuses[status]
        ),
        expected=tuple(context.expected) if context.expected is not None else None,
        findings=findings,
        actions=all_actions,
        plan_id=report.plan_id or "",
        plan_hash=report.plan_hash or "",
        queries=tuple(
            {
                "name": query.name,
                "tables": ", ".join(query.tables),
                "rows": str(query.row_count),
                "ms": str(query.duration_ms),
                "status": query.status.value,
                "text": query.text.rstrip(),
            }
            for query in report.queries
        ),
        warnings=report.warnings,
        notes=report.notes,
        what_if=context.what_if,
        generator=_generator(),
    )


def _finding_view(
    number: int,
    finding: Finding,
    report: RunReport,
    context: ReportContext,
    actions_by_id: dict[str, ActionView],
) -> FindingView:
    timeline = timeline_for(finding, report)
    mine = actions_for(finding, report)
    primary = finding.primary
    chart = f"f{number}"
    who = finding.user_principal_name
    thresholds = context.thresholds
    return FindingView(
        number=number,
        anchor=f"finding-{number}",
        user=who,
        user_id=finding.user_id,
        tier=finding.tier.value,
        score=finding.score,
        raw_total=sum(reason.weight for reason in finding.reasons),
        headline=headline(finding, mine),
        sign_in_line=(
            f"{_when(primary.time)} · {primary.app_display_name or primary.app_id} · "
            f"{primary.ip_address}"
            + (f" ({primary.country})" if primary.country else "")
            + ("" if primary.outcome is SignInOutcome.SUCCESS else f" · {primary.outcome.value}")
        ),
        lure_line=_lure_line(finding),
        action_line=_action_line(mine),
        timeline_svg=Markup(
            timeline_svg(
                timeline,
                chart_id=f"{chart}-timeline",
                title=f"Timeline of {who}'s device code sign-in, {_when(primary.time)}",
                searched=context.correlation,
            )
        ),
        marks=tuple(_mark_view(mark) for mark in timeline.marks),
        score_svg=Markup(
            score_svg(
                finding.reasons,
                score=finding.score,
                thresholds=thresholds,
                chart_id=f"{chart}-score",
                title=f"Score {finding.score} for {who}, by signal",
            )
        ),
        reasons=tuple(
            ReasonView(
                signal=reason.signal,
                label=signal_label(reason.signal),
                weight=reason.weight,
                detail=reason.detail,
                group=signal_group(reason.signal, reason.weight).value,
            )
            for reason in finding.reasons
        ),
        evidence=_evidence(finding),
        flow_rows=tuple(
            {
                "time": _when(row.time),
                "offset": offset_text(row.time - primary.time),
                "row": _row_role(row),
                "resource": f"{row.app_display_name or row.app_id} → " + row.resource_display_name,
                "result": row.outcome.value + (f" ({row.result_type})" if row.result_type else ""),
                "ip": row.ip_address,
                "country": row.country,
                "user_agent": row.user_agent,
            }
            for row in finding.sign_ins
            if row is not primary
        ),
        baseline=_baseline(finding),
        actions=tuple(actions_by_id[action.id] for action in mine if action.id in actions_by_id),
        actions_elsewhere=_actions_elsewhere(finding, report),
        guest=finding.is_guest,
        allowlisted=finding.allowlisted,
        change=context.what_if.for_finding(finding.id) if context.what_if else None,
    )


def headline(finding: Finding, actions: tuple[ActionReport, ...]) -> str:
    """What happened and what tokenward would do, in two or three sentences."""
    primary = finding.primary
    who = finding.user_principal_name
    interrupted = primary.outcome is SignInOutcome.INTERRUPTED
    app = primary.app_display_name or primary.app_id or "An unknown app"
    where = primary.ip_address + (f" ({primary.country})" if primary.country else "")
    if primary.outcome is SignInOutcome.SUCCESS:
        story = f"{app} redeemed a device code for {who} from {where}"
    else:
        code = f" with {primary.result_type}" if primary.result_type else ""
        story = (
            f"A device code sign-in to {app} for {who} from {where} "
            f"{'was interrupted' if interrupted else 'failed'}{code}"
        )
    reached = [click for click in finding.evidence.url_clicks if click.reached]
    before = [click for click in reached if click.minutes_before_sign_in >= 0]
    if before:
        click = min(before, key=lambda item: item.minutes_before_sign_in)
        lure = any(
            email.network_message_id == click.network_message_id
            for email in finding.evidence.emails
            if click.network_message_id
        )
        story += (
            f", {_minutes_words(click.minutes_before_sign_in)} after the user opened "
            "a link"
            f"{' from a mail' if lure else ''}."
        )
    elif finding.evidence.emails:
        story += ", with mail delivered around it but no link opened before it."
    else:
        story += "; no mail or click was found around it."

    verdict = f" Score {finding.score}, {finding.tier.value} tier."
    if not actions:
        return story + verdict + " No action is planned."
    by_status: dict[ActionStatus, list[str]] = {}
    for action in actions:
        by_status.setdefault(action.status, []).append(action_title(action.action).lower())
    parts = [f"{_joined(titles)} {STATUS_WORDS[status]}" for status, titles in by_status.items()]
    return story + verdict + " Planned: " + "; ".join(parts) + "."


def _evidence(finding: Finding) -> tuple[FactSheet, ...]:
    """The scored sign-in, then each mail and click, as fact sheets."""
    row = finding.primary
    result = row.outcome.value + (f", error {row.result_type}" if row.result_type else "")
    if row.result_description:
        result += f": {row.result_description}"
    sheets = [
        FactSheet(
            kind="sign_in",
            title="The device code sign-in",
            when=_when(row.time),
            facts=(
                Fact("Application", row.app_display_name or "unnamed"),
                Fact("App id", row.app_id, code=True),
                Fact("Resource", row.resource_display_name or "unnamed"),
                Fact("Result", result),
                Fact("IP address", row.ip_address, code=True),
                Fact(
                    "Location",
                    ", ".join(part for part in (row.country, row.city) if part) or "unknown",
                ),
                Fact(
                    "Device",
                    _device(
                        row.is_managed.value,
                        row.is_compliant.value,
                        row.operating_system,
                    ),
                ),
                Fact("Sign-in risk", row.risk_level_during_sign_in or "none"),
                Fact("Aggregated risk", row.risk_level_aggregated or "none"),
                Fact("User agent", row.user_agent or "none recorded", code=True),
                Fact("Log", f"{row.source_table}, {_row_role(row)}"),
                Fact("Session", row.session_id or "none", code=True),
            ),
        )
    ]
    for email in finding.evidence.emails:
        sender = email.sender_from_address
        if email.sender_display_name:
            sender = f"{email.sender_display_name} <{sender}>"
        sheets.append(
            FactSheet(
                kind="mail",
                title=f"Mail, {relative(email.minutes_before_sign_in)}",
                when=_when(email.time),
                facts=(
                    Fact("Subject", email.subject or "no subject"),
                    Fact("From", sender, code=True),
                    Fact("To", email.recipient_email_address, code=True),
                    Fact("Direction", email.email_direction or "unknown"),
                    Fact(
                        "Delivery",
                        " · ".join(p for p in (email.delivery_action, email.delivery_location) if p)
                        or "unknown",
                    ),
                    Fact("Defender threats", email.threat_types or "none"),
                    Fact(
                        "Links",
                        "unknown" if email.url_count is None else str(email.url_count),
                    ),
                    Fact("Found by", _JOINS[email.joined_by]),
                ),
            )
        )
    for click in finding.evidence.url_clicks:
        chain = click.url_chain if len(click.url_chain) > 1 else ()
        sheets.append(
            FactSheet(
                kind="click",
                title=f"Link click, {relative(click.minutes_before_sign_in)}",
                when=_when(click.time),
                facts=(
                    Fact("URL", click.url, code=True),
                    *(Fact("Redirect chain", " → ".join(chain), code=True) for _ in chain[:1]),
                    Fact("Safe Links", ", ".join(click.action_types) or "none recorded"),
                    Fact("Page reached", "yes" if click.reached else "no, blocked"),
                    Fact(
                        "Warning clicked through",
                        "yes" if click.is_clicked_through else "no",
                    ),
                    Fact("Via", click.workload or "unknown"),
                    Fact(
                        "Clicked from",
                        click.ip_address or "not recorded",
                        code=bool(click.ip_address),
                    ),
                ),
            )
        )
    return tuple(sheets)


_JOINS = {
    "upn": "recipient address",
    "object_id": "recipient object id",
    "network_message_id": "the clicked link's message id",
}


def _row_role(row: SignIn) -> str:
    if row.flow_evidence is FlowEvidence.TRANSFER_METHOD:
        return "used the flow's token"
    return "redeemed the code"


def _lure_line(finding: Finding) -> str:
    """The mail and click before the sign-in, in a few words."""
    parts = []
    clicks = [c for c in finding.evidence.url_clicks if c.minutes_before_sign_in >= 0]
    if clicks:
        click = min(clicks, key=lambda item: item.minutes_before_sign_in)
        verb = "opened" if click.reached else "blocked"
        parts.append(f"link {verb} {relative(click.minutes_before_sign_in)}")
    mails = [e for e in finding.evidence.emails if e.minutes_before_sign_in >= 0]
    if mails:
        mail = max(mails, key=lambda item: item.minutes_before_sign_in)
        parts.append(f"mail {relative(mail.minutes_before_sign_in)}")
    return "; ".join(parts) or "none found"


def _action_line(actions: tuple[ActionReport, ...]) -> str:
    if not actions:
        return "no action"
    by_status: dict[ActionStatus, list[str]] = {}
    for action in actions:
        by_status.setdefault(action.status, []).append(action_title(action.action).lower())
    return "; ".join(
        f"{_joined(titles)}: {STATUS_WORDS[status]}" for status, titles in by_status.items()
    )


def _action_view(number: int, action: ActionReport) -> ActionView:
    body = ""
    if action.request.body is not None:
        body = json.dumps(action.request.body, sort_keys=True)
        if len(body) > 90:
            body = json.dumps(action.request.body, sort_keys=True, indent=2)
    return ActionView(
        number=number,
        id=action.id,
        title=action_title(action.action),
        kind=action.action.value,
        target=action.target,
        status=action.status.value,
        status_words=STATUS_WORDS.get(action.status, action.status.value),
        gate=_gate_words(action.gate),
        request_line=request_line(action.request),
        body=body,
        decisions=tuple(
            (decision.guardrail.replace("_", " "), decision.gate.value, decision.detail)
            for decision in action.decisions
        ),
        notes=action.notes,
        detail=action.detail,
    )


def _mark_view(mark: Mark) -> MarkView:
    return MarkView(
        time=_when(mark.time),
        offset=mark.offset_text,
        lane=mark.lane.value,
        lane_title=mark.lane.heading,
        kind=mark.kind,
        title=mark.title,
        detail=mark.detail,
        primary=mark.primary,
    )


def _actions_elsewhere(finding: Finding, report: RunReport) -> str:
    if actions_for(finding, report):
        return ""
    user = finding.user_principal_name.lower()
    if not any(
        target.user_principal_name.lower() == user
        for action in report.actions
        for target in action.targets
    ):
        return ""
    return (
        "This user's actions are planned once, under their highest-scoring finding, "
        "and shown there."
    )


def _baseline(finding: Finding) -> str:
    baseline = finding.baseline
    if baseline is None or not baseline.sign_ins:
        return "No sign-ins in the baseline window: nothing to compare against."
    countries = ", ".join(baseline.countries) or "none"
    codes = baseline.device_code_sign_ins
    return (
        f"{baseline.sign_ins} sign-ins in the {baseline.days} days before: countries "
        f"{countries}; {len(baseline.ip_addresses)} address(es); "
        f"{len(baseline.app_ids)} app(s); "
        f"{codes} device code sign-in{'' if codes == 1 else 's'}."
    )


def _device(managed: str, compliant: str, system: str) -> str:
    words = {
        "true": ("managed", "compliant"),
        "false": ("not managed", "not compliant"),
        "unknown": ("managed: not reported", "compliant: not reported"),
    }
    parts = [words[managed][0], words[compliant][1]]
    return " · ".join(([system] if system else []) + parts)


def _gate_words(gate: Gate) -> str:
    return {
        Gate.UNATTENDED: "runs unattended in auto mode",
        Gate.APPROVAL: "needs an approver",
        Gate.BLOCKED: "never runs",
    }[gate]


def _minutes_words(minutes: float) -> str:
    if minutes < 1:
        return f"{round(minutes * 60)} seconds"
    shown = f"{minutes:g}"
    return f"{shown} minute{'' if shown == '1' else 's'}"


def _joined(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _when(moment: datetime) -> str:
    """``2026-01-15 09:24:58 UTC``: the report's one way to show an instant."""
    text = isoformat_z(moment)
    return text[:10] + " " + text[11:19] + " UTC"


def _generator() -> str:
    try:
        return f"tokenward {version('tokenward')}"
    except PackageNotFoundError:
        return "tokenward"


@cache
def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("playbooks", "reports/templates"),
        autoescape=select_autoescape(["html", "j2"], default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.globals["planned_words"] = planned_words
    return environment
