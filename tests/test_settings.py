"""Settings are validated whole before anything runs; secrets come from the environment."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from playbooks.errors import SettingsError
from playbooks.settings import ENV_AUDIT_KEY, Settings, load_settings, settings_from_dict

REPO = Path(__file__).resolve().parent.parent


def test_the_shipped_settings_file_is_exactly_the_defaults() -> None:
    assert load_settings(REPO / "config" / "tokenward.toml", environ={}) == Settings()


def test_an_unknown_key_is_refused_with_its_path(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text("[guardrails]\nprotected_acounts = []\n")
    with pytest.raises(SettingsError, match=r"t.toml \(at guardrails.protected_acounts\): unknown key"):
        load_settings(config, environ={})


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text("[store]\nurl = \n")
    with pytest.raises(SettingsError, match=r"t.toml:2"):
        load_settings(config, environ={})


def test_protected_accounts_are_upns_or_object_ids() -> None:
    with pytest.raises(SettingsError, match="'breakglass' is neither a UPN nor an object id"):
        settings_from_dict({"guardrails": {"protected_accounts": ["breakglass"]}})
    ok = settings_from_dict({"guardrails": {"protected_accounts": ["BreakGlass@Contoso.com", "AAAAAAAA-0000-4000-8000-000000000001"]}})
    assert ok.guardrails.protected_accounts == ("breakglass@contoso.com", "aaaaaaaa-0000-4000-8000-000000000001")


def test_the_audit_key_comes_only_from_the_environment() -> None:
    with pytest.raises(SettingsError, match=f"belongs in the {ENV_AUDIT_KEY} variable"):
        settings_from_dict({"audit": {"hmac_key": "inline"}})
    settings = settings_from_dict({}, environ={ENV_AUDIT_KEY: "k" * 32})
    assert settings.audit.hmac_key is not None
    assert "k" * 32 not in repr(settings) and "k" * 32 not in str(settings.model_dump())


def test_threat_intel_files_are_read_relative_to_the_settings_file(tmp_path: Path) -> None:
    (tmp_path / "tor.txt").write_text("# Tor exits\n185.220.101.0/24\n198.51.100.20  # one host\n")
    config = tmp_path / "t.toml"
    config.write_text('[threat_intel]\nfiles = ["tor.txt"]\n')
    settings = load_settings(config, environ={})
    assert [str(n) for n in settings.threat_networks()] == ["185.220.101.0/24", "198.51.100.20/32"]


def test_a_bad_line_in_a_threat_intel_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "tor.txt").write_text("185.220.101.0/24\nnot-an-ip\n")
    config = tmp_path / "t.toml"
    config.write_text('[threat_intel]\nfiles = ["tor.txt"]\n')
    with pytest.raises(SettingsError, match=r"tor.txt:2: 'not-an-ip' is not an IP address or range"):
        load_settings(config, environ={})


def test_every_shipped_key_is_documented_by_a_comment() -> None:
    text = (REPO / "config" / "tokenward.toml").read_text()
    data = tomllib.loads(text)
    lines = text.splitlines()
    for section, values in data.items():
        for key in values:
            index = next(i for i, line in enumerate(lines) if line.startswith(f"{key} ="))
            assert lines[index - 1].startswith("#"), f"[{section}] {key} has no comment above it"
