"""The HTML report, read as markup: one file, the timeline to scale, the chart true."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from playbooks.models import RunReport
from playbooks.reports import ReportContext, signal_label
from playbooks.reports.html import to_html
from playbooks.reports.timeline import Lane, timeline_for
from playbooks.times import parse_time
from playbooks.whatif import Thresholds
from tests.cli_helpers import settings_file

SVG = "{http://www.w3.org/2000/svg}"


def run_exercise(args: list[str], folder: Path) -> tuple[RunReport, str]:
    """The JSON report and the HTML page of ``tokenward exercise ARGS``."""
    from playbooks.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / "run.json", folder / "run.html"
    try:
        main(
            [
                "--config",
                str(settings_file(folder)),
                "exercise",
                *args,
                "--output",
                str(json_path),
                "--report",
                str(html_path),
                "--markdown",
                str(folder / "run.md"),
            ]
        )
    except SystemExit as exit_:
        assert not exit_.code, f"the exercise failed ({exit_.code})"
    report = RunReport.model_validate_json(json_path.read_text(encoding="utf-8"))
    return report, html_path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunReport, str]:
    return run_exercise(["seed-true-positive"], tmp_path_factory.mktemp("seed"))


def charts(html: str) -> Iterator[ET.Element]:
    for match in re.finditer(r"<svg\b.*?</svg>", html, flags=re.S):
        yield ET.fromstring(match.group(0))


def chart(html: str, kind: str) -> ET.Element:
    """The first chart whose id ends in -timeline or -score."""
    for root in charts(html):
        if root.get("aria-labelledby", "").endswith(f"-{kind}-title"):
            return root
    raise AssertionError(f"no {kind} chart")


LANE_ORDER = ["mail", "click", "sign_in", "token_use", "tokenward"]


def marks(root: ET.Element) -> list[tuple[ET.Element, float]]:
    """Each timeline mark and the x where its marker is drawn, by time.

    (The SVG holds them in drawing order, which follows their layer.)
    """
    found = []
    for element in root.iter():
        if "tw-mark" in element.get("class", "").split():
            use = next(element.iter(f"{SVG}use"))
            found.append((element, float(use.get("x", "nan"))))
    return sorted(
        found,
        key=lambda item: (
            parse_time(item[0].get("data-time", "")).value,
            LANE_ORDER.index(item[0].get("data-lane", "")),
        ),
    )


# -- one file, nothing from anywhere ---------------------------------------------


def test_the_page_is_one_file_that_loads_nothing(seed: tuple[RunReport, str]) -> None:
    _, html = seed
    assert html.startswith("<!doctype html>")
    assert "default-src 'none'" in html  # the browser refuses any outside load
    assert not re.search(r"<(script|link|img|iframe|object|embed)\b", html, flags=re.I)
    assert not re.search(r"\bsrc\s*=", html, flags=re.I)
    assert not re.search(r"@import|(?<![A-Za-z0-9_])url\((?!#)", html)
    # Every link points inside the page, including the SVG's references.
    for target in re.findall(r'href="([^"]*)"', html):
        assert target.startswith("#"), target


def test_ids_are_unique_across_the_charts(tmp_path: Path) -> None:
    # Two users: two findings, four charts, one page.
    _, html = run_exercise(["--file", str(two_users(tmp_path))], tmp_path / "out")
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    assert len(list(charts(html))) == 4
    # References resolve to ids of the same page.
    for reference in re.findall(r'href="#([^"]+)"|url\(#([^)]+)\)', html):
        assert (reference[0] or reference[1]) in ids


def test_the_summary_says_what_happened_and_what_would_be_done(
    seed: tuple[RunReport, str],
) -> None:
    _, html = seed
    text = " ".join(re.sub(r"<[^>]+>", " ", html).split())
    assert "Dry run. tokenward built every request in this report and sent none of them." in text
    assert "Findings 1 1 high 0 medium 0 low" in text
    assert "Planned actions 3 3 would be sent" in text
    assert "Expected outcome met" in text
    assert (
        "Microsoft Azure CLI redeemed a device code for target.user@contoso.com from "
        "185.220.101.47 (NL), 3 minutes after the user opened a link from a mail. "
        "Score 100, high tier. Planned: revoke sessions, disable account and confirm "
        "compromised would be sent."
    ) in text


def test_every_request_is_shown_exactly_and_guardrails_are_stated(
    seed: tuple[RunReport, str],
) -> None:
    report, html = seed
    user_id = report.findings[0].user_id
    assert f"POST https://graph.microsoft.com/v1.0/users/{user_id}/revokeSignInSessions" in html
    assert (
        f"PATCH https://graph.microsoft.com/v1.0/users/{user_id}\n{{&#34;accountEnabled&#34;: false}}"
        in html
    )
    assert (
        "POST https://graph.microsoft.com/v1.0/identityProtection/riskyUsers/confirmCompromised"
        f"\n{{&#34;userIds&#34;: [&#34;{user_id}&#34;]}}"
    ) in html
    assert html.count("No guardrail held this action back.") == 3
    assert f'content hash <code class="hash">{report.plan_hash}</code>' in html


# -- the timeline ---------------------------------------------------------------


def test_the_timeline_has_the_mail_the_click_the_sign_in_and_each_action_in_order(
    seed: tuple[RunReport, str],
) -> None:
    report, html = seed
    found = marks(chart(html, "timeline"))
    kinds = [(element.get("data-lane"), element.get("data-kind")) for element, _ in found]
    assert kinds == [
        ("mail", "lure_email"),
        ("click", "click"),
        ("sign_in", "device_code"),
        ("tokenward", "action"),
        ("tokenward", "action"),
        ("tokenward", "action"),
    ]
    times = [parse_time(element.get("data-time", "")).value for element, _ in found]
    assert times == sorted(times)
    xs = [x for _, x in found]
    assert xs[:4] == sorted(xs[:4]) and len(set(xs[:4])) == 4
    statuses = {element.get("data-status") for element, _ in found[3:]}
    assert statuses == {"would_send"}
    assert len(found[3:]) == len(report.actions)


def test_the_timeline_is_drawn_to_scale(seed: tuple[RunReport, str]) -> None:
    _, html = seed
    (_, mail), (_, click), (_, sign_in), (_, run), *_ = marks(chart(html, "timeline"))
    # Mail -9 min, click -3 min, sign-in 0, the run's clock +30 min.
    minute = (sign_in - click) / 3
    assert click - mail == pytest.approx(6 * minute, rel=0.01)
    assert run - sign_in == pytest.approx(30 * minute, rel=0.01)


def test_the_timeline_table_lists_the_same_events_with_their_offsets(
    seed: tuple[RunReport, str],
) -> None:
    report, html = seed
    table = html.split('class="data timeline-table"')[1].split("</table>")[0]
    offsets = re.findall(r'<td class="num">([^<]+)</td>', table)
    assert offsets == ["−9 min", "−3 min", "0", "+30 min", "+30 min", "+30 min"]
    timeline = timeline_for(report.findings[0], report)
    assert [mark.offset_text for mark in timeline.marks] == offsets


def test_a_run_days_after_the_sign_in_breaks_the_axis_and_says_by_how_much(
    seed: tuple[RunReport, str],
) -> None:
    report, _ = seed
    later = report.model_copy(update={"now": report.now + timedelta(days=2)})
    html = to_html(later, context=ReportContext(thresholds=Thresholds(high=70, medium=40)))
    root = chart(html, "timeline")
    text = " ".join("".join(element.itertext()) for element in root.iter(f"{SVG}text"))
    # Two days, less the margins drawn either side of the break.
    assert "axis broken here: 2 d left out" in text
    # Both sides are still to scale: the lure story keeps its proportions.
    (_, mail), (_, click), (_, sign_in), *_ = marks(root)
    assert click - mail == pytest.approx(2 * (sign_in - click), rel=0.01)


def test_empty_lanes_say_nothing_was_found_in_the_searched_window(
    tmp_path: Path,
) -> None:
    _, html = run_exercise(["meeting-room-device"], tmp_path)
    root = chart(html, "timeline")
    text = " ".join("".join(element.itertext()) for element in root.iter(f"{SVG}text"))
    assert "no mail found from 1 h before to 5 min after the sign-in" in text
    assert "no click found from 1 h before to 5 min after the sign-in" in text
    kinds = [element.get("data-kind") for element, _ in marks(root)]
    assert kinds == ["device_code", "run"]


# -- the score chart -------------------------------------------------------------


def bar_widths(root: ET.Element) -> dict[str, tuple[int, float]]:
    widths = {}
    for element in root.iter():
        if "tw-bar" in element.get("class", "").split():
            path = next(element.iter(f"{SVG}path"))
            xs = [float(v) for v in re.findall(r"[ML]\s*(-?[\d.]+)", path.get("d", ""))]
            widths[element.get("data-signal", "")] = (
                int(element.get("data-weight", "0")),
                max(xs) - min(xs),
            )
    return widths


def test_the_chart_has_one_bar_per_reason_as_long_as_its_weight(
    seed: tuple[RunReport, str],
) -> None:
    report, html = seed
    finding = report.findings[0]
    widths = bar_widths(chart(html, "score"))
    assert {signal: weight for signal, (weight, _) in widths.items()} == {
        reason.signal: reason.weight for reason in finding.reasons
    }
    per_point = [width / weight for weight, width in widths.values()]
    assert max(per_point) == pytest.approx(min(per_point), rel=0.01)


def test_negative_weights_draw_to_the_left_and_the_gauge_shows_the_clamped_score(
    tmp_path: Path,
) -> None:
    report, html = run_exercise(["meeting-room-device"], tmp_path)
    root = chart(html, "score")
    widths = bar_widths(root)
    assert widths["sanctioned_use"][0] == -60
    assert widths["sanctioned_use"][1] == pytest.approx(widths["high_value_app"][1] * 4, rel=0.01)
    marker = next(e for e in root.iter() if "tw-score-marker" in e.get("class", ""))
    assert marker.get("data-score") == str(report.findings[0].score) == "0"
    text = " ".join("".join(element.itertext()) for element in root.iter(f"{SVG}text"))
    assert "the signals add up to -35; the score is held at 0" in text
    assert "medium ≥ 40" in text and "high ≥ 70" in text


def test_every_signal_has_a_label_and_a_group_of_its_own() -> None:
    from playbooks.reports import SIGNAL_LABELS, SignalGroup, signal_group
    from playbooks.scoring import SIGNALS

    assert set(SIGNALS) <= set(SIGNAL_LABELS)
    lowering = {"sign_in_not_successful", "sanctioned_use"}
    for name in SIGNALS:
        assert signal_label(name) == SIGNAL_LABELS[name]
        assert signal_group(name, -5) is SignalGroup.LOWERS
        if name not in lowering:
            assert signal_group(name, 5) is not SignalGroup.OTHER


# -- what the attacker wrote stays text ----------------------------------------------


def test_attacker_written_text_is_escaped_in_the_page_and_in_the_charts(
    tmp_path: Path,
) -> None:
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(
        CASE_TEMPLATE.format(
            subject='"<script>alert(1)</script> pay $\\\\frac{1}{2}$ & more"',
            agent='"curl/8 <img src=x onerror=alert(2)>"',
            users="",
        ),
        encoding="utf-8",
    )
    report, html = run_exercise(["--file", str(hostile)], tmp_path / "out")
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    timeline = chart(html, "timeline")
    text = " ".join("".join(element.itertext()) for element in timeline.iter(f"{SVG}text"))
    # Kept as written: no formula drawn from the $…$.
    assert "<script>alert(1)</script> pay $\\frac{1}{2}$ & more" in text
    assert report.findings[0].primary.user_agent in text


CASE_TEMPLATE = """\
name: hostile-text
title: Text an attacker wrote
description: Subjects and user agents come from the attacker.
anchor: 2026-03-02T12:10:00Z
users:
  dana: {{upn: dana@contoso.com}}
{users}emails:
  - {{id: lure, user: dana, at: -6m, sender: it@contoso-help.com, subject: {subject}}}
clicks:
  - {{user: dana, at: -2m, email: lure, url: "https://x.workers.dev/a"}}
sign_ins:
  - {{user: dana, at: 0, app: Microsoft Azure CLI, ip: 198.51.100.9, country: RO, user_agent: {agent}}}
expected:
  findings: [{{user: dana, tier: high}}]
  actions:
    - {{action: revoke_sessions, user: dana, status: would_send}}
    - {{action: disable_account, user: dana, status: would_send}}
    - {{action: confirm_compromised, user: dana, status: would_send}}
"""


def two_users(tmp_path: Path) -> Path:
    path = tmp_path / "two.yaml"
    text = CASE_TEMPLATE.format(
        subject="Re-verify",
        agent="python-requests/2.31",
        users="  eve: {upn: eve@contoso.com}\n",
    )
    text = text.replace(
        "expected:",
        "  - {user: eve, at: -20m, app: Microsoft Office, ip: 203.0.113.5, country: US}\nexpected:",
    ).replace(
        "findings: [{user: dana, tier: high}]",
        "findings: [{user: dana, tier: high}, {user: eve, tier: low}]",
    )
    path.write_text(text, encoding="utf-8")
    return path


def test_lanes_read_in_story_order() -> None:
    assert [lane.value for lane in Lane] == [
        "mail",
        "click",
        "sign_in",
        "token_use",
        "tokenward",
    ]


def test_what_the_token_was_used_for_gets_its_own_lane_and_blocked_actions_show(
    tmp_path: Path,
) -> None:
    report, html = run_exercise(["token-replay"], tmp_path)
    root = chart(html, "timeline")
    found = marks(root)
    lanes = [element.get("data-lane") for element, _ in found]
    assert lanes == [
        "click",
        "sign_in",
        "sign_in",
        "token_use",
        "token_use",
        "token_use",
        "tokenward",
        "tokenward",
        "tokenward",
    ]
    assert [e.get("data-status") for e, _ in found if e.get("data-lane") == "tokenward"] == [
        "blocked",
        "blocked",
        "blocked",
    ]
    text = " ".join("".join(element.itertext()) for element in root.iter(f"{SVG}text"))
    assert "Token use" in text
    assert "Token used 3×" in text
    assert "Microsoft Graph, Exchange Online, SharePoint Online" in text
    # The run came 45 minutes after a story of 9: the axis is broken, and says so.
    assert "axis broken here: 38 min left out" in text
    assert (
        "<b>protected account</b> (blocked): sam.assistant@contoso.com is a protected account"
        in html
    )


def test_a_dry_run_hunt_over_exported_files_writes_the_same_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from playbooks.exercises import find_scenario, load_scenario
    from tests.cli_helpers import run_tokenward

    scenario = load_scenario(find_scenario("guest-account"))
    exports = tmp_path / "exports"
    exports.mkdir()
    for table, rows in scenario.tables().items():
        (exports / f"{table}.json").write_text(json.dumps(rows), encoding="utf-8")
    html = tmp_path / "hunt.html"
    clock = scenario.clock.strftime("%Y-%m-%dT%H:%M:%SZ")
    result = run_tokenward(
        [
            "hunt",
            "--source",
            f"files:{exports}",
            "--now",
            clock,
            "--since",
            "24h",
            "--report",
            str(html),
        ],
        tmp_path,
        capsys,
    )
    assert result.code == 0, result.err
    page = html.read_text(encoding="utf-8")
    assert "dry-run hunt" in page and "tabletop exercise" not in page
    assert "pat.lee@fabrikam.com" in page
    assert len(marks(chart(page, "timeline"))) == 6
    assert "a revoke does not contain a guest" in page
