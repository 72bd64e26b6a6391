"""A run on the terminal: findings with their reasons, evidence and requests."""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from playbooks.models import ActionStatus, Finding, RunReport, RunStatus, Tier
from playbooks.reports import follow_on_lines, relative, request_body, request_line
from playbooks.times import isoformat_z

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


def print_report(report: RunReport, console: Console, *, expected: list[str] | None = None) -> None:
    status_style = "green" if report.status is RunStatus.COMPLETE else "yellow" if report.status is RunStatus.PARTIAL else "red"
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
    console.print(f"source: {report.source}", style="dim")
    if report.error:
        console.print(f"error: {report.error}", style="bold red")
    for warning in report.warnings:
        console.print(f"warning: {warning}", style="yellow")
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
            console.print(f"  [{number}] {request_line(action.request)}", highlight=False, soft_wrap=True)
            if body:
                console.print(f"      {body}", highlight=False, soft_wrap=True)
            for decision in action.decisions:
                console.print(f"      {decision.guardrail}: {decision.detail}", style="dim")
            for note in action.notes:
                console.print(f"      note: {note}", style="yellow")
    elif report.status is not RunStatus.FAILED:
        console.print("No action is planned.")
    for note in report.notes:
        console.print(f"note: {note}", style="dim")

    if expected is not None:
        console.print()
        if expected:
            console.print("[bold red]Expected outcome not met:[/]")
            for problem in expected:
                console.print(f"  - {problem}")
        else:
            console.print("[bold green]Expected outcome met.[/]")


def _finding_panel(finding: Finding) -> Panel:
    primary = finding.primary
    summary = Text.assemble(
        (f"{isoformat_z(primary.time)}  ", "dim"),
        (primary.app_display_name or primary.app_id or "unknown app", "bold"),
        f" → {primary.resource_display_name or 'unnamed resource'}  ",
        f"{primary.ip_address} ({primary.country or '??'})  ",
        (primary.outcome.value, "green" if primary.outcome.value == "success" else "yellow"),
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
    table = Table(title=f"plan {report.plan_id}  ·  hash {(report.plan_hash or '')[:16]}", title_justify="left")
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
