"""What-if: an exercise re-run under changed weights or thresholds, compared."""

from __future__ import annotations

from pathlib import Path

import pytest

from playbooks.errors import PlaybookError
from playbooks.playbook import BUNDLED, load_playbook, parse_set, read_overrides
from tests.cli_helpers import run_tokenward


def line_in_playbook(fragment: str) -> int:
    for number, line in enumerate(BUNDLED.read_text(encoding="utf-8").splitlines(), 1):
        if fragment in line:
            return number
    raise AssertionError(fragment)


# -- overrides are checked like the playbook itself ---------------------------


def test_set_changes_a_key_and_records_its_value_before() -> None:
    playbook = load_playbook(overrides=[parse_set("scoring.thresholds.high=60")])
    assert playbook.spec.scoring.thresholds.high == 60
    [applied] = playbook.overrides
    assert (applied.key, applied.before, applied.after) == (
        "scoring.thresholds.high",
        70,
        60,
    )


def test_set_of_a_key_the_playbook_does_not_have_names_it_and_what_is_there() -> None:
    with pytest.raises(PlaybookError) as caught:
        load_playbook(overrides=[parse_set("scoring.thresholds.hihg=60")])
    assert str(caught.value) == (
        "--set (at scoring.thresholds.hihg): the playbook has no key 'hihg' in "
        f"scoring.thresholds (keys there: high, medium; see {BUNDLED}:"
        f"{line_in_playbook('  thresholds:')})"
    )


def test_an_override_file_names_its_own_file_line_and_key(tmp_path: Path) -> None:
    overrides = tmp_path / "tuned.yaml"
    overrides.write_text(
        "scoring:\n  thresholds:\n    high: 60\n  signals:\n    url_click_befor:\n      weight: 30\n",
        encoding="utf-8",
    )
    with pytest.raises(PlaybookError) as caught:
        load_playbook(overrides=read_overrides(overrides))
    message = str(caught.value)
    assert message.startswith(f"{overrides}:5 (at scoring.signals.url_click_befor): ")
    assert "the playbook has no key 'url_click_befor' in scoring.signals" in message


def test_a_value_the_playbook_refuses_is_blamed_on_the_override(tmp_path: Path) -> None:
    overrides = tmp_path / "tuned.yaml"
    overrides.write_text("scoring:\n  signals:\n    url_click_before:\n      weight: 500\n")
    with pytest.raises(PlaybookError) as caught:
        load_playbook(overrides=read_overrides(overrides))
    assert str(caught.value).startswith(
        f"{overrides}:4 (at scoring.signals.url_click_before.weight): "
        "Input should be less than or equal to 100"
    )


def test_thresholds_out_of_order_are_blamed_on_the_set_that_caused_it() -> None:
    with pytest.raises(PlaybookError) as caught:
        load_playbook(overrides=[parse_set("scoring.thresholds.high=30")])
    assert str(caught.value) == (
        "--set (at scoring.thresholds): medium (40) must be below high (30)"
    )


def test_a_list_is_overridden_whole_not_item_by_item() -> None:
    with pytest.raises(PlaybookError, match=r"is a list: override it whole"):
        load_playbook(overrides=[parse_set("scoring.signals.click_lure_host.hosts.0=x.dev")])
    playbook = load_playbook(
        overrides=[parse_set("scoring.signals.click_lure_host.hosts=[x.dev, y.dev]")]
    )
    assert playbook.signals["click_lure_host"].hosts == ["x.dev", "y.dev"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("item", ["scoring.thresholds.high", "=60", "scoring..high=1"])
def test_a_set_that_is_not_key_equals_value_is_refused(item: str) -> None:
    with pytest.raises(PlaybookError, match=r"--set"):
        parse_set(item)


# -- the what-if run -----------------------------------------------------------


def run_exercise(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str, str, str]:
    html, markdown = tmp_path / "r.html", tmp_path / "r.md"
    result = run_tokenward(
        ["exercise", *args, "--report", str(html), "--markdown", str(markdown)],
        tmp_path,
        capsys,
    )
    return (
        result.code,
        result.out,
        result.err,
        markdown.read_text(encoding="utf-8") if markdown.exists() else "",
        html.read_text(encoding="utf-8") if html.exists() else "",
    )


def test_a_lower_high_threshold_moves_the_blocked_sign_in_up_a_tier_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err, markdown, html = run_exercise(
        ["failed-device-code-sign-in", "--set", "scoring.thresholds.high=55"],
        tmp_path,
        capsys,
    )
    # The scenario's expectation holds for the unchanged playbook: the command passes.
    assert code == 0, err
    assert "Expected outcome (unchanged playbook) met." in out

    # The terminal: the change, the finding's move, the actions it adds.
    assert "1 of 1 finding(s) change tier (1 up)." in out
    assert "MEDIUM 60" in out and "HIGH 60" in out and "medium → high" in out
    assert "adds revoke sessions (would be sent)" in " ".join(out.split())

    # Markdown: the same comparison as tables.
    assert "## What if" in markdown
    assert "| `scoring.thresholds.high` | `70` | `55` | --set |" in markdown
    assert "| MEDIUM 60 | HIGH 60 | **medium → high** |" in markdown

    # HTML: a what-if section and the finding marked as moved.
    assert 'id="what-if"' in html
    assert '<tr class="moved up">' in html
    assert "What-if: with the unchanged playbook this finding is" in html


def test_an_override_file_reweights_signals_and_a_finding_moves_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = tmp_path / "failures-matter-less.yaml"
    overrides.write_text(
        "# A failed sign-in issued no token: weigh that more.\n"
        "scoring:\n"
        "  signals:\n"
        "    sign_in_not_successful: {weight: -70}\n",
        encoding="utf-8",
    )
    code, out, _, markdown, _ = run_exercise(
        ["failed-device-code-sign-in", "--overrides", str(overrides)], tmp_path, capsys
    )
    assert code == 0
    assert "1 of 1 finding(s) change tier (1 down)." in out
    assert (
        f"| `scoring.signals.sign_in_not_successful.weight` | `-40` | `-70` | {overrides}:4 |"
        in markdown
    )
    assert "| MEDIUM 60 | LOW 30 | **medium → low** |" in markdown
    # The expected outcome was written for the playbook as it is, and the
    # what-if no longer meets it: the report says so without failing.
    assert "the what-if differs" in markdown.lower()


def test_a_what_if_that_changes_nothing_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _, _, _ = run_exercise(
        ["seed-true-positive", "--set", "scoring.thresholds.high=75"], tmp_path, capsys
    )
    assert code == 0
    assert "No finding changes tier or score." in out


def test_a_what_if_with_an_unknown_key_fails_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err, markdown, html = run_exercise(
        ["seed-true-positive", "--set", "scoring.tresholds.high=60"], tmp_path, capsys
    )
    assert code == 1
    assert (
        "PlaybookError: --set (at scoring.tresholds.high): the playbook has no key 'tresholds'"
        in err
    )
    assert markdown == "" and html == ""


def test_the_documented_override_file_applies_to_the_bundled_playbook(
    tmp_path: Path,
) -> None:
    import re

    doc = (Path(__file__).resolve().parent.parent / "docs" / "exercises.md").read_text()
    [example] = [b for b in re.findall(r"```yaml\n(.*?)```", doc, flags=re.S) if "tuned.yaml" in b]
    path = tmp_path / "tuned.yaml"
    path.write_text(example, encoding="utf-8")
    playbook = load_playbook(overrides=read_overrides(path))
    assert playbook.spec.scoring.thresholds.high == 60
    assert playbook.signals["url_click_before"].weight == 15
    assert playbook.signals["threat_intel_ip"].weight == 25
