"""A run as Markdown: what a tabletop exercise hands round afterwards."""

from __future__ import annotations

from collections.abc import Sequence

from playbooks.models import Finding, RunReport, Tier
from playbooks.reports import (
    ReportContext,
    follow_on_lines,
    planned_words,
    relative,
    request_body,
    request_line,
)
from playbooks.reports.timeline import timeline_for
from playbooks.times import isoformat_z
from playbooks.whatif import FindingChange, WhatIf


def to_markdown(
    report: RunReport,
    *,
    title: str | None = None,
    expected: Sequence[str] | None = None,
    context: ReportContext | None = None,
) -> str:
    if context is not None:
        title = title or context.title
        expected = context.expected if expected is None else expected
    what_if = context.what_if if context is not None else None
    lines: list[str] = [f"# {title or 'tokenward run ' + report.run_id}", ""]
    if context is not None and context.description:
        lines += [context.description, ""]
    lines += [
        f"- **Run:** `{report.run_id}` ({report.mode.value}, {report.trigger})",
        f"- **Status:** {report.status.value}" + (f" — {report.error}" if report.error else ""),
        f"- **Window:** {isoformat_z(report.window.start)} to {isoformat_z(report.window.end)}",
        f"- **Clock:** {isoformat_z(report.now)}",
        f"- **Source:** {report.source}",
        "",
    ]
    if expected is not None:
        lines += ["## Expected outcome", ""]
        if what_if is not None:
            lines += ["With the unchanged playbook:", ""]
        lines += ["Met." if not expected else "**Not met:**"] + [f"- {item}" for item in expected]
        lines.append("")
    if what_if is not None:
        lines += _what_if(what_if)
    if report.warnings:
        lines += ["## Warnings", ""] + [f"- {warning}" for warning in report.warnings] + [""]

    counts = report.tier_counts()
    lines += [
        "## Findings",
        "",
        f"{len(report.findings)} finding(s): {counts['high']} high, {counts['medium']} medium, "
        f"{counts['low']} low.",
        "",
    ]
    for finding in report.findings:
        lines += _finding(finding, report)

    lines += ["## Plan", ""]
    if report.plan_id:
        lines += [f"Plan `{report.plan_id}`, content hash `{report.plan_hash}`.", ""]
    if report.actions:
        lines += [
            "| action | target | gate | status | request |",
            "|---|---|---|---|---|",
        ]
        for action in report.actions:
            body = request_body(action.request)
            request = f"`{request_line(action.request)}`" + (f" `{body}`" if body else "")
            lines.append(
                f"| {action.action.value} | {action.target} | {action.gate.value} | "
                f"{action.status.value} | {request} |"
            )
        lines.append("")
        for action in report.actions:
            for decision in action.decisions:
                lines.append(
                    f"- {action.action.value} for {action.target}: {decision.detail} ({decision.gate.value})"
                )
            for note in action.notes:
                lines.append(f"- {action.action.value} for {action.target}: {note}")
        lines.append("")
    else:
        lines += ["No action is planned.", ""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in report.notes] + [""]

    lines += ["## Queries", ""]
    for query in report.queries:
        lines += [
            f"### {query.name} — {query.row_count} row(s), {query.duration_ms} ms, {query.status.value}",
            "",
            *(
                [f"Ran in {query.source} ({query.phase} step).", ""]
                if query.source and query.phase
                else []
            ),
            *([f"{query.detail}.", ""] if query.detail else []),
            "```kql",
            query.text.rstrip(),
            "```",
            "",
        ]
    return "\n".join(lines)


def _timeline(finding: Finding, report: RunReport) -> list[str]:
    """The finding's events in time order, from the sign-in (0)."""
    lines = ["| from the sign-in | time | what | detail |", "|---:|---|---|---|"]
    for mark in timeline_for(finding, report).marks:
        detail = mark.detail.replace("\n", " ").replace("|", "\\|")
        lines.append(f"| {mark.offset_text} | {isoformat_z(mark.time)} | {mark.title} | {detail} |")
    return [*lines, ""]


def _what_if(what_if: WhatIf) -> list[str]:
    lines = [
        "## What if",
        "",
        what_if.summary(),
        "",
        "| key | playbook | what-if | from |",
        "|---|---|---|---|",
    ]
    for override in what_if.overrides:
        lines.append(
            f"| `{override.key}` | `{override.before}` | `{override.after}` | {override.source} |"
        )
    lines += [
        "",
        "| user | sign-in | playbook | what-if | change |",
        "|---|---|---:|---:|---|",
    ]
    for change in what_if.findings:
        lines.append(
            f"| {change.user_principal_name} "
            f"| {isoformat_z(change.sign_in_time)} {change.app} "
            f"| {_tier_score(change.tier_before, change.score_before)} "
            f"| {_tier_score(change.tier_after, change.score_after)} "
            f"| {_change(change)} |"
        )
    lines.append("")
    for actions in what_if.action_changes:
        lines.append(
            f"- Actions for {actions.user_principal_name}: adds "
            f"{planned_words(actions.added)}; drops {planned_words(actions.removed)}."
        )
    if what_if.expected_after:
        lines.append("- Against the scenario's expected outcome, the what-if differs:")
        lines += [f"  - {problem}" for problem in what_if.expected_after]
    if what_if.action_changes or what_if.expected_after:
        lines.append("")
    return lines


def _tier_score(tier: Tier | None, score: int | None) -> str:
    return "no finding" if tier is None else f"{tier.value.upper()} {score}"


def _change(change: FindingChange) -> str:
    if change.tier_changed:
        before = change.tier_before.value if change.tier_before else "none"
        after = change.tier_after.value if change.tier_after else "none"
        return f"**{before} → {after}**"
    return "score only" if change.score_changed else "unchanged"


def _finding(finding: Finding, report: RunReport) -> list[str]:
    primary = finding.primary
    lines = [
        f"### {finding.user_principal_name} — {finding.tier.value.upper()}, score {finding.score}",
        "",
        f"Device code sign-in at {isoformat_z(primary.time)}"
        f" to **{primary.app_display_name or primary.app_id}**"
        f" for {primary.resource_display_name or 'an unnamed resource'} from {primary.ip_address}"
        f" ({primary.country or 'country unknown'}), {primary.outcome.value}"
        f" ({primary.source_table}, {len(finding.sign_ins)} row(s) in the flow).",
        "",
        *_timeline(finding, report),
        "| weight | signal | why |",
        "|---:|---|---|",
    ]
    lines += [
        f"| {reason.weight:+d} | {reason.signal} | {reason.detail} |" for reason in finding.reasons
    ]
    lines.append("")
    if finding.evidence.emails:
        lines += ["Mail:", ""]
        for email in finding.evidence.emails:
            lines.append(
                f"- {isoformat_z(email.time)} ({relative(email.minutes_before_sign_in)}): "
                f"{email.subject!r} from {email.sender_from_address} to {email.recipient_email_address},"
                f" {email.delivery_action or 'delivered'}, threats: {email.threat_types or 'none'}"
                f" (linked by {email.joined_by})"
            )
        lines.append("")
    if finding.evidence.url_clicks:
        lines += ["Clicks:", ""]
        for click in finding.evidence.url_clicks:
            chain = " → ".join(click.url_chain) if click.url_chain else click.url
            lines.append(
                f"- {isoformat_z(click.time)} ({relative(click.minutes_before_sign_in)}): {chain}"
                f" [{', '.join(click.action_types)}{', clicked through' if click.is_clicked_through else ''}]"
                f" via {click.workload or 'unknown'}"
            )
        lines.append("")
    follow = follow_on_lines(finding.follow_on)
    if follow:
        lines += ["What happened next:", ""] + [f"- {line}" for line in follow] + [""]
    return lines
