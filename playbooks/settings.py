"""Typed settings from ``config/tokenward.toml`` and the environment.

Settings are built explicitly (never at import time) and validated whole:
an unknown key, a bad value or two settings that contradict each other stop
the process before anything runs, with the file and key in the message.
Secrets come from the environment only and are held as ``SecretStr``.

Where the settings come from, first match wins: ``--config FILE``, the
``TOKENWARD_CONFIG`` variable, ``./config/tokenward.toml``, built-in defaults
(which are exactly what the shipped ``config/tokenward.toml`` says).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from playbooks.errors import Location, SettingsError
from playbooks.identities import is_guid, is_upn
from playbooks.yamlsource import describe, dotted

DEFAULT_PATH = Path("config/tokenward.toml")
ENV_CONFIG = "TOKENWARD_CONFIG"
ENV_AUDIT_KEY = "TOKENWARD_AUDIT_HMAC_KEY"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_network(item) for item in value)
    return value


#: Addresses or CIDR ranges, given as text in files.
Networks = Annotated[tuple[Network, ...], BeforeValidator(_networks)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSettings(Section):
    url: str = Field(
        default="sqlite:///tokenward.db",
        description="SQLAlchemy URL of the state database (audit, runs, plans).",
    )


class AuditSettings(Section):
    hmac_key: SecretStr | None = Field(
        default=None,
        description=f"Key for HMAC-chained audit records; from {ENV_AUDIT_KEY} only.",
    )


class SanctionedUse(Section):
    """Device code use the SOC has approved: an app, by whom, from where."""

    name: str = Field(min_length=1)
    users: tuple[str, ...] = ()
    apps: tuple[str, ...] = ()
    ip_ranges: Networks = ()

    @model_validator(mode="after")
    def _not_by_app_alone(self) -> SanctionedUse:
        # Attack kits use the same first-party apps (Azure CLI, the broker):
        # an app alone never makes a sign-in sanctioned.
        if not self.users and not self.ip_ranges:
            raise ValueError(
                f"sanctioned use {self.name!r} needs users or ip_ranges; "
                "an app alone is what attackers use too"
            )
        return self


class GuardrailSettings(Section):
    protected_accounts: tuple[str, ...] = Field(
        default=(),
        description="UPNs or object ids never acted on (break-glass, service accounts).",
    )
    max_users_per_run: int = Field(
        default=10,
        ge=1,
        description="Above this many users in one run, every action waits for approval.",
    )
    sanctioned_use: tuple[SanctionedUse, ...] = ()

    @field_validator("protected_accounts")
    @classmethod
    def _identities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not (is_upn(item) or is_guid(item)):
                raise ValueError(f"{item!r} is neither a UPN nor an object id")
        return tuple(item.lower() for item in value)


class ThreatIntelSettings(Section):
    ip_ranges: Networks = Field(
        default=(), description="Addresses or CIDR ranges treated as hostile."
    )
    files: tuple[Path, ...] = Field(
        default=(), description="Files with one address or range per line (# comments)."
    )


class HuntSettings(Section):
    allowed_countries: tuple[str, ...] = Field(
        default=(),
        description="Two-letter countries sign-ins are expected from; empty: not checked.",
    )
    default_since: str = Field(default="24h", description="Window of a hunt given no times.")

    @field_validator("allowed_countries")
    @classmethod
    def _countries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not re.fullmatch(r"[A-Za-z]{2}", item):
                raise ValueError(f"{item!r} is not a two-letter country code")
        return tuple(item.upper() for item in value)


class PlaybookSettings(Section):
    path: Path | None = Field(
        default=None, description="A playbook YAML to use instead of the bundled one."
    )


class Settings(Section):
    store: StoreSettings = StoreSettings()
    audit: AuditSettings = AuditSettings()
    guardrails: GuardrailSettings = GuardrailSettings()
    threat_intel: ThreatIntelSettings = ThreatIntelSettings()
    hunt: HuntSettings = HuntSettings()
    playbook: PlaybookSettings = PlaybookSettings()

    def threat_networks(self) -> tuple[Network, ...]:
        """The configured hostile ranges, with the listed files read."""
        networks = list(self.threat_intel.ip_ranges)
        for path in self.threat_intel.files:
            networks.extend(read_network_file(path))
        return tuple(networks)


def load_settings(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from *path*, ``$TOKENWARD_CONFIG``, ``./config/tokenward.toml`` or defaults."""
    env = os.environ if environ is None else environ
    chosen = path or (Path(env[ENV_CONFIG]) if env.get(ENV_CONFIG) else None)
    if chosen is None and DEFAULT_PATH.is_file():
        chosen = DEFAULT_PATH
    data: dict[str, Any] = {}
    if chosen is not None:
        data = _read_toml(chosen)
    return settings_from_dict(data, file=str(chosen) if chosen else None, environ=env)


def settings_from_dict(
    data: Mapping[str, Any],
    *,
    file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    env = {} if environ is None else environ
    merged: dict[str, Any] = {key: value for key, value in data.items()}
    if env.get(ENV_AUDIT_KEY):
        merged["audit"] = {**merged.get("audit", {}), "hmac_key": env[ENV_AUDIT_KEY]}
    elif "hmac_key" in merged.get("audit", {}):
        raise SettingsError(
            f"audit.hmac_key belongs in the {ENV_AUDIT_KEY} variable, not in a file",
            source=Location(file=file, key="audit.hmac_key"),
        )
    base = Path(file).parent if file else Path.cwd()
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as failure:
        first = failure.errors()[0]
        raise SettingsError(
            describe(first), source=Location(file=file, key=dotted(tuple(first["loc"])))
        ) from None
    files = tuple(item if item.is_absolute() else base / item for item in settings.threat_intel.files)
    threat_intel = settings.threat_intel.model_copy(update={"files": files})
    for item in files:
        read_network_file(item)
    return settings.model_copy(update={"threat_intel": threat_intel})


def read_network_file(path: Path) -> list[Network]:
    """Addresses and ranges from a file, one per line; ``#`` starts a comment."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as failure:
        raise SettingsError(f"cannot read the file: {failure}", source=Location(file=str(path))) from None
    networks = []
    for number, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            networks.append(_network(text))
        except ValueError:
            raise SettingsError(
                f"{text!r} is not an IP address or range",
                source=Location(file=str(path), line=number),
            ) from None
    return networks


def _network(value: Any) -> Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    return ipaddress.ip_network(str(value).strip(), strict=False)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError("no such settings file", source=Location(file=str(path))) from None
    except tomllib.TOMLDecodeError as failure:
        match = re.search(r"line (\d+)", str(failure))
        raise SettingsError(
            f"not valid TOML: {failure}",
            source=Location(file=str(path), line=int(match.group(1)) if match else None),
        ) from None
