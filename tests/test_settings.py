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
    with pytest.raises(
        SettingsError, match=r"t.toml \(at guardrails.protected_acounts\): unknown key"
    ):
        load_settings(config, environ={})


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text("[store]\nurl = \n")
    with pytest.raises(SettingsError, match=r"t.toml:2"):
        load_settings(config, environ={})


def test_protected_accounts_are_upns_or_object_ids() -> None:
    with pytest.raises(SettingsError, match="'breakglass' is neither a UPN nor an object id"):
        settings_from_dict({"guardrails": {"protected_accounts": ["breakglass"]}})
    ok = settings_from_dict(
        {
            "guardrails": {
                "protected_accounts": [
                    "BreakGlass@Contoso.com",
                    "AAAAAAAA-0000-4000-8000-000000000001",
                ]
            }
        }
    )
    assert ok.guardrails.protected_accounts == (
        "breakglass@contoso.com",
        "aaaaaaaa-0000-4000-8000-000000000001",
    )


def test_the_audit_key_comes_only_from_the_environment() -> None:
    with pytest.raises(SettingsError, match=f"belongs in the {ENV_AUDIT_KEY} variable"):
        settings_from_dict({"audit": {"hmac_key": "inline"}})
    settings = settings_from_dict({}, environ={ENV_AUDIT_KEY: "k" * 32})
    assert settings.audit.hmac_key is not None
    assert "k" * 32 not in repr(settings) and "k" * 32 not in str(settings.model_dump())


def test_an_audit_key_shorter_than_32_bytes_is_refused() -> None:
    with pytest.raises(
        SettingsError, match=f"^{ENV_AUDIT_KEY} is 5 bytes long: an audit key needs at least 32"
    ):
        settings_from_dict({}, environ={ENV_AUDIT_KEY: "short"})
    assert settings_from_dict({}, environ={ENV_AUDIT_KEY: "é" * 16}).audit.hmac_key is not None


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
    with pytest.raises(
        SettingsError, match=r"tor.txt:2: 'not-an-ip' is not an IP address or range"
    ):
        load_settings(config, environ={})


def test_every_shipped_key_is_documented_by_a_comment() -> None:
    text = (REPO / "config" / "tokenward.toml").read_text()
    lines = text.splitlines()

    def keys(table: dict[str, object], section: str) -> list[tuple[str, str]]:
        found = []
        for key, value in table.items():
            name = f"{section}.{key}" if section else key
            if isinstance(value, dict) and f"[{name}]" in lines:
                found.extend(keys(value, name))
            else:
                found.append((section, key))
        return found

    for section, key in keys(tomllib.loads(text), ""):
        header = lines.index(f"[{section}]")
        index = next(
            i for i, line in enumerate(lines) if i > header and line.startswith(f"{key} =")
        )
        assert lines[index - 1].startswith("#"), f"[{section}] {key} has no comment above it"


def test_server_timeout_must_stay_below_the_read_timeout() -> None:
    # B18: a client that gives up first wastes the query and retries it again.
    with pytest.raises(
        SettingsError,
        match=r"at log_analytics.server_timeout: server_timeout \(600 s\) must be below azure.read_timeout \(100 s\)",
    ):
        settings_from_dict(
            {"log_analytics": {"server_timeout": 600}, "azure": {"read_timeout": 100}}
        )
    with pytest.raises(SettingsError, match="at log_analytics.server_timeout"):
        settings_from_dict(
            {"log_analytics": {"server_timeout": 601}, "azure": {"read_timeout": 900}}
        )
    assert settings_from_dict(
        {"log_analytics": {"server_timeout": 600}, "azure": {"read_timeout": 660}}
    )


def test_credential_secrets_come_only_from_the_environment() -> None:
    with pytest.raises(SettingsError, match="belongs in the TOKENWARD_CLIENT_SECRET variable"):
        settings_from_dict(
            {"azure": {"credential": {"kind": "client_secret", "client_secret": "s3cret"}}}
        )
    settings = settings_from_dict(
        {"azure": {"credential": {"kind": "client_secret"}}},
        environ={
            "TOKENWARD_CLIENT_SECRET": "s3cret-value",
            "TOKENWARD_CLIENT_CERTIFICATE_PASSWORD": "pw-value",
        },
    )
    secret = settings.azure.credential.client_secret
    assert secret is not None and secret.get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(settings) and "pw-value" not in str(settings.model_dump())


def test_workload_identity_takes_what_the_aks_webhook_injects() -> None:
    settings = settings_from_dict(
        {"azure": {"credential": {"kind": "workload_identity"}}},
        environ={
            "AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "AZURE_CLIENT_ID": "3F1C2A8E-6B7D-4E0A-9C55-1D2E3F4A5B6C",
            "AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/tokens/azure-identity-token",
        },
    )
    assert settings.azure.tenant_id == "72f988bf-86f1-41af-91ab-2d7cd011db47"
    assert settings.azure.credential.client_id == "3f1c2a8e-6b7d-4e0a-9c55-1d2e3f4a5b6c"
    assert str(settings.azure.credential.federated_token_file).endswith("azure-identity-token")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"log_analytics": {"workspace_id": "sentinel-prod"}},
            r"is not a GUID \(the workspace id, not its name\)",
        ),
        ({"azure": {"credential": {"kind": "default"}}}, "at azure.credential.kind"),
        ({"sources": {"tables": {"Email Events": "defender"}}}, "not a plain KQL identifier"),
        ({"sources": {"tables": {"EmailEvents": "splunk"}}}, "at sources.tables.EmailEvents"),
        ({"retry": {"wait_initial": 5, "wait_max": 1}}, "wait_initial .* is above wait_max"),
    ],
)
def test_azure_sections_refuse_bad_values_naming_the_key(
    data: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        settings_from_dict(data)


def test_relative_certificate_and_ca_paths_are_relative_to_the_settings_file(
    tmp_path: Path,
) -> None:
    config = tmp_path / "t.toml"
    config.write_text(
        '[azure]\nca_bundle = "ca.pem"\n[azure.credential]\ncertificate_path = "app.pem"\n'
    )
    settings = load_settings(config, environ={})
    assert settings.azure.ca_bundle == tmp_path / "ca.pem"
    assert settings.azure.credential.certificate_path == tmp_path / "app.pem"


def test_a_default_window_that_is_no_duration_is_refused_when_the_settings_load() -> None:
    with pytest.raises(SettingsError, match=r"at hunt.default_since: not a duration .*'1 day'"):
        settings_from_dict({"hunt": {"default_since": "1 day"}}, environ={})
