"""A run on the terminal: findings with their reasons, evidence and requests."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from playbooks.models import ActionStatus, Finding, RunReport, RunStatus, Tier
from playbooks.reports import (
    ReportContext,
    follow_on_lines,
    planned_words,
    relative,
    request_body,
    request_line,
)
from playbooks.times import isoformat_z
from playbooks.whatif import FindingChange, WhatIf

_TIER_STYLE = {Tier.HIGH: "bold red", Tier.MEDIUM: "bold yellow", Tier.LOW: "green"}
_STATUS_STYLE = {
    ActionStatus.WOULD_SEND: "cyan",
    ActionStatus.AWAITING_APPROVAL: "yellow",
    ActionStatus.BLOCKED: "magenta",
    ActionStatus.SUCCEEDED: "green",
    ActionStatus.FAILED: "red",
    ActionStatus.UNCONFIRMED: "yellow",
    ActionStatus.INEFFECTIVE: "yellow",
    ActionStatus.UNKNOWN: "red",
    ActionStatus.SKIPPED: "dim",
}


def print_report(
    report: RunReport,
    console: Console,
    *,
    expected: Sequence[str] | None = None,
    context: ReportContext | None = None,
) -> None:
    if context is not None:
        expected = context.expected if expected is None else expected
    status_style = (
        "green"
        if report.status is RunStatus.COMPLETE
        else "yellow"
        if report.status is RunStatus.PARTIAL
        else "red"
    )
    header = Text.assemble(
        ("tokenward ", "bold"),
        (f"run {report.run_id}", ""),
        "  ",
        (report.mode.value, "bold cyan"),
        "  ",
        (report.status.value, status_style),
    )
    console.print(header)
    console.print(
        f"window {isoformat_z(report.window.start)} → {isoformat_z(report.window.end)}"
        f" · clock {isoformat_z(report.now)} · {report.trigger}",
        style="dim",
    )
    console.print(f"source: {report.source}", style="dim", markup=False)
    if report.error:
        console.print(f"error: {report.error}", style="bold red", markup=False)
    for warning in report.warnings:
        console.print(f"warning: {warning}", style="yellow", markup=False)
    console.print()

    counts = report.tier_counts()
    console.print(
        f"[bold]{len(report.findings)} finding(s)[/]: "
        f"[red]{counts['high']} high[/], [yellow]{counts['medium']} medium[/], [green]{counts['low']} low[/]"
    )
    for finding in report.findings:
        console.print(_finding_panel(finding))

    if report.actions:
        console.print(_actions_table(report))
        for number, action in enumerate(report.actions, start=1):
            body = request_body(action.request)
            console.print(
                f"  [{number}] {request_line(action.request)}",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )
            if body:
                console.print(f"      {body}", highlight=False, soft_wrap=True, markup=False)
            for decision in action.decisions:
                console.print(
                    f"      {decision.guardrail}: {decision.detail}",
                    style="dim",
                    markup=False,
                )
            for note in action.notes:
                console.print(f"      note: {note}", style="yellow", markup=False)
    elif report.status is not RunStatus.FAILED:
        console.print("No action is planned.")
    for note in report.notes:
        console.print(f"note: {note}", style="dim", markup=False)

    what_if = context.what_if if context is not None else None
    if what_if is not None:
        console.print()
        print_what_if(what_if, console)
    if expected is not None:
        console.print()
        label = "Expected outcome (unchanged playbook)" if what_if else "Expected outcome"
        if expected:
            console.print(f"[bold red]{label} not met:[/]")
            for problem in expected:
                console.print(Text(f"  - {problem}"))
        else:
            console.print(f"[bold green]{label} met.[/]")


def print_what_if(what_if: WhatIf, console: Console) -> None:
    """The overrides, then every finding under both playbooks, changes marked."""
    console.print("[bold]What if[/]  " + what_if.summary())
    changes = Table(box=None, header_style="bold", padding=(0, 2, 0, 0))
    changes.add_column("key")
    changes.add_column("playbook")
    changes.add_column("what-if")
    changes.add_column("from", style="dim")
    for override in what_if.overrides:
        changes.add_row(override.key, override.before, override.after, override.source)
    if what_if.thresholds_before != what_if.thresholds_after:
        changes.add_row(
            "thresholds",
            what_if.thresholds_before.describe(),
            what_if.thresholds_after.describe(),
            "",
        )
    console.print(changes)

    findings = Table(box=None, header_style="bold", padding=(0, 2, 0, 0))
    findings.add_column("user")
    findings.add_column("sign-in")
    findings.add_column("playbook", justify="right")
    findings.add_column("what-if", justify="right")
    findings.add_column("change")
    for change in what_if.findings:
        findings.add_row(
            change.user_principal_name,
            isoformat_z(change.sign_in_time),
            _tier_score(change.tier_before, change.score_before),
            _tier_score(change.tier_after, change.score_after),
            _change_words(change),
        )
    console.print(findings)
    for actions in what_if.action_changes:
        added = planned_words(actions.added)
        removed = planned_words(actions.removed)
        console.print(
            Text(f"  actions for {actions.user_principal_name}: adds {added}; drops {removed}")
        )
    if what_if.expected_after:
        console.print("  against the scenario's expected outcome, the what-if differs:")
        for problem in what_if.expected_after:
            console.print(Text(f"    - {problem}", style="dim"))


def _tier_score(tier: Tier | None, score: int | None) -> Text:
    if tier is None:
        return Text("no finding", style="dim")
    return Text.assemble((tier.value.upper(), _TIER_STYLE[tier]), f" {score}")


def _change_words(change: FindingChange) -> Text:
    if change.tier_changed:
        style = "bold red" if change.direction == "up" else "bold green"
        arrow = "▲" if change.direction == "up" else "▼"
        before = change.tier_before.value if change.tier_before else "none"
        after = change.tier_after.value if change.tier_after else "none"
        return Text(f"{arrow} {before} → {after}", style=style)
    if change.score_changed:
        return Text("score only", style="yellow")
    return Text("unchanged", style="dim")


def _finding_panel(finding: Finding) -> Panel:
    primary = finding.primary
    summary = Text.assemble(
        (f"{isoformat_z(primary.time)}  ", "dim"),
        (primary.app_display_name or primary.app_id or "unknown app", "bold"),
        f" → {primary.resource_display_name or 'unnamed resource'}  ",
        f"{primary.ip_address} ({primary.country or '??'})  ",
        (
            primary.outcome.value,
            "green" if primary.outcome.value == "success" else "yellow",
        ),
        (f"  {primary.user_agent}" if primary.user_agent else "", "dim"),
    )
    reasons = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    reasons.add_column("weight", justify="right")
    reasons.add_column("signal")
    reasons.add_column("why", overflow="fold")
    for reason in finding.reasons:
        reasons.add_row(f"{reason.weight:+d}", reason.signal, reason.detail)

    parts: list[RenderableType] = [summary, reasons]
    for email in finding.evidence.emails:
        parts.append(
            Text(
                f"mail  {isoformat_z(email.time)} ({relative(email.minutes_before_sign_in)})  "
                f"{email.subject!r} from {email.sender_from_address}  "
                f"[{email.delivery_action or 'delivered'}; threats: {email.threat_types or 'none'}; "
                f"linked by {email.joined_by}]"
            )
        )
    for click in finding.evidence.url_clicks:
        chain = " → ".join(click.url_chain) if click.url_chain else click.url
        parts.append(
            Text(
                f"click {isoformat_z(click.time)} ({relative(click.minutes_before_sign_in)})  {chain}  "
                f"[{', '.join(click.action_types)}{'; clicked through' if click.is_clicked_through else ''}"
                f"; {'reached' if click.reached else 'not reached'}]"
            )
        )
    for line in follow_on_lines(finding.follow_on):
        parts.append(Text(f"next  {line}", style="yellow"))
    title = Text.assemble(
        (finding.user_principal_name, "bold"),
        "  ",
        (finding.tier.value.upper(), _TIER_STYLE[finding.tier]),
        f"  score {finding.score}",
    )
    return Panel(Group(*parts), title=title, title_align="left")


def _actions_table(report: RunReport) -> Table:
    table = Table(
        title=f"plan {report.plan_id}  ·  hash {(report.plan_hash or '')[:16]}",
        title_justify="left",
    )
    table.add_column("#", justify="right")
    table.add_column("action")
    table.add_column("target", overflow="fold")
    table.add_column("gate")
    table.add_column("status")
    for number, action in enumerate(report.actions, start=1):
        table.add_row(
            str(number),
            action.action.value,
            action.target,
            action.gate.value,
            Text(action.status.value, style=_STATUS_STYLE.get(action.status, "")),
        )
    return table
