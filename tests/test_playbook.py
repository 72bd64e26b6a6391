"""A playbook is checked when it is loaded: every refusal names file, line and value."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from playbooks.errors import PlaybookError
from playbooks.playbook import BUNDLED, load_playbook
from playbooks.scoring import SIGNALS


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    folder = tmp_path / "pb"
    shutil.copytree(BUNDLED.parent, folder)
    return folder / "playbook.yaml"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def line_of(path: Path, needle: str) -> int:
    return next(
        number for number, text in enumerate(path.read_text().splitlines(), 1) if needle in text
    )


def test_the_bundled_playbook_loads_and_uses_only_registered_signals() -> None:
    playbook = load_playbook()
    assert playbook.id == "device-code-phishing"
    assert set(playbook.signals) <= set(SIGNALS)
    assert set(playbook.templates) == {
        "hunt",
        "url_clicks",
        "emails",
        "baseline",
        "threat_intel",
        "graph_activity",
        "session_sign_ins",
    }
    assert playbook.correlation_queries == ("url_clicks", "emails", "baseline", "threat_intel")
    assert playbook.spec.follow_on.queries == ("graph_activity", "session_sign_ins")


def test_an_unknown_key_is_refused_with_its_line(copy: Path) -> None:
    edit(copy, "correlation:\n", "corelation_typo: 1\ncorrelation:\n")
    with pytest.raises(PlaybookError) as raised:
        load_playbook(copy)
    assert str(raised.value).startswith(f"{copy}:{line_of(copy, 'corelation_typo')}")
    assert "unknown key 'corelation_typo'" in str(raised.value)


def test_an_unknown_signal_is_refused_with_its_line(copy: Path) -> None:
    edit(copy, "    lure_email: {weight: 10}", "    lure_emial: {weight: 10}")
    with pytest.raises(
        PlaybookError, match=rf":{line_of(copy, 'lure_emial')} .*unknown signal 'lure_emial'"
    ):
        load_playbook(copy)


def test_an_unknown_action_is_refused_with_its_line(copy: Path) -> None:
    edit(copy, "actions: [comment_on_incident]", "actions: [comment_on_incident, reset_password]")
    with pytest.raises(PlaybookError) as raised:
        load_playbook(copy)
    assert f":{line_of(copy, 'reset_password')}" in str(raised.value)
    assert "'reset_password'" in str(raised.value)


def test_a_bad_signal_setting_is_refused_with_its_key(copy: Path) -> None:
    edit(
        copy,
        "unusual_country: {weight: 10, min_sign_ins: 3}",
        "unusual_country: {weight: 10, min_sign_ins: zero}",
    )
    with pytest.raises(
        PlaybookError, match=r"scoring\.signals\.unusual_country\.min_sign_ins.*'zero'"
    ):
        load_playbook(copy)


def test_a_user_agent_pattern_that_is_no_regular_expression_is_refused_at_load(
    copy: Path,
) -> None:
    edit(copy, '        - "^wget"', '        - "(unclosed"')
    with pytest.raises(
        PlaybookError,
        match=r"scoring\.signals\.scripted_user_agent\.patterns.*not a regular expression: "
        r"'\(unclosed'",
    ):
        load_playbook(copy)


def test_thresholds_must_be_ordered(copy: Path) -> None:
    edit(copy, "    medium: 40", "    medium: 80")
    with pytest.raises(PlaybookError, match="medium .80. must be below high .70."):
        load_playbook(copy)


def test_a_template_using_an_undeclared_parameter_is_refused(copy: Path) -> None:
    hunt = copy.parent / "hunt.kql"
    hunt.write_text(hunt.read_text() + "| where UserPrincipalName == {{who}}\n")
    with pytest.raises(PlaybookError, match="hunt.kql uses undeclared parameters: who"):
        load_playbook(copy)


def test_a_declared_parameter_the_template_never_uses_is_refused(copy: Path) -> None:
    edit(
        copy,
        "parameters: {start: datetime, end: datetime, users: string_list}",
        "parameters: {start: datetime, end: datetime, users: string_list, extra: string}",
    )
    with pytest.raises(PlaybookError, match="never uses declared parameters: extra"):
        load_playbook(copy)


def test_a_query_file_outside_the_playbook_folder_is_refused(copy: Path) -> None:
    edit(copy, "file: hunt.kql", "file: ../../etc/passwd")
    with pytest.raises(PlaybookError, match="outside the playbook's folder"):
        load_playbook(copy)


def test_overrides_change_existing_keys_and_refuse_unknown_ones() -> None:
    changed = load_playbook(overrides={"scoring.thresholds.high": "60"})
    assert changed.spec.scoring.thresholds.high == 60
    with pytest.raises(PlaybookError, match="has no key 'tresholds' in scoring"):
        load_playbook(overrides={"scoring.tresholds.high": "60"})


def test_invalid_yaml_names_the_line(copy: Path) -> None:
    copy.write_text("id: x\nname: [unclosed\n")
    with pytest.raises(PlaybookError, match=rf"{copy}:\d+"):
        load_playbook(copy)


def test_rendering_puts_the_hunt_inside_each_correlation() -> None:
    texts = load_playbook().render_all(
        {
            "start": datetime(2026, 1, 14, tzinfo=UTC),
            "end": datetime(2026, 1, 15, tzinfo=UTC),
            "users": ['evil"@contoso.com'],
            "before": timedelta(minutes=60),
            "after": timedelta(minutes=5),
            "days": timedelta(days=30),
            "lookback": timedelta(days=30),
        }
    )
    assert 'dynamic(["evil\\"@contoso.com"])' in texts["hunt"]
    for name in ("url_clicks", "emails", "baseline", "threat_intel"):
        assert "let hits = " + texts["hunt"].strip() in texts[name]
        assert "{{" not in texts[name]
