"""A run as Markdown: what a tabletop exercise hands round afterwards."""

from __future__ import annotations

from playbooks.models import Finding, RunReport
from playbooks.reports import follow_on_lines, relative, request_body, request_line
from playbooks.times import isoformat_z


def to_markdown(report: RunReport, *, title: str | None = None, expected: list[str] | None = None) -> str:
    lines: list[str] = [f"# {title or 'tokenward run ' + report.run_id}", ""]
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
        lines += ["Met." if not expected else "**Not met:**"] + [f"- {item}" for item in expected]
        lines.append("")
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
        lines += _finding(finding)

    lines += ["## Plan", ""]
    if report.plan_id:
        lines += [f"Plan `{report.plan_id}`, content hash `{report.plan_hash}`.", ""]
    if report.actions:
        lines += ["| action | target | gate | status | request |", "|---|---|---|---|---|"]
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
                lines.append(f"- {action.action.value} for {action.target}: {decision.detail} ({decision.gate.value})")
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
            *([f"Ran in {query.source} ({query.phase} step).", ""] if query.source and query.phase else []),
            *([f"{query.detail}.", ""] if query.detail else []),
            "```kql",
            query.text.rstrip(),
            "```",
            "",
        ]
    return "\n".join(lines)


def _finding(finding: Finding) -> list[str]:
    primary = finding.primary
    lines = [
        f"### {finding.user_principal_name} — {finding.tier.value.upper()}, score {finding.score}",
        "",
        f"Device code sign-in at {isoformat_z(primary.time)} to **{primary.app_display_name or primary.app_id}**"
        f" for {primary.resource_display_name or 'an unnamed resource'} from {primary.ip_address}"
        f" ({primary.country or 'country unknown'}), {primary.outcome.value}"
        f" ({primary.source_table}, {len(finding.sign_ins)} row(s) in the flow).",
        "",
        "| weight | signal | why |",
        "|---:|---|---|",
    ]
    lines += [f"| {reason.weight:+d} | {reason.signal} | {reason.detail} |" for reason in finding.reasons]
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
