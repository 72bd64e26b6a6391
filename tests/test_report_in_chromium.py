"""The HTML report as a person sees it: opened in headless Chromium, measured.

These tests need Debian's ``chromium`` (``.ci/run`` installs it) and skip with
the reason where it is absent. They open the seed's report from a file, as a
person would, and check what Chromium drew: no console error, no request but
the file itself, and a timeline and a score chart laid out to scale.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from playbooks.models import RunReport
from tests.browser import chromium, find_chromium, new_page
from tests.test_html_report import run_exercise

pytestmark = [
    pytest.mark.skipif(
        find_chromium() is None,
        reason="Debian's chromium is not installed here (.ci/run installs it with "
        "apt-get install chromium)",
    ),
]
pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunReport, Path]:
    folder = tmp_path_factory.mktemp("seed")
    report, _ = run_exercise(["seed-true-positive"], folder)
    return report, folder / "run.html"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as running:
        yield running


@pytest.fixture(scope="module")
def opened(seed: tuple[RunReport, Path], browser: Any) -> tuple[Any, Any]:
    _, html = seed
    page, log = new_page(browser)
    page.goto(html.as_uri(), wait_until="load")
    return page, log


def boxes(page: Any, selector: str) -> list[dict[str, Any]]:
    """Each element's data attributes and where Chromium laid it out."""
    return list(
        page.eval_on_selector_all(
            selector,
            """elements => elements.map(element => {
                const box = element.getBoundingClientRect();
                return {...element.dataset, x: box.x, width: box.width,
                        cx: box.x + box.width / 2, cy: box.y + box.height / 2,
                        height: box.height};
            })""",
        )
    )


def test_the_report_loads_without_a_console_error_and_asks_for_nothing(
    seed: tuple[RunReport, Path], opened: tuple[Any, Any]
) -> None:
    _, html = seed
    page, log = opened
    assert log.console_errors == []
    assert log.page_errors == []
    assert log.failed == []
    # The page itself, and nothing else: no font, script, image or stylesheet.
    assert log.requests == [html.as_uri()]
    assert page.title().startswith("Azure CLI from a Tor exit node")


def test_the_page_refuses_anything_from_outside_even_if_it_crept_in(
    seed: tuple[RunReport, Path], browser: Any
) -> None:
    _, html = seed
    page, log = new_page(browser)
    page.goto(html.as_uri(), wait_until="load")
    page.evaluate(
        """() => {
            const image = document.createElement('img');
            image.src = 'https://tracker.invalid/pixel.png';
            document.body.appendChild(image);
        }"""
    )
    page.wait_for_timeout(200)
    page.close()
    assert any("Content Security Policy" in message for message in log.console_errors)
    # Chromium stopped it itself, before any connection was tried.
    assert log.failed == [("https://tracker.invalid/pixel.png", "csp")]


def test_the_timeline_is_drawn_in_time_order_and_to_scale(
    seed: tuple[RunReport, Path], opened: tuple[Any, Any]
) -> None:
    report, _ = seed
    page, _ = opened
    marks = boxes(page, "#finding-1 .timeline-chart .tw-mark")
    lanes = ["mail", "click", "sign_in", "token_use", "tokenward"]
    marks.sort(key=lambda mark: (mark["time"], lanes.index(mark["lane"])))
    assert [mark["kind"] for mark in marks] == [
        "lure_email",
        "click",
        "device_code",
        "action",
        "action",
        "action",
    ]
    for mark in marks:
        assert mark["width"] > 4 and mark["height"] > 4, "a mark is too small to see"

    mail, click, sign_in, *actions = (mark["cx"] for mark in marks)
    assert mail < click < sign_in < actions[0]
    minute = (sign_in - click) / 3
    assert click - mail == pytest.approx(6 * minute, rel=0.03)
    assert actions[0] - sign_in == pytest.approx(30 * minute, rel=0.03)
    # Each action is its own mark, stacked at the run's clock.
    assert len(actions) == len(report.actions) == 3
    assert max(actions) - min(actions) < 1
    # Lanes read from the top in story order.
    rows = [mark["cy"] for mark in marks[:4]]
    assert rows == sorted(rows)


def test_the_chart_bars_are_as_long_as_the_weights(
    seed: tuple[RunReport, Path], opened: tuple[Any, Any]
) -> None:
    report, _ = seed
    page, _ = opened
    bars = boxes(page, "#finding-1 .score-chart .tw-bar")
    weights = {reason.signal: reason.weight for reason in report.findings[0].reasons}
    assert {bar["signal"]: int(bar["weight"]) for bar in bars} == weights
    per_point = [bar["width"] / int(bar["weight"]) for bar in bars]
    assert max(per_point) == pytest.approx(min(per_point), rel=0.03)
    # Longest on top, as the reasons table lists them.
    ordered = sorted(bars, key=lambda bar: bar["cy"])
    assert [int(bar["weight"]) for bar in ordered] == sorted(weights.values(), reverse=True)


def test_the_sign_in_mark_is_painted_where_the_dom_says_it_is(
    opened: tuple[Any, Any],
) -> None:
    from PIL import Image

    page, _ = opened
    [sign_in] = [m for m in boxes(page, "#finding-1 .tw-mark") if m["kind"] == "device_code"]
    page.evaluate("y => window.scrollTo(0, y - 200)", sign_in["cy"])
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    scroll = page.evaluate("() => window.scrollY")
    x, y = round(sign_in["cx"]), round(sign_in["cy"] - scroll)
    red = (0xB9, 0x1C, 0x1C)
    pixels = [shot.getpixel((x + dx, y + dy)) for dx in range(-3, 4) for dy in range(-3, 4)]
    assert any(all(abs(a - b) < 40 for a, b in zip(pixel, red, strict=True)) for pixel in pixels)


def test_the_reader_finds_the_findings_story_and_the_requests(
    opened: tuple[Any, Any],
) -> None:
    page, _ = opened
    text = page.inner_text("body")
    assert "target.user@contoso.com" in text
    assert "3 minutes after the user opened a link from a mail" in text
    assert "revokeSignInSessions" in text
    assert page.is_visible("#finding-1 .timeline-chart svg")
    assert page.is_visible("#finding-1 .score-chart svg")
