"""Every bundled tabletop scenario reaches its expected outcome, end to end.

Each runs the way a user runs it: the ``tokenward exercise`` command, through
the real loader, the rendered playbook queries on the local engine, scoring,
planning and the dry-run responder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from playbooks.errors import ScenarioError
from playbooks.exercises import bundled_scenarios, load_scenario

TOKENWARD = str(Path(sys.executable).with_name("tokenward"))


def exercise(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    output = tmp_path / "report.json"
    done = subprocess.run(
        [
            TOKENWARD,
            "exercise",
            *args,
            "--output",
            str(output),
            "--markdown",
            str(tmp_path / "report.md"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(output.read_text()) if output.exists() else {}
    return done, report


@pytest.mark.parametrize("path", bundled_scenarios(), ids=lambda path: path.stem)
def test_every_bundled_scenario_meets_its_expected_outcome(tmp_path: Path, path: Path) -> None:
    done, report = exercise(tmp_path, path.stem)
    assert done.returncode == 0, done.stderr
    assert "Expected outcome met." in done.stdout
    assert report["status"] == "complete"
    assert report["mode"] == "dry-run"


def test_the_seed_true_positive_is_high_with_its_evidence_and_planned_revoke(
    tmp_path: Path,
) -> None:
    done, report = exercise(tmp_path, "seed-true-positive")
    assert done.returncode == 0, done.stderr
    (finding,) = report["findings"]
    assert finding["user_principal_name"] == "target.user@contoso.com"
    assert (finding["score"], finding["tier"]) == (100, "high")
    assert finding["sign_in_time"] == "2026-01-15T09:24:58Z"
    fired = {reason["signal"]: reason for reason in finding["reasons"]}
    assert fired["threat_intel_ip"]["detail"].startswith("185.220.101.47 is in 185.220.101.0/24")
    assert fired["unusual_country"]["detail"].startswith("NL is not among the countries")
    assert "3 minutes before the sign-in" in fired["url_click_before"]["detail"]

    (click,) = finding["evidence"]["url_clicks"]
    assert click["minutes_before_sign_in"] == 3.0
    assert click["url_chain"][-1] == "https://microsoft.com/devicelogin"
    (mail,) = finding["evidence"]["emails"]
    assert mail["subject"].startswith("Action required")
    assert mail["joined_by"] == "upn"

    revoke = next(action for action in report["actions"] if action["action"] == "revoke_sessions")
    assert revoke["status"] == "would_send"
    assert revoke["target"] == "target.user@contoso.com"
    assert revoke["request"] == {
        "service": "graph",
        "method": "POST",
        "path": "/users/6f1a7a3e-1c2b-4d8e-9a41-3b7c2d9e0f11/revokeSignInSessions",
        "body": None,
    }
    assert (
        "POST https://graph.microsoft.com/v1.0/users/6f1a7a3e-1c2b-4d8e-9a41-3b7c2d9e0f11/revokeSignInSessions"
        in done.stdout
    )
    markdown = (tmp_path / "report.md").read_text()
    assert "| +15 | threat_intel_ip |" in markdown


def test_the_meeting_room_device_is_low_because_it_is_sanctioned(tmp_path: Path) -> None:
    _, report = exercise(tmp_path, "meeting-room-device")
    (finding,) = report["findings"]
    assert (finding["score"], finding["tier"]) == (0, "low")
    assert [r["signal"] for r in finding["reasons"] if r["weight"] < 0] == ["sanctioned_use"]
    assert report["actions"] == []


def test_a_failed_sign_in_is_medium_and_contains_nobody(tmp_path: Path) -> None:
    _, report = exercise(tmp_path, "failed-device-code-sign-in")
    (finding,) = report["findings"]
    assert finding["tier"] == "medium"
    assert any(
        r["signal"] == "sign_in_not_successful" and r["weight"] == -40 for r in finding["reasons"]
    )
    assert report["actions"] == []


def test_a_guest_revoke_carries_the_warning_that_it_does_not_contain(tmp_path: Path) -> None:
    _, report = exercise(tmp_path, "guest-account")
    revoke = next(action for action in report["actions"] if action["action"] == "revoke_sessions")
    assert any("does not contain a guest" in note for note in revoke["notes"])


def test_an_unmet_expectation_fails_the_command(tmp_path: Path) -> None:
    source = next(path for path in bundled_scenarios() if path.stem == "admin-azure-cli-home")
    changed = tmp_path / "case.yaml"
    changed.write_text(source.read_text().replace("tier: low", "tier: high"))
    done, _ = exercise(tmp_path, "--file", str(changed))
    assert done.returncode == 1
    assert "expected tier high, got low" in done.stdout
    assert "expected outcome was not met" in done.stderr


def test_the_list_names_every_bundled_scenario(tmp_path: Path) -> None:
    done = subprocess.run(
        [TOKENWARD, "exercise", "--list"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    for path in bundled_scenarios():
        assert path.stem in done.stdout


def scenario_with(tmp_path: Path, old: str, new: str) -> Path:
    source = next(path for path in bundled_scenarios() if path.stem == "seed-true-positive")
    text = source.read_text()
    assert old in text
    target = tmp_path / "case.yaml"
    target.write_text(text.replace(old, new, 1))
    return target


def test_a_scenario_with_an_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = scenario_with(tmp_path, "    risk: high\n", "    risk: high\n    riskk: high\n")
    with pytest.raises(ScenarioError) as raised:
        load_scenario(path)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "riskk" in text)
    assert str(raised.value) == f"{path}:{line} (at sign_ins[0].riskk): unknown key 'riskk'"


def test_a_scenario_time_that_does_not_parse_is_refused(tmp_path: Path) -> None:
    path = scenario_with(tmp_path, "    at: -3m\n", "    at: three minutes ago\n")
    with pytest.raises(
        ScenarioError, match=r"clicks\[0\]\.at.*is not a time relative to the anchor"
    ):
        load_scenario(path)


def test_evidence_for_an_unknown_user_is_refused(tmp_path: Path) -> None:
    path = scenario_with(
        tmp_path, "  - user: target\n    at: -3m\n", "  - user: somebody\n    at: -3m\n"
    )
    with pytest.raises(ScenarioError, match=r"clicks\[0\]\.user.*unknown user 'somebody'"):
        load_scenario(path)
