"""The Markdown report: what the logs say stays text, wherever the report is pasted.

The report is read by a CommonMark parser with GFM tables, raw HTML allowed as
many wikis allow it: a value from the logs must come out as the same text in
the same cell, list item or code span, and add no element, link, line or HTML
of its own.
"""

from __future__ import annotations

import asyncio
import html
import random
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from markdown_it import MarkdownIt

from playbooks.audit import AuditLog
from playbooks.engine import Runner, RunRequest
from playbooks.models import (
    ActionReport,
    FollowOnActivity,
    Gate,
    GuardrailDecision,
    Mode,
    RunReport,
    SessionActivity,
    Tier,
    TouchedArea,
    Window,
)
from playbooks.playbook import load_playbook
from playbooks.reports import ReportContext, request_body, request_line
from playbooks.reports.markdown import code_span, inline_text, to_markdown
from playbooks.reports.timeline import short_url
from playbooks.store import open_store
from playbooks.whatif import (
    FindingChange,
    OverrideShown,
    PlannedItem,
    Thresholds,
    UserActions,
    WhatIf,
)
from tests.runs import local_source, scenario_settings, seed_scenario

# CommonMark with GFM tables and strikethrough; raw HTML passes through, so
# any HTML a value smuggled in would show in the output.
MARKDOWN = MarkdownIt("commonmark").enable(["table", "strikethrough"])

# All in lower case: the timeline lower-cases a delivery action.
HOSTILE = (
    "<script>alert(1)</script> <img src=x onerror=alert(2)> | **bold** _it_ "
    "[verify](http://evil.example/x) ![i](http://evil.example/i.png) <http://evil.example> "
    "`tick` ``` ~~gone~~ &amp; $x$ \\ # h\n- item\r\n| c | d |\u2028end\u2029z"
)
# How the hostile value reads: on one line, and otherwise as written.
HOSTILE_READ = (
    "<script>alert(1)</script> <img src=x onerror=alert(2)> | **bold** _it_ "
    "[verify](http://evil.example/x) ![i](http://evil.example/i.png) <http://evil.example> "
    "`tick` ``` ~~gone~~ &amp; $x$ \\ # h - item  | c | d | end z"
)
# The addresses in it, each shown as code: no renderer links inside code.
HOSTILE_ADDRESSES = {"http://evil.example/x", "http://evil.example/i.png", "http://evil.example>"}
# Where a log value goes in the report, in the plain version of the same report.
PLAIN = "plainvalue"


@dataclass
class Rendered:
    """A report rendered to HTML, and the elements and text of the page."""

    html: str
    tags: list[tuple[str, tuple[tuple[str, str | None], ...]]] = field(default_factory=list)
    # Each block (paragraph, list item, heading, cell, code block) and its text.
    blocks: list[tuple[str, str]] = field(default_factory=list)
    # Each table as rows of cell texts.
    tables: list[list[list[str]]] = field(default_factory=list)

    def texts(self, tag: str) -> list[str]:
        return [text for name, text in self.blocks if name == tag]


BLOCKS = {"p", "li", "h1", "h2", "h3", "td", "th", "pre"}


class _Reader(HTMLParser):
    def __init__(self, page: Rendered) -> None:
        super().__init__(convert_charrefs=True)
        self.page = page
        self.open: list[tuple[str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.page.tags.append((tag, tuple(attrs)))
        if tag == "table":
            self.page.tables.append([])
        elif tag == "tr":
            self.page.tables[-1].append([])
        if tag in BLOCKS:
            self.open.append((tag, []))

    def handle_endtag(self, tag: str) -> None:
        if tag in BLOCKS:
            name, parts = self.open.pop()
            assert name == tag, (name, tag)
            text = "".join(parts).strip()
            self.page.blocks.append((tag, text))
            if tag in ("td", "th"):
                self.page.tables[-1][-1].append(text)
            elif self.open:
                self.open[-1][1].append(text)

    def handle_data(self, data: str) -> None:
        if self.open:
            self.open[-1][1].append(data)


def parse(page_html: str) -> Rendered:
    page = Rendered(page_html)
    reader = _Reader(page)
    reader.feed(page_html)
    reader.close()
    return page


def render(markdown: str) -> Rendered:
    return parse(MARKDOWN.render(markdown))


def codes(page: Rendered) -> list[str]:
    """The text of each code span on *page*, spaces and all."""
    return [html.unescape(part.split("</code>")[0]) for part in page.html.split("<code>")[1:]]


def elements(page: Rendered) -> list[str]:
    """The elements of *page* in order, but code (which an address in a value becomes)."""
    return [name for name, _ in page.tags if name != "code"]


def cell_text(markdown_cell: str) -> str:
    """The text of the one cell of a one-row table holding *markdown_cell*."""
    page = render(f"| head |\n|---|\n| {markdown_cell} |\n")
    (table,) = page.tables
    (_, (cell,)) = table
    return cell


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> RunReport:
    """The bundled seed scenario, run as `tokenward exercise` runs it."""
    folder = tmp_path_factory.mktemp("seed")
    scenario = seed_scenario()
    source = local_source(scenario, folder / "exports")
    audit = AuditLog(open_store(f"sqlite:///{folder / 'state.db'}"))
    request = RunRequest(
        trigger=f"exercise:{scenario.name}",
        mode=Mode.DRY_RUN,
        window=Window(start=scenario.clock - scenario.since, end=scenario.clock),
        now=scenario.clock,
    )
    runner = Runner(load_playbook(), scenario_settings(scenario), source, audit)
    return asyncio.run(runner.run(request))


def everywhere(report: RunReport, value: str) -> tuple[RunReport, ReportContext]:
    """*report* with *value* in every place a log or a caller writes to, and a context."""
    (finding,) = report.findings
    primary, *rest = finding.sign_ins
    primary = primary.model_copy(
        update={
            "app_display_name": value,
            "resource_display_name": value,
            "ip_address": value,
            "country": value,
            "source_table": value,
            "user_agent": value,
        }
    )
    emails = tuple(
        email.model_copy(
            update={
                "subject": value,
                "sender_from_address": value,
                "recipient_email_address": value,
                "delivery_action": value,
                "threat_types": value,
            }
        )
        for email in finding.evidence.emails
    )
    # (Clicked URLs are read as URLs on the timeline: see the test of clicks.)
    clicks = tuple(
        click.model_copy(update={"action_types": (value,), "workload": value})
        for click in finding.evidence.url_clicks
    )
    follow_on = FollowOnActivity(
        since=finding.sign_in_time,
        until=report.now,
        graph_activity=(
            TouchedArea(
                area=value, requests=3, methods=(value,), ip_addresses=(value,), samples=(value,)
            ),
        ),
        session=SessionActivity(
            sign_ins=2,
            apps=(value,),
            resources=(value,),
            ip_addresses=(value,),
            countries=(value,),
        ),
    )
    finding = finding.model_copy(
        update={
            "user_principal_name": value,
            "sign_ins": (primary, *rest),
            "reasons": tuple(
                reason.model_copy(update={"detail": value}) for reason in finding.reasons
            ),
            "evidence": finding.evidence.model_copy(
                update={"emails": emails, "url_clicks": clicks}
            ),
            "follow_on": follow_on,
        }
    )
    actions = tuple(
        action.model_copy(
            update={
                "target": value,
                "decisions": (GuardrailDecision(guardrail="g", gate=Gate.APPROVAL, detail=value),),
                "notes": (value,),
            }
        )
        for action in report.actions
    )
    queries = tuple(
        query.model_copy(update={"source": value, "detail": value}) for query in report.queries
    )
    changed = report.model_copy(
        update={
            "trigger": value,
            "error": value,
            "source": value,
            "warnings": (value, value),
            "notes": (value,),
            "findings": (finding,),
            "actions": actions,
            "queries": queries,
        }
    )
    context = ReportContext(title=value, description=value, expected=[value, value])
    return changed, context


def test_every_log_value_reads_as_written_and_adds_no_element(seed: RunReport) -> None:
    plain_report, plain_context = everywhere(seed, PLAIN)
    hostile_report, hostile_context = everywhere(seed, HOSTILE)
    plain = to_markdown(plain_report, context=plain_context)
    hostile = to_markdown(hostile_report, context=hostile_context)
    # No value starts a line of its own...
    assert len(hostile.splitlines()) == len(plain.splitlines())
    plain_page, hostile_page = render(plain), render(hostile)
    # ...nor an element, a link, an image or a cell; its addresses are code...
    assert elements(hostile_page) == elements(plain_page)
    added = Counter(codes(hostile_page)) - Counter(codes(plain_page))
    assert set(added) == HOSTILE_ADDRESSES
    # ...and each block reads as before, with the value as written where it was.
    expected = [(tag, text.replace(PLAIN, HOSTILE_READ)) for tag, text in plain_page.blocks]
    assert hostile_page.blocks == expected
    assert plain.count(PLAIN) > 60


def test_a_pipe_in_a_log_value_stays_inside_its_table_cell(seed: RunReport) -> None:
    (finding,) = seed.findings
    value = "Contoso | Admin || Portal \\| end |"
    primary, *rest = finding.sign_ins
    agent = primary.model_copy(update={"user_agent": value})
    reasons = tuple(reason.model_copy(update={"detail": value}) for reason in finding.reasons)
    changed = finding.model_copy(update={"reasons": reasons, "sign_ins": (agent, *rest)})
    report = seed.model_copy(
        update={
            "findings": (changed,),
            "actions": tuple(a.model_copy(update={"target": value}) for a in seed.actions),
        }
    )
    page = render(to_markdown(report))
    timeline, why, plan = page.tables
    where = f"{primary.app_display_name} from {primary.ip_address} ({primary.country})"
    assert [where + " " + value] == [row[3] for row in timeline if row[0] == "0"]
    assert len(why) == 1 + len(finding.reasons)
    for row in why[1:]:
        assert len(row) == 3 and row[2] == value
    assert len(plan) == 1 + len(seed.actions)
    for row, action in zip(plan[1:], seed.actions, strict=True):
        assert row[1] == value
        assert row[4].startswith(request_line(action.request))


def test_html_in_a_log_value_is_shown_not_rendered(seed: RunReport) -> None:
    value = (
        '<script>alert(1)</script><img src=x onerror="alert(2)"><a href="http://evil.example">x</a>'
    )
    report, context = everywhere(seed, value)
    markdown = to_markdown(report, context=context)
    page = render(markdown)
    assert "<script" not in page.html and "<img" not in page.html and "<a " not in page.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.html
    assert page.texts("h1") == [value]
    (finding,) = seed.findings
    assert page.texts("h3")[0] == f"{value} — HIGH, score {finding.score}"


def test_formatting_and_links_in_a_log_value_stay_text(seed: RunReport) -> None:
    value = (
        "**urgent** _now_ *x* ~~old~~ [verify](http://evil.example) ![p](http://e.example/p.png)"
    )
    report, context = everywhere(seed, value)
    page = render(to_markdown(report, context=context))
    names = {name for name, _ in page.tags}
    assert not names & {"a", "img", "em", "del", "s"}
    # The bold labels and the app's name are tokenward's own bold, and no more.
    plain, plain_context = everywhere(seed, PLAIN)
    own = render(to_markdown(plain, context=plain_context))
    assert [tag for tag in page.tags if tag[0] == "strong"] == [
        tag for tag in own.tags if tag[0] == "strong"
    ]
    (sign_in,) = [text for text in page.texts("p") if text.startswith("Device code sign-in")]
    assert f" to {value} for {value} from {value} ({value}), success ({value}, " in sign_in


def test_a_clicked_url_is_shown_whole_in_the_clicks_and_as_host_and_path_on_the_timeline(
    seed: RunReport,
) -> None:
    (finding,) = seed.findings
    url = "https://evil.example/a_b*c*/[x](http://e.example)|<img src=x>?q=`t`&r=**1**#frag"
    clicks = tuple(
        click.model_copy(update={"url_chain": (click.url, url)})
        for click in finding.evidence.url_clicks
    )
    changed = finding.model_copy(
        update={"evidence": finding.evidence.model_copy(update={"url_clicks": clicks})}
    )
    page = render(to_markdown(seed.model_copy(update={"findings": (changed,)})))
    assert elements(page) == elements(render(to_markdown(seed)))
    (listed,) = [text for text in page.texts("li") if " via " in text]
    assert f"{clicks[0].url} → {url} [" in listed
    # Each address is code, which no renderer that links bare URLs links.
    assert {clicks[0].url, url} <= set(codes(page))
    timeline = page.tables[0]
    assert any(row[3] == f"{short_url(clicks[0].url)} → {short_url(url)}" for row in timeline[1:])


def test_a_newline_in_an_email_subject_does_not_start_a_new_line(seed: RunReport) -> None:
    (finding,) = seed.findings
    subject = "Re-verify\n\n# Pwned\r\n- [x](http://evil.example)\n| a | b |\n|---|---|\u2028end"
    emails = tuple(e.model_copy(update={"subject": subject}) for e in finding.evidence.emails)
    changed = finding.model_copy(
        update={"evidence": finding.evidence.model_copy(update={"emails": emails})}
    )
    before = to_markdown(seed)
    after = to_markdown(seed.model_copy(update={"findings": (changed,)}))
    assert len(after.splitlines()) == len(before.splitlines())
    page = render(after)
    assert elements(page) == elements(render(before))
    assert "http://evil.example" in codes(page)
    read = "Re-verify  # Pwned  - [x](http://evil.example) | a | b | |---|---| end"
    (mail,) = [text for text in page.texts("li") if "(linked by " in text]
    assert f": '{read}' from " in mail
    timeline = page.tables[0]
    assert timeline[1][3] == f"“{read}” from {emails[0].sender_from_address}"


def test_a_backtick_in_a_request_does_not_end_its_code_span(seed: RunReport) -> None:
    action = seed.actions[1]
    request = action.request.model_copy(
        update={
            "path": "/users/a`b``c|d\\|e/x",
            "body": {"note": "``` `|` ` end`", "upn": "`eve|@contoso.com"},
        }
    )
    changed: ActionReport = action.model_copy(update={"request": request})
    report = seed.model_copy(update={"actions": (seed.actions[0], changed, *seed.actions[2:])})
    page = render(to_markdown(report))
    plan = page.tables[-1]
    assert plan[2][4] == f"{request_line(request)} {request_body(request)}"
    shown = codes(page)
    assert request_line(request) in shown and request_body(request) in shown
    assert len(shown) == len(codes(render(to_markdown(seed))))


def test_a_backtick_fence_in_a_query_does_not_close_its_code_block(seed: RunReport) -> None:
    text = 'SigninLogs\n```\n# injected\n````\n| where UserPrincipalName == "```x"'
    queries = (seed.queries[0].model_copy(update={"text": text}), *seed.queries[1:])
    page = render(to_markdown(seed.model_copy(update={"queries": queries})))
    blocks = page.texts("pre")
    assert blocks[0] == text
    assert len(blocks) == len(seed.queries)
    assert "injected" not in " ".join(page.texts("h1") + page.texts("h2") + page.texts("h3"))


def test_a_value_that_looks_like_a_list_or_a_heading_stays_one_item(seed: RunReport) -> None:
    warnings = ("- nested", "+ plus", "1. first", "2) second", "# heading", "---", "- - -")
    warnings += ("    indented code", "> quote", "<div>", "[x]: http://evil.example", "===")
    page = render(to_markdown(seed.model_copy(update={"warnings": warnings})))
    section = parse(page.html.split("<h2>Warnings</h2>")[1].split("<h2>")[0])
    # One list, one item per warning, each reading as written; the address is code.
    assert set(elements(section)) == {"ul", "li"}
    assert codes(section) == ["http://evil.example"]
    assert section.texts("li") == [warning.strip() for warning in warnings]


def test_log_values_stay_in_their_cells_in_the_what_if_tables(seed: RunReport) -> None:
    (finding,) = seed.findings
    value = "eve | <img src=x> `x` **b**"
    what_if = WhatIf(
        overrides=(OverrideShown(key="a|b`c", before="`70`", after="|", source=value),),
        thresholds_before=Thresholds(high=70, medium=40),
        thresholds_after=Thresholds(high=60, medium=40),
        findings=(
            FindingChange(
                finding_id=finding.id,
                user_principal_name=value,
                sign_in_time=finding.sign_in_time,
                app=value,
                score_before=60,
                tier_before=Tier.MEDIUM,
                score_after=60,
                tier_after=Tier.HIGH,
            ),
        ),
        actions=(
            UserActions(
                user_principal_name=value,
                before=(),
                after=(PlannedItem(action=seed.actions[0].action, status=seed.actions[0].status),),
            ),
        ),
        expected_after=(f"- {value}",),
    )
    page = render(to_markdown(seed, context=ReportContext(what_if=what_if)))
    overrides, changes = page.tables[:2]
    assert overrides[1] == ["a|b`c", "`70`", "|", value]
    assert changes[1][:2] == [value, f"{finding.sign_in_time:%Y-%m-%dT%H:%M:%SZ} {value}"]
    assert f"Actions for {value}: adds revoke sessions (would be sent); drops nothing." in (
        page.texts("li")
    )
    assert f"- {value}" in page.texts("li")
    assert "<img" not in page.html


# -- the helpers ---------------------------------------------------------------


ORDINARY = [
    "target.user@contoso.com",
    "185.220.101.7",
    "2001:db8::7",
    "Microsoft Authentication Broker",
    "Windows Azure Service Management API (04b07795-8ddb-461a-bbee-02f9e1bf7b46)",
    "first_last@contoso.com",
    "python-requests/2.28.0",
    "NL",
    "Action required: re-verify your Microsoft 365 access",
    "-5",
    "10.0.0.1",
]


@pytest.mark.parametrize("value", ORDINARY)
def test_ordinary_values_are_unchanged(value: str) -> None:
    assert inline_text(value) == value
    assert code_span(value) == f"`{value}`"
    assert code_span(value, in_table=True) == f"`{value}`"


def test_the_seed_report_reads_as_before(seed: RunReport) -> None:
    markdown = to_markdown(seed)
    (finding,) = seed.findings
    assert f"### target.user@contoso.com — HIGH, score {finding.score}" in markdown
    assert "to **Microsoft Azure CLI** for Windows Azure Service Management API" in markdown
    assert "from 185.220.101.47 (NL), success (SigninLogs, 1 row(s) in the flow)." in markdown
    assert "| +15 | threat_intel_ip | 185.220.101.47 is in 185.220.101.0/24," in markdown
    assert (
        "| revoke_sessions | target.user@contoso.com | unattended | would_send | "
        f"`POST https://graph.microsoft.com/v1.0/users/{finding.user_id}/revokeSignInSessions` |"
    ) in markdown
    assert "### url_clicks — " in markdown
    assert "\n```kql\n" in markdown


def test_markup_characters_are_escaped_and_line_breaks_become_spaces() -> None:
    assert inline_text("a|b\r\nc <d> **e**\u2028f") == "a\\|b  c \\<d\\> \\*\\*e\\*\\* f"
    assert inline_text("[x](http://evil.example)") == "\\[x\\](`http://evil.example`)"
    assert inline_text("- item") == "\\- item"
    assert inline_text("1. first") == "1\\. first"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (
            "https://secure-access.contoso-verify.workers.dev/session",
            "`https://secure-access.contoso-verify.workers.dev/session`",
        ),
        ("opened www.evil.example/a_b now", "opened `www.evil.example/a_b` now"),
        (
            "redirects to https://x.example/devicelogin, where",
            "redirects to `https://x.example/devicelogin`, where",
        ),
        ("(see https://x.example/a_(b)).", "(see `https://x.example/a_(b)`)."),
        ("HXXP://x.example|next", "`HXXP://x.example`\\|next"),
        ("see ftp://x.example/`f`", "see `ftp://x.example/`\\`f\\`"),
        (
            "no link: evil.example or mailto:eve@evil.example",
            "no link: evil.example or mailto:eve@evil.example",
        ),
    ],
)
def test_an_address_in_a_value_is_code_up_to_a_space_a_pipe_a_backtick_or_punctuation(
    value: str, shown: str
) -> None:
    assert inline_text(value) == shown


def test_a_code_span_is_fenced_longer_than_the_backticks_in_it() -> None:
    assert code_span("a`b") == "``a`b``"
    assert code_span("`x`") == "`` `x` ``"
    assert code_span("a|b", in_table=True) == "`a\\|b`"


CODE_VALUES = ["`", "``", "a`b", "``x``", "` x `", " a ", "   ", "", "a|b", "x\\", "\\|", "`|`"]


@pytest.mark.parametrize("value", CODE_VALUES)
def test_a_code_span_holds_its_value_exactly_in_text_and_in_a_table(value: str) -> None:
    shown = value or " "
    assert codes(render(f"x {code_span(value)} y\n")) == [shown]
    assert codes(render(f"| head |\n|---|\n| {code_span(value, in_table=True)} |\n")) == [shown]


CONTROLS = "\n\r\t\x00\x0b\x85\u2028\u2029"


def fuzzed() -> list[str]:
    rnd = random.Random(11)
    alphabet = list("\\`*_[]<>|#!&~$-+=.()0123456789 :/@'\"ax" + CONTROLS)
    alphabet += ["&lt;", "&#60;", "<http://e.example>", "www.e.example", "1. ", "- ", "    "]
    return ["".join(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 20))) for _ in range(500)]


def one_line(value: str) -> str:
    """*value* with each line break or control character a space."""
    return "".join(" " if char in CONTROLS else char for char in value)


def test_fuzzed_text_reads_as_written_in_a_list_item_a_heading_a_paragraph_and_a_cell() -> None:
    for value in fuzzed():
        shown = one_line(value).strip(" ")
        item = render(f"- {inline_text(value)}\n- next\n")
        assert item.texts("li") == [shown, "next"], value
        assert elements(item) == ["ul", "li", "li"], value
        heading = render(f"### {inline_text(value)} — x\n")
        assert heading.texts("h3") == [f"{shown} — x".strip()], value
        paragraph = render(f"{inline_text(value)}\n")
        assert elements(paragraph) == (["p"] if shown else []), value
        assert paragraph.texts("p") == ([shown] if shown else []), value
        assert cell_text(inline_text(value)) == shown, value


def test_fuzzed_code_reads_as_written_in_text_and_in_a_cell() -> None:
    for value in fuzzed():
        shown = one_line(value) or " "
        page = render(f"x {code_span(value)} y\n")
        assert [name for name, _ in page.tags] == ["p", "code"], value
        assert codes(page) == [shown], value
        cell = render(f"| head |\n|---|\n| {code_span(value, in_table=True)} |\n")
        assert codes(cell) == [shown], value
