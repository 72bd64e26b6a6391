"""Tabletop scenarios: a SOC writes its own case in YAML; bad cases say where."""

from __future__ import annotations

import re
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from playbooks.errors import ScenarioError
from playbooks.exercises import bundled_scenarios, load_scenario, parse_offset
from tests.cli_helpers import run_tokenward

REPO = Path(__file__).resolve().parent.parent

# A small valid case; the tests below break it one key at a time.
CASE = """\
name: lunch-lure
title: A lure at lunchtime
description: A user opens a link and a script redeems the code.
anchor: 2026-03-02T12:10:00Z
users:
  dana:
    upn: dana@contoso.com
    history: {days: 10, per_day: 2, country: US}
emails:
  - id: lure
    user: dana
    at: -6m
    sender: it@contoso-help.com
    subject: Please re-verify
clicks:
  - user: dana
    at: -2m
    email: lure
    url: https://verify.contoso-help.workers.dev/x
    chain: [https://verify.contoso-help.workers.dev/x, https://microsoft.com/devicelogin]
sign_ins:
  - user: dana
    at: 0
    app: Microsoft Azure CLI
    ip: 198.51.100.9
    country: RO
    user_agent: python-requests/2.31
expected:
  findings:
    - {user: dana, tier: high}
  actions:
    - {action: revoke_sessions, user: dana, status: would_send}
    - {action: disable_account, user: dana, status: would_send}
    - {action: confirm_compromised, user: dana, status: would_send}
"""


def write(tmp_path: Path, text: str, name: str = "case.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, fragment: str) -> int:
    """The 1-based line of the first line of *text* holding *fragment*."""
    for number, line in enumerate(text.splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} is not in the case")


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, text))
    return str(caught.value)


# -- the format ----------------------------------------------------------------


def test_the_small_case_loads_with_times_relative_to_the_anchor(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, CASE))
    assert scenario.emails[0].at == timedelta(minutes=-6)
    assert scenario.clicks[0].at == timedelta(minutes=-2)
    assert scenario.sign_ins[0].at == timedelta(0)
    # Defaults: the clock is an hour after the anchor, the window a day long.
    assert scenario.clock - scenario.anchor == timedelta(hours=1)
    assert scenario.since == timedelta(hours=24)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", timedelta(0)),
        ("-3m", timedelta(minutes=-3)),
        ("+1h30m", timedelta(hours=1, minutes=30)),
        ("-2d", timedelta(days=-2)),
        ("45s", timedelta(seconds=45)),
        ("- 1h 5m", timedelta(hours=-1, minutes=-5)),
    ],
)
def test_relative_times_read_as_a_signed_sum_of_units(text: str, expected: timedelta) -> None:
    assert parse_offset(text) == expected


def test_every_bundled_scenario_loads_and_has_a_one_line_title() -> None:
    paths = bundled_scenarios()
    assert len(paths) >= 6
    for path in paths:
        scenario = load_scenario(path)
        assert scenario.name == path.stem
        assert "\n" not in scenario.title and len(scenario.title) < 90


def test_list_shows_each_bundled_scenario_with_its_title_and_expected_tier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_tokenward(["exercise", "--list"], tmp_path, capsys)
    assert result.code == 0
    rows = [line for line in result.out.splitlines() if line.strip()]
    for path in bundled_scenarios():
        scenario = load_scenario(path)
        row = next(line for line in rows if line.startswith(scenario.name + " "))
        assert scenario.expected.findings[0].tier.value in row
        assert scenario.title[:30] in " ".join(result.out.split())


@pytest.mark.parametrize("path", bundled_scenarios(), ids=lambda path: path.stem)
def test_every_bundled_scenario_meets_its_expected_outcome(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_tokenward(
        [
            "exercise",
            path.stem,
            "--report",
            str(tmp_path / "r.html"),
            "--markdown",
            str(tmp_path / "r.md"),
        ],
        tmp_path,
        capsys,
    )
    assert result.code == 0, result.err
    assert "Expected outcome met." in result.out


def test_a_scenario_file_runs_with_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_tokenward(
        [
            "exercise",
            "--file",
            str(write(tmp_path, CASE)),
            "--report",
            str(tmp_path / "r.html"),
            "--markdown",
            str(tmp_path / "r.md"),
        ],
        tmp_path,
        capsys,
    )
    assert result.code == 0, result.err
    assert "Expected outcome met." in result.out
    assert (tmp_path / "r.html").read_text(encoding="utf-8").startswith("<!doctype html>")


def test_an_unmet_expected_outcome_fails_the_command_and_says_how(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = CASE.replace("- {user: dana, tier: high}", "- {user: dana, tier: low}")
    result = run_tokenward(
        [
            "exercise",
            "--file",
            str(write(tmp_path, wrong)),
            "--report",
            str(tmp_path / "r.html"),
            "--markdown",
            str(tmp_path / "r.md"),
        ],
        tmp_path,
        capsys,
    )
    assert result.code == 1
    assert "dana@contoso.com: expected tier low, got high" in result.out
    assert "expected outcome was not met" in result.err


# -- bad input: the file, the line and the key ---------------------------------


def test_an_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    text = CASE.replace(
        "    subject: Please re-verify",
        "    subject: Please re-verify\n    colour: red",
    )
    message = refusal(tmp_path, text)
    assert message == (
        f"{tmp_path / 'case.yaml'}:{line_of(text, 'colour')} (at emails[0].colour): "
        "unknown key 'colour'"
    )


def test_a_misspelt_nested_key_is_refused_where_it_is(tmp_path: Path) -> None:
    text = CASE.replace("history: {days: 10", "history: {dayz: 10")
    message = refusal(tmp_path, text)
    assert f"case.yaml:{line_of(text, 'dayz')} (at users.dana.history.dayz)" in message
    assert "unknown key 'dayz'" in message


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("-2x", "'-2x' is not a time relative to the anchor"),
        ("two minutes ago", "is not a time relative to the anchor"),
        ("-2", "-2 has no unit: write it like -2m or -2s"),
        (
            "2026-03-02T12:08:00Z",
            "is a point in time; times in a scenario are relative",
        ),
        ("+2h", "+2h is after the exercise's clock (now: +1h)"),
    ],
)
def test_a_time_that_does_not_parse_names_file_line_and_key(
    tmp_path: Path, bad: str, says: str
) -> None:
    text = CASE.replace("    at: -2m", f"    at: {bad}")
    message = refusal(tmp_path, text)
    assert f"case.yaml:{line_of(text, f'at: {bad}')} (at clicks[0].at): " in message
    assert says in message


def test_an_anchor_without_a_zone_is_refused(tmp_path: Path) -> None:
    text = CASE.replace("anchor: 2026-03-02T12:10:00Z", "anchor: 2026-03-02T12:10:00")
    message = refusal(tmp_path, text)
    assert "case.yaml:4 (at anchor): the anchor has no time zone; end it with Z" in message


def test_a_window_length_that_does_not_parse_is_refused(tmp_path: Path) -> None:
    text = CASE.replace(
        "anchor: 2026-03-02T12:10:00Z", "anchor: 2026-03-02T12:10:00Z\nsince: 1 day"
    )
    message = refusal(tmp_path, text)
    assert "case.yaml:5 (at since): '1 day' is not a length of time" in message


def test_a_sign_in_before_the_hunt_window_is_refused(tmp_path: Path) -> None:
    text = CASE.replace("    at: 0\n", "    at: -2d\n")
    message = refusal(tmp_path, text)
    assert "(at sign_ins[0].at): -2d is before the hunt window" in message


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        (
            "  - user: dana\n    at: -2m",
            "  - user: dnaa\n    at: -2m",
            "clicks[0].user",
        ),
        (
            "  - id: lure\n    user: dana",
            "  - id: lure\n    user: dnaa",
            "emails[0].user",
        ),
        ("  - user: dana\n    at: 0", "  - user: dnaa\n    at: 0", "sign_ins[0].user"),
        (
            "- {user: dana, tier: high}",
            "- {user: dnaa, tier: high}",
            "expected.findings[0].user",
        ),
    ],
)
def test_a_row_pointing_at_an_unknown_user_names_file_line_and_key(
    tmp_path: Path, old: str, new: str, key: str
) -> None:
    text = CASE.replace(old, new, 1)
    message = refusal(tmp_path, text)
    line = line_of(text, "dnaa")
    assert message == (
        f"{tmp_path / 'case.yaml'}:{line} (at {key}): unknown user 'dnaa' (users: dana)"
    )


def test_a_click_pointing_at_an_unknown_mail_is_refused(tmp_path: Path) -> None:
    text = CASE.replace("    email: lure", "    email: lrue")
    message = refusal(tmp_path, text)
    assert (
        f"case.yaml:{line_of(text, 'lrue')} (at clicks[0].email): unknown email 'lrue'" in message
    )


def test_an_expected_reason_that_is_no_signal_is_refused_at_load(
    tmp_path: Path,
) -> None:
    text = CASE.replace(
        "- {user: dana, tier: high}",
        "- {user: dana, tier: high, reasons: [url_clik_before]}",
    )
    message = refusal(tmp_path, text)
    assert "(at expected.findings[0].reasons[0]): unknown signal 'url_clik_before'" in message


def test_an_address_that_is_not_one_is_refused(tmp_path: Path) -> None:
    text = CASE.replace("ip: 198.51.100.9", "ip: 198.51.100.900")
    message = refusal(tmp_path, text)
    assert "(at sign_ins[0].ip): '198.51.100.900' is not an IP address" in message


def test_a_value_outside_its_choices_lists_them(tmp_path: Path) -> None:
    text = CASE.replace("tier: high}", "tier: hihg}")
    message = refusal(tmp_path, text)
    assert (
        "(at expected.findings[0].tier): Input should be 'high', 'medium' or 'low', not 'hihg'"
        in message
    )


def test_a_duplicate_key_is_refused_with_its_line(tmp_path: Path) -> None:
    text = CASE.replace("title: A lure at lunchtime", "title: A lure at lunchtime\ntitle: again")
    message = refusal(tmp_path, text)
    assert re.search(r"case\.yaml:3\b", message)
    assert "duplicate" in message


def test_the_cli_prints_the_refusal_on_one_line_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, CASE.replace("    at: -2m", "    at: soon"))
    result = run_tokenward(["exercise", "--file", str(bad)], tmp_path, capsys)
    assert result.code == 1
    assert result.err.strip().splitlines()[-1].startswith(f"tokenward: ScenarioError: {bad}:")
    assert "(at clicks[0].at)" in result.err


def test_yaml_that_is_not_yaml_says_where(tmp_path: Path) -> None:
    message = refusal(tmp_path, textwrap.dedent(CASE) + "  - : [unclosed\n")
    assert re.search(r"case\.yaml:\d+", message)


# -- the flow's own rows ------------------------------------------------------------


def test_the_flows_own_paused_row_is_not_the_users_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The code was typed 40 s before the success, from the same foreign
    # country: that row belongs to this sign-in, not to the user's baseline.
    paused = CASE.replace(
        "sign_ins:\n",
        "sign_ins:\n  - {user: dana, at: -40s, app: Microsoft Azure CLI, result: 50199,"
        " ip: 198.51.100.9, country: RO, session: s1}\n",
    ).replace(
        "    user_agent: python-requests/2.31\n",
        "    user_agent: python-requests/2.31\n    session: s1\n",
    )
    paused = paused.replace(
        "- {user: dana, tier: high}",
        "- {user: dana, tier: high, reasons: [unusual_country, first_device_code_use]}",
    )
    result = run_tokenward(
        [
            "exercise",
            "--file",
            str(write(tmp_path, paused)),
            "--json",
            "--report",
            str(tmp_path / "r.html"),
            "--markdown",
            str(tmp_path / "r.md"),
        ],
        tmp_path,
        capsys,
    )
    assert result.code == 0, result.out[-2000:]
    [finding] = result.json()["findings"]
    assert len(finding["sign_ins"]) == 2
    assert finding["baseline"]["countries"] == ["US"]
    assert finding["baseline"]["device_code_sign_ins"] == 0


# -- the documentation is the format ------------------------------------------------


DOC = REPO / "docs" / "scenarios.md"


def model_keys() -> set[str]:
    """Every key a scenario file may hold, from the models that read it."""
    from pydantic import BaseModel

    from playbooks.exercises import Scenario

    keys: set[str] = set()
    seen: set[type[BaseModel]] = set()

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, info in model.model_fields.items():
            keys.add(name)
            for kind in _types(info.annotation):
                if isinstance(kind, type) and issubclass(kind, BaseModel):
                    walk(kind)

    walk(Scenario)
    return keys


def _types(annotation: object) -> list[object]:
    from typing import get_args

    found = [annotation]
    for arg in get_args(annotation):
        found += _types(arg)
    return found


def test_the_documentation_names_every_key_a_scenario_may_hold() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = sorted(key for key in model_keys() if f"`{key}`" not in text)
    assert missing == []


def test_the_documentation_lists_every_signal() -> None:
    from playbooks.scoring import SIGNALS

    text = DOC.read_text(encoding="utf-8")
    assert sorted(name for name in SIGNALS if f"`{name}`" not in text) == []


def test_the_documented_example_loads_and_meets_its_expected_outcome(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = DOC.read_text(encoding="utf-8")
    examples = [
        block
        for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
        if block.startswith("name: ")
    ]
    assert examples, "docs/scenarios.md has no complete example"
    for number, example in enumerate(examples):
        path = write(tmp_path, example, f"example-{number}.yaml")
        result = run_tokenward(
            [
                "exercise",
                "--file",
                str(path),
                "--report",
                str(tmp_path / "r.html"),
                "--markdown",
                str(tmp_path / "r.md"),
            ],
            tmp_path,
            capsys,
        )
        assert result.code == 0, result.out[-1500:]
        assert "Expected outcome met." in result.out
