"""A run as Markdown: what a tabletop exercise hands round afterwards.

Most values in a report come from logs an attacker writes to: user names,
app names, mail subjects, URLs. They go through :func:`inline_text` or
:func:`code_span`, so they read as written wherever the report is pasted and
never add a table cell, a line, a link or HTML.
"""

from __future__ import annotations

import re
import unicodedata
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

# What can start markup in CommonMark and GFM: emphasis, code, links and
# images, HTML and autolinks, entities, table cells, headings, strikethrough,
# and the dollar signs that GitHub reads as math.
_MARKUP = frozenset("\\`*_[]<>|#!&~$")
# What starts a list or a thematic break at the start of a line.
_BLOCK_START = re.compile(r"[-+](?=\s|$)|-(?=[- ]*$)|[0-9]{1,9}(?=[.)](?:\s|$))")
_BACKTICKS = re.compile(r"`+")
# What a renderer may link without any markup: a scheme and ``//``, or ``www.``.
# It stops at a space, a pipe (a table cell's end) and a backtick.
_BARE_ADDRESS = re.compile(r"(?i)\b(?:[a-z][a-z0-9+.-]*://|www\.)[^\s`|]*")
# Punctuation after an address that belongs to the sentence, as GFM reads it.
_TRAILING = frozenset("?!.,:;*_~'\"")


def _one_line(value: str) -> str:
    """*value* with line breaks and other control characters as spaces."""
    return "".join(
        " " if unicodedata.category(char) in ("Cc", "Zl", "Zp") else char for char in value
    )


def inline_text(value: str) -> str:
    """*value* as literal text in a paragraph, a list item or a table cell.

    An address in it (``https://…``, ``www.…``) is set as code: renderers that
    link bare URLs (GFM does, whatever is escaped) never link inside code, and
    a phishing page's address must not become a link in a report.
    """
    text = _one_line(value).strip(" ")
    parts, at = [], 0
    for found in _BARE_ADDRESS.finditer(text):
        address = _without_trailing_punctuation(found.group())
        parts += [_escaped(text[at : found.start()]), code_span(address)]
        at = found.start() + len(address)
    escaped = "".join([*parts, _escaped(text[at:])])
    # A value may open a list item or a paragraph: it must not read as a marker.
    marker = _BLOCK_START.match(escaped)
    if marker is None:
        return escaped
    cut = marker.end() if escaped[0].isdigit() else 0
    return escaped[:cut] + "\\" + escaped[cut:]


def _without_trailing_punctuation(address: str) -> str:
    """*address* without the punctuation after it that belongs to the sentence."""
    while address and (
        address[-1] in _TRAILING or (address[-1] == ")" and address.count(")") > address.count("("))
    ):
        address = address[:-1]
    return address


def _escaped(text: str) -> str:
    return "".join(
        "\\" + char if char in _MARKUP and not _inert(text, at) else char
        for at, char in enumerate(text)
    )


def _inert(text: str, at: int) -> bool:
    """An underscore between letters or digits opens and closes no emphasis."""
    return (
        text[at] == "_"
        and 0 < at < len(text) - 1
        and text[at - 1].isalnum()
        and text[at + 1].isalnum()
    )


def code_span(value: str, *, in_table: bool = False) -> str:
    """*value* as a code span: a fence longer than any backtick run in it.

    In a GFM table a ``|`` ends the cell even inside a code span, unless escaped.
    """
    text = _one_line(value) or " "
    if in_table:
        text = text.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)
    # A backtick at either end would join the fence, and one space each side
    # would be taken off: padding keeps the value as it is.
    padded = "`" in (text[0], text[-1]) or (text[0] == text[-1] == " " and bool(text.strip()))
    pad = " " if padded else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _code_fence(text: str) -> str:
    """A fence for a code block that no line of *text* can close."""
    return "`" * max(3, max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)


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
    heading = inline_text(title) if title else f"tokenward run {inline_text(report.run_id)}"
    lines: list[str] = [f"# {heading}", ""]
    if context is not None and context.description:
        lines += [inline_text(context.description), ""]
    error = f" — {inline_text(report.error)}" if report.error else ""
    lines += [
        f"- **Run:** {code_span(report.run_id)} ({report.mode.value}, "
        f"{inline_text(report.trigger)})",
        f"- **Status:** {report.status.value}{error}",
        f"- **Window:** {isoformat_z(report.window.start)} to {isoformat_z(report.window.end)}",
        f"- **Clock:** {isoformat_z(report.now)}",
        f"- **Source:** {inline_text(report.source)}",
        "",
    ]
    if expected is not None:
        lines += ["## Expected outcome", ""]
        if what_if is not None:
            lines += ["With the unchanged playbook:", ""]
        lines += ["Met." if not expected else "**Not met:**"]
        lines += [f"- {inline_text(item)}" for item in expected]
        lines.append("")
    if what_if is not None:
        lines += _what_if(what_if)
    if report.warnings:
        lines += ["## Warnings", ""]
        lines += [f"- {inline_text(warning)}" for warning in report.warnings] + [""]

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
        lines += [
            f"Plan {code_span(report.plan_id)}, content hash {code_span(str(report.plan_hash))}.",
            "",
        ]
    if report.actions:
        lines += [
            "| action | target | gate | status | request |",
            "|---|---|---|---|---|",
        ]
        for action in report.actions:
            body = request_body(action.request)
            request = code_span(request_line(action.request), in_table=True) + (
                " " + code_span(body, in_table=True) if body else ""
            )
            lines.append(
                f"| {action.action.value} | {inline_text(action.target)} | {action.gate.value} | "
                f"{action.status.value} | {request} |"
            )
        lines.append("")
        for action in report.actions:
            about = f"{action.action.value} for {inline_text(action.target)}"
            for decision in action.decisions:
                lines.append(f"- {about}: {inline_text(decision.detail)} ({decision.gate.value})")
            for note in action.notes:
                lines.append(f"- {about}: {inline_text(note)}")
        lines.append("")
    else:
        lines += ["No action is planned.", ""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {inline_text(note)}" for note in report.notes] + [""]

    lines += ["## Queries", ""]
    for query in report.queries:
        text = query.text.rstrip()
        fence = _code_fence(text)
        lines += [
            f"### {inline_text(query.name)} — {query.row_count} row(s), {query.duration_ms} ms, "
            f"{query.status.value}",
            "",
            *(
                [
                    f"Ran in {inline_text(query.source)} ({inline_text(query.phase)} step).",
                    "",
                ]
                if query.source and query.phase
                else []
            ),
            *([f"{inline_text(query.detail)}.", ""] if query.detail else []),
            f"{fence}kql",
            text,
            fence,
            "",
        ]
    return "\n".join(lines)


def _timeline(finding: Finding, report: RunReport) -> list[str]:
    """The finding's events in time order, from the sign-in (0)."""
    lines = ["| from the sign-in | time | what | detail |", "|---:|---|---|---|"]
    for mark in timeline_for(finding, report).marks:
        lines.append(
            f"| {mark.offset_text} | {isoformat_z(mark.time)} | {inline_text(mark.title)} "
            f"| {inline_text(mark.detail)} |"
        )
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
            f"| {code_span(override.key, in_table=True)} "
            f"| {code_span(override.before, in_table=True)} "
            f"| {code_span(override.after, in_table=True)} | {inline_text(override.source)} |"
        )
    lines += [
        "",
        "| user | sign-in | playbook | what-if | change |",
        "|---|---|---:|---:|---|",
    ]
    for change in what_if.findings:
        lines.append(
            f"| {inline_text(change.user_principal_name)} "
            f"| {isoformat_z(change.sign_in_time)} {inline_text(change.app)} "
            f"| {_tier_score(change.tier_before, change.score_before)} "
            f"| {_tier_score(change.tier_after, change.score_after)} "
            f"| {_change(change)} |"
        )
    lines.append("")
    for actions in what_if.action_changes:
        lines.append(
            f"- Actions for {inline_text(actions.user_principal_name)}: adds "
            f"{planned_words(actions.added)}; drops {planned_words(actions.removed)}."
        )
    if what_if.expected_after:
        lines.append("- Against the scenario's expected outcome, the what-if differs:")
        lines += [f"  - {inline_text(problem)}" for problem in what_if.expected_after]
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
    app = inline_text(primary.app_display_name or primary.app_id)
    resource = (
        inline_text(primary.resource_display_name)
        if primary.resource_display_name
        else "an unnamed resource"
    )
    country = inline_text(primary.country) if primary.country else "country unknown"
    lines = [
        f"### {inline_text(finding.user_principal_name)} — {finding.tier.value.upper()}, "
        f"score {finding.score}",
        "",
        f"Device code sign-in at {isoformat_z(primary.time)} to **{app}** for {resource}"
        f" from {inline_text(primary.ip_address)} ({country}), {primary.outcome.value}"
        f" ({inline_text(primary.source_table)}, {len(finding.sign_ins)} row(s) in the flow).",
        "",
        *_timeline(finding, report),
        "| weight | signal | why |",
        "|---:|---|---|",
    ]
    lines += [
        f"| {reason.weight:+d} | {inline_text(reason.signal)} | {inline_text(reason.detail)} |"
        for reason in finding.reasons
    ]
    lines.append("")
    if finding.evidence.emails:
        lines += ["Mail:", ""]
        for email in finding.evidence.emails:
            delivery = inline_text(email.delivery_action) if email.delivery_action else "delivered"
            threats = inline_text(email.threat_types) if email.threat_types else "none"
            lines.append(
                f"- {isoformat_z(email.time)} ({relative(email.minutes_before_sign_in)}): "
                f"'{inline_text(email.subject)}' from {inline_text(email.sender_from_address)}"
                f" to {inline_text(email.recipient_email_address)}, {delivery},"
                f" threats: {threats} (linked by {inline_text(email.joined_by)})"
            )
        lines.append("")
    if finding.evidence.url_clicks:
        lines += ["Clicks:", ""]
        for click in finding.evidence.url_clicks:
            # Each address whole, as code (as inline_text sets one in a sentence).
            chain = " → ".join(code_span(url) for url in (click.url_chain or (click.url,)))
            kinds = ", ".join(inline_text(kind) for kind in click.action_types)
            through = ", clicked through" if click.is_clicked_through else ""
            workload = inline_text(click.workload) if click.workload else "unknown"
            lines.append(
                f"- {isoformat_z(click.time)} ({relative(click.minutes_before_sign_in)}): {chain}"
                f" [{kinds}{through}] via {workload}"
            )
        lines.append("")
    # The sentences quote what the token touched, as logged.
    follow = [inline_text(line) for line in follow_on_lines(finding.follow_on)]
    if follow:
        lines += ["What happened next:", ""] + [f"- {line}" for line in follow] + [""]
    return lines
