"""What a run tells the incident it answers: one comment and a few labels. Pure.

The comment is where the analysts work, so it says in the first line what
tokenward concluded and did, then each finding with its score and reasons,
the evidence behind it, every action with its state, what stopped or held an
action, and, whenever containment is in the plan, that access tokens already
issued stay valid until they expire.

Sentinel renders comments as HTML. Every value in one (a mail subject, a URL,
a user agent: much of it chosen by the attacker) is escaped, so nothing from
the logs or the incident can add markup to the analysts' page.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence

from playbooks.models import (
    ActionKind,
    ActionReport,
    ActionStatus,
    Finding,
    Mode,
    RunReport,
    RunStatus,
)
from playbooks.times import isoformat_z

#: Sentinel's limit on one comment, less room for the closing lines.
MAX_MESSAGE = 30_000
_BUDGET = MAX_MESSAGE - 1_500
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
CONTAINMENT = (ActionKind.REVOKE_SESSIONS, ActionKind.DISABLE_ACCOUNT)
TOKEN_NOTE = (
    "Revoking sessions stops the stolen refresh tokens; access tokens already issued "
    "stay valid until they expire (about an hour, up to a day for CAE-capable clients)."
)

# The labels tokenward sets, after the prefix (tokenward:contained, ...).
CONTAINED = "contained"
NEEDS_APPROVAL = "needs-approval"
ACTION_FAILED = "action-failed"
UNRESOLVED_ACCOUNT = "unresolved-account"
NO_FINDINGS = "no-findings"
RUN_FAILED = "run-failed"
DRY_RUN = "dry-run"


def labels_for(report: RunReport, *, prefix: str) -> tuple[str, ...]:
    """The incident's tokenward labels after this run."""
    actions = [a for a in report.actions if a.action is not ActionKind.COMMENT_ON_INCIDENT]
    found: list[str] = []
    if report.status is RunStatus.FAILED:
        found.append(RUN_FAILED)
    elif not report.users:
        found.append(UNRESOLVED_ACCOUNT)
    elif not report.findings:
        found.append(NO_FINDINGS)
    if any(a.action in CONTAINMENT and a.status is ActionStatus.SUCCEEDED for a in actions):
        found.append(CONTAINED)
    if any(a.status is ActionStatus.AWAITING_APPROVAL for a in actions):
        found.append(NEEDS_APPROVAL)
    if any(a.status in (ActionStatus.FAILED, ActionStatus.UNKNOWN) for a in actions):
        found.append(ACTION_FAILED)
    if report.mode is Mode.DRY_RUN and report.status is not RunStatus.FAILED:
        found.append(DRY_RUN)
    return tuple(prefix + label for label in found)


def comment_message(report: RunReport, *, labels: str = "") -> str:
    """The run's one comment on its incident, as Sentinel-safe HTML."""
    actions = [a for a in report.actions if a.action is not ActionKind.COMMENT_ON_INCIDENT]
    parts = [f"<p>{_headline(report, actions)}</p>"]

    # Findings, highest first, until the comment would pass Sentinel's limit.
    findings = sorted(
        report.findings, key=lambda f: (-f.tier.rank, -f.score, f.user_principal_name)
    )
    if findings:
        parts.append("<p><b>Findings</b></p><ul>")
        used = sum(len(part) for part in parts)
        for index, finding in enumerate(findings):
            item = _finding(finding)
            if used + len(item) > _BUDGET:
                left = len(findings) - index
                parts.append(f"<li>… and {left} more finding(s): see the run's report.</li>")
                break
            parts.append(item)
            used += len(item)
        parts.append("</ul>")

    if actions:
        parts.append("<p><b>Actions</b></p><ul>")
        parts.extend(_action(action) for action in actions[:50])
        if len(actions) > 50:
            parts.append(f"<li>… and {len(actions) - 50} more action(s).</li>")
        parts.append("</ul>")

    if report.error:
        parts.append(f"<p><b>The run failed:</b> {_e(report.error, 600)}</p>")
    notes = list(report.warnings)
    if notes:
        parts.append("<p><b>Warnings</b></p><ul>")
        parts.extend(f"<li>{_e(note, 400)}</li>" for note in notes[:20])
        parts.append("</ul>")
    if any(a.action in CONTAINMENT for a in actions):
        parts.append(f"<p><b>Note:</b> {_e(TOKEN_NOTE)}</p>")
    parts.append(_footer(report, labels))
    return "".join(parts)[:MAX_MESSAGE]


def _headline(report: RunReport, actions: Sequence[ActionReport]) -> str:
    mode = {
        Mode.DRY_RUN: "dry-run, nothing sent",
        Mode.APPROVE: "approve",
        Mode.AUTO: "auto",
    }
    head = f"<b>tokenward</b> ({mode[report.mode]}): "
    if report.status is RunStatus.FAILED:
        return head + "<b>the run did not complete</b>; nothing was decided."
    if not report.users:
        return head + (
            "<b>no account in this incident could be resolved</b> to an Entra ID user, "
            "so nothing was hunted or done. Map the rule's Account entity to AadUserId, "
            "or Name and UPNSuffix."
        )
    if not report.findings:
        return head + "no device code sign-in was found for the incident's accounts in the window."
    counts = report.tier_counts()
    tiers = ", ".join(
        f"{counts[tier]} {tier}" for tier in ("high", "medium", "low") if counts[tier]
    )
    states = _status_counts(actions)
    done = "; ".join(f"{count} {status}" for status, count in states.items())
    return head + f"<b>{len(report.findings)} finding(s)</b> ({tiers}); actions: {done or 'none'}."


def _finding(finding: Finding) -> str:
    primary = finding.primary
    where = ", ".join(
        value for value in (primary.ip_address, primary.country, primary.app_display_name) if value
    )
    lines = [
        f"<li><b>{_e(finding.user_principal_name)}</b>: {_e(finding.tier.value)}, "
        f"score {finding.score}. Device code sign-in at {isoformat_z(finding.sign_in_time)}"
        + (f" ({_e(where)})" if where else "")
        + (", a guest" if finding.is_guest else "")
        + "<ul>"
    ]
    for reason in finding.reasons:
        sign = "+" if reason.weight >= 0 else ""
        lines.append(
            f"<li>{sign}{reason.weight} {_e(reason.signal)}: {_e(reason.detail, 300)}</li>"
        )
    for email in finding.evidence.emails[:5]:
        lines.append(
            f"<li>Mail “{_e(email.subject, 200)}” from {_e(email.sender_from_address)} "
            f"at {isoformat_z(email.time)}, {email.minutes_before_sign_in:g} min before "
            f"({_e(email.delivery_action)})</li>"
        )
    for click in finding.evidence.url_clicks[:5]:
        lines.append(
            f"<li>Click on {_e(click.url, 300)} at {isoformat_z(click.time)}, "
            f"{click.minutes_before_sign_in:g} min before ({_e(', '.join(click.action_types))})</li>"
        )
    lines.append("</ul></li>")
    return "".join(lines)


def _action(action: ActionReport) -> str:
    status = action.status.value.replace("_", " ")
    text = f"<li>{_e(action.action.value)} {_e(action.target)}: <b>{_e(status)}</b>"
    if action.detail:
        text += f". {_e(action.detail, 300)}"
    held = [d.detail for d in action.decisions]
    if held:
        text += f" (held by: {_e('; '.join(held), 400)})"
    for note in action.notes:
        text += f" {_e(note, 300)}"
    return text + "</li>"


def _footer(report: RunReport, labels: str) -> str:
    bits = [f"run <code>{_e(report.run_id)}</code>", f"playbook {_e(report.playbook)}"]
    if report.plan_hash:
        bits.append(f"plan hash <code>{_e(report.plan_hash[:16])}</code>")
    bits.append(f"window {isoformat_z(report.window.start)} to {isoformat_z(report.window.end)}")
    if labels:
        bits.append(_e(labels))
    audit = f"the audit: <code>tokenward audit show --run {_e(report.run_id)}</code>"
    return f"<p><small>{'; '.join(bits)}; {audit}</small></p>"


def _status_counts(actions: Iterable[ActionReport]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for action in actions:
        label = action.status.value.replace("_", " ")
        counts[label] = counts.get(label, 0) + 1
    return counts


def _e(value: object, limit: int = 200) -> str:
    """*value* as text safe in Sentinel's HTML: escaped, no control characters, cut."""
    text = _CONTROL.sub(" ", str(value))
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(text, quote=True)
