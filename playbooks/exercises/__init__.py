"""Tabletop scenarios: a case written as YAML, turned into exported-log tables.

A scenario names its users, their sign-ins, the mail they got and the links
they clicked, with times relative to one anchor (the device code sign-in), and
says what tokenward should conclude. :func:`load_scenario` checks it and
:meth:`Scenario.tables` turns it into rows shaped like Log Analytics exports,
which go through the same loader and the same hunt as real exports.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from playbooks.errors import ScenarioError
from playbooks.identities import is_guid, is_upn
from playbooks.models import ActionKind, ActionStatus, RunReport, Tier
from playbooks.scoring import SIGNALS
from playbooks.settings import Networks, SanctionedUse, Settings
from playbooks.times import isoformat_z, parse_time
from playbooks.yamlsource import YamlDocument, read_yaml

BUNDLED_DIR = Path(str(files("playbooks") / "exercises"))
_NAMESPACE = uuid.UUID("7d3c0d8e-2f4b-4f7e-8b1e-5a9c2e6f0b11")

# Well-known first-party client ids, so a scenario may name an app only.
KNOWN_APPS = {
    "Microsoft Azure CLI": "04b07795-8ddb-461a-bbee-02f9e1bf7b46",
    "Microsoft Azure PowerShell": "1950a258-227b-4e31-a9cf-717495945fc2",
    "Microsoft Graph Command Line Tools": "14d82eec-204b-4c2f-b7e8-296a70dab67e",
    "Microsoft Authentication Broker": "29d9ed98-a469-4536-ade2-f981bc1d605e",
    "Microsoft Office": "d3590ed6-52b3-4102-aeff-aad2292ab01c",
    "Microsoft Teams": "1fec8e78-bce4-4aaf-ab1b-5451cc387264",
    "Office 365 Exchange Online": "00000002-0000-0ff1-ce00-000000000000",
    "OfficeHome": "4765445b-32c6-49b0-83e6-1d93765276ca",
    "Microsoft Edge": "ecd6b820-32c2-49b6-98a6-444530e5a77a",
    "Azure Portal": "c44b4083-3bb0-49c1-b47d-974e53cbdf3c",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_OFFSET = re.compile(r"^(?P<sign>[+-]?)\s*(?P<parts>(?:\d+\s*[wdhms]\s*)+)$")
_OFFSET_PART = re.compile(r"(\d+)\s*([wdhms])")
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_offset(text: str) -> timedelta:
    """``-3m``, ``+1h30m``, ``45s``, ``2d`` or ``0`` as a signed timedelta."""
    raw = text.strip()
    if raw in ("0", "+0", "-0"):
        return timedelta(0)
    match = _OFFSET.match(raw)
    if not match:
        raise ValueError(
            f"{text!r} is not a time relative to the anchor: write it like -9m, -3m, "
            "0, +1h30m or -2d (units w, d, h, m, s)"
        )
    total = sum(
        (timedelta(**{_UNITS[unit]: int(amount)}) for amount, unit in _OFFSET_PART.findall(raw)),
        timedelta(0),
    )
    return -total if match["sign"] == "-" else total


def _offset(value: Any) -> Any:
    """A relative time as YAML gives it: text, or the number 0."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time relative to the anchor")
    if isinstance(value, int | float):
        if value == 0:
            return timedelta(0)
        # A bare number has no unit; pydantic would take it as seconds.
        raise ValueError(f"{value!r} has no unit: write it like {value:g}m or {value:g}s")
    if isinstance(value, datetime | date):
        raise ValueError(
            f"{value.isoformat()!r} is a point in time; times in a scenario are relative "
            "to the anchor, like -3m or +1h"
        )
    if isinstance(value, str):
        return parse_offset(value)
    return value


def _length(value: Any) -> Any:
    """A positive length of time (``24h``, ``1d12h``)."""
    problem = f"{value!r} is not a length of time: write it like 24h, 7d or 1d12h"
    if isinstance(value, str) and not value.strip().startswith(("+", "-")):
        try:
            length = parse_offset(value)
        except ValueError:
            raise ValueError(problem) from None
        if length > timedelta(0):
            return length
    if isinstance(value, timedelta) and value > timedelta(0):
        return value
    raise ValueError(problem)


def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


class History(Strict):
    """Ordinary sign-ins before the anchor: the user's baseline."""

    days: int = Field(default=14, ge=1, le=60)
    per_day: int = Field(default=2, ge=1, le=24)
    country: str = Field(default="US", pattern=r"^[A-Za-z]{2}$")
    city: str = ""
    ip: str = "203.0.113.10"
    apps: tuple[str, ...] = Field(
        default=("Office 365 Exchange Online", "OfficeHome"), min_length=1
    )
    # How many of those sign-ins used device code (with device_code_app).
    device_code: int = Field(default=0, ge=0)
    device_code_app: str = "Microsoft Azure CLI"

    _ip = field_validator("ip")(_address)


class ScenarioUser(Strict):
    upn: str
    id: str = ""
    display_name: str = ""
    type: Literal["Member", "Guest"] = "Member"
    home_tenant_id: str = ""
    history: History | None = None

    @field_validator("upn")
    @classmethod
    def _upn(cls, value: str) -> str:
        if not is_upn(value):
            raise ValueError(f"{value!r} is not a UPN")
        return value

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if value and not is_guid(value):
            raise ValueError(f"{value!r} is not an object id (GUID)")
        return value.lower()


class ScenarioSignIn(Strict):
    user: str
    at: timedelta
    table: Literal["SigninLogs", "AADNonInteractiveUserSignInLogs"] = "SigninLogs"
    app: str
    app_id: str = ""
    resource: str = "Microsoft Graph"
    protocol: str = "deviceCode"
    transfer_method: str = ""
    result: int = 0
    result_description: str = ""
    ip: str
    country: str = Field(pattern=r"^[A-Za-z]{2}$")
    city: str = ""
    os: str = ""
    browser: str = ""
    compliant: bool | None = None
    managed: bool | None = None
    risk: Literal["none", "low", "medium", "high", "hidden"] = "none"
    aggregated_risk: Literal["none", "low", "medium", "high", "hidden"] = "none"
    risk_events: tuple[str, ...] = ()
    user_agent: str = ""
    session: str = ""
    interactive: bool = True

    _at = field_validator("at", mode="before")(_offset)
    _ip = field_validator("ip")(_address)


class ScenarioEmail(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    user: str
    at: timedelta
    sender: str
    sender_name: str = ""
    subject: str
    recipient: str = ""
    direction: Literal["Inbound", "Outbound", "Intra-org"] = "Inbound"
    delivery_action: str = "Delivered"
    delivery_location: str = "Inbox/folder"
    threat_types: str = ""
    urls: int = Field(default=1, ge=0)

    _at = field_validator("at", mode="before")(_offset)


class ScenarioClick(Strict):
    user: str
    at: timedelta
    url: str
    chain: tuple[str, ...] = ()
    action: Literal[
        "ClickAllowed",
        "ClickBlocked",
        "ClickBlockedByTenantPolicy",
        "UrlErrorPage",
        "UrlScanInProgress",
    ] = "ClickAllowed"
    clicked_through: bool = False
    workload: Literal["Email", "Office", "Teams"] = "Email"
    email: str = ""
    ip: str = ""
    report_id: str = ""

    _at = field_validator("at", mode="before")(_offset)

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return _address(value) if value else value


class ScenarioSettings(Strict):
    """Tenant settings the case needs, added to the configured ones."""

    threat_intel_ip_ranges: Networks = ()
    sanctioned_use: tuple[SanctionedUse, ...] = ()
    protected_accounts: tuple[str, ...] = ()
    allowed_countries: tuple[str, ...] = ()


class ExpectedFinding(Strict):
    user: str
    tier: Tier
    score: int | None = Field(default=None, ge=0, le=100)
    min_score: int | None = Field(default=None, ge=0, le=100)
    max_score: int | None = Field(default=None, ge=0, le=100)
    reasons: tuple[str, ...] = ()
    absent_reasons: tuple[str, ...] = ()


class ExpectedAction(Strict):
    action: ActionKind
    user: str
    status: ActionStatus


class Expected(Strict):
    findings: tuple[ExpectedFinding, ...]
    # Every user action the run plans, exactly; empty means none.
    actions: tuple[ExpectedAction, ...] = ()


class Scenario(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str
    description: str
    anchor: datetime
    now: timedelta = timedelta(hours=1)
    since: timedelta = timedelta(hours=24)
    users: dict[str, ScenarioUser]
    sign_ins: tuple[ScenarioSignIn, ...] = Field(min_length=1)
    emails: tuple[ScenarioEmail, ...] = ()
    clicks: tuple[ScenarioClick, ...] = ()
    settings: ScenarioSettings = ScenarioSettings()
    expected: Expected

    _now = field_validator("now", mode="before")(_offset)
    _since = field_validator("since", mode="before")(_length)

    @field_validator("anchor", mode="before")
    @classmethod
    def _anchor(cls, value: Any) -> Any:
        if isinstance(value, str):
            parsed = parse_time(value)
            if parsed.assumed_utc:
                raise ValueError(f"{value!r} has no time zone; end it with Z")
            return parsed.value
        if isinstance(value, datetime) and value.tzinfo is None:
            raise ValueError("the anchor has no time zone; end it with Z")
        return value

    @property
    def clock(self) -> datetime:
        return self.anchor + self.now

    def user(self, key: str) -> ScenarioUser:
        return self.users[key]

    def user_id(self, key: str) -> str:
        user = self.users[key]
        return user.id or str(uuid.uuid5(_NAMESPACE, user.upn.lower()))

    def with_settings(self, settings: Settings) -> Settings:
        """The configured settings plus what this case needs."""
        extra = self.settings
        threat = settings.threat_intel.model_copy(
            update={"ip_ranges": settings.threat_intel.ip_ranges + extra.threat_intel_ip_ranges}
        )
        rails = settings.guardrails.model_copy(
            update={
                "sanctioned_use": settings.guardrails.sanctioned_use + extra.sanctioned_use,
                "protected_accounts": settings.guardrails.protected_accounts
                + tuple(item.lower() for item in extra.protected_accounts),
            }
        )
        hunt = settings.hunt.model_copy(
            update={
                "allowed_countries": settings.hunt.allowed_countries
                + tuple(item.upper() for item in extra.allowed_countries)
            }
        )
        return settings.model_copy(
            update={"threat_intel": threat, "guardrails": rails, "hunt": hunt}
        )

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """The case as Log Analytics export rows, table by table."""
        tables: dict[str, list[dict[str, Any]]] = {
            "SigninLogs": [],
            "AADNonInteractiveUserSignInLogs": [],
            "EmailEvents": [],
            "UrlClickEvents": [],
        }
        for key, user in self.users.items():
            if user.history is not None:
                tables["SigninLogs"].extend(self._history(key, user, user.history))
        for index, sign_in in enumerate(self.sign_ins):
            tables[sign_in.table].append(self._sign_in_row(index, sign_in))
        for email in self.emails:
            tables["EmailEvents"].append(self._email_row(email))
        for index, click in enumerate(self.clicks):
            tables["UrlClickEvents"].append(self._click_row(index, click))
        return tables

    def _id(self, *parts: object) -> str:
        return str(uuid.uuid5(_NAMESPACE, "/".join([self.name, *map(str, parts)])))

    def _user_columns(self, key: str) -> dict[str, Any]:
        user = self.users[key]
        tenant = self._id("tenant")
        return {
            "UserPrincipalName": user.upn,
            "UserId": self.user_id(key),
            "UserDisplayName": user.display_name or user.upn.split("@")[0],
            "UserType": user.type,
            "HomeTenantId": user.home_tenant_id
            or (self._id("home", key) if user.type == "Guest" else tenant),
            "ResourceTenantId": tenant,
            "TenantId": tenant,
        }

    def _sign_in_row(self, index: int, sign_in: ScenarioSignIn) -> dict[str, Any]:
        detail = {
            "operatingSystem": sign_in.os,
            "browser": sign_in.browser,
            "deviceId": "",
            "isCompliant": sign_in.compliant,
            "isManaged": sign_in.managed,
        }
        detail = {key: value for key, value in detail.items() if value is not None}
        location = {"countryOrRegion": sign_in.country.upper(), "city": sign_in.city}
        interactive = sign_in.table == "SigninLogs" and sign_in.interactive
        text_columns = sign_in.table == "AADNonInteractiveUserSignInLogs"
        return {
            "TimeGenerated": isoformat_z(self.anchor + sign_in.at),
            "Id": self._id("sign-in", index),
            **self._user_columns(sign_in.user),
            "AppId": sign_in.app_id or KNOWN_APPS.get(sign_in.app, self._id("app", sign_in.app)),
            "AppDisplayName": sign_in.app,
            "ResourceDisplayName": sign_in.resource,
            "AuthenticationProtocol": sign_in.protocol,
            "OriginalTransferMethod": sign_in.transfer_method,
            "IsInteractive": interactive,
            "ResultType": str(sign_in.result),
            "ResultSignature": "SUCCESS" if sign_in.result == 0 else "FAILURE",
            "ResultDescription": sign_in.result_description,
            "IPAddress": sign_in.ip,
            "Location": sign_in.country.upper(),
            "LocationDetails": json.dumps(location) if text_columns else location,
            "DeviceDetail": json.dumps(detail) if text_columns else detail,
            "RiskLevelDuringSignIn": sign_in.risk,
            "RiskLevelAggregated": sign_in.aggregated_risk,
            "RiskState": "atRisk" if sign_in.aggregated_risk in ("medium", "high") else "none",
            "RiskEventTypes_V2": json.dumps(list(sign_in.risk_events)),
            "UserAgent": sign_in.user_agent,
            "ClientAppUsed": "Mobile Apps and Desktop clients",
            "CorrelationId": self._id("correlation", sign_in.session or index),
            "SessionId": self._id("session", sign_in.session or index),
            "UniqueTokenIdentifier": self._id("token", index),
            "ConditionalAccessStatus": "success" if sign_in.result == 0 else "failure",
        }

    def _history(self, key: str, user: ScenarioUser, history: History) -> list[dict[str, Any]]:
        rows = []
        count = history.days * history.per_day
        step = timedelta(days=history.days) / count
        for number in range(count):
            device_code = number < history.device_code
            app = (
                history.device_code_app if device_code else history.apps[number % len(history.apps)]
            )
            rows.append(
                {
                    "TimeGenerated": isoformat_z(
                        self.anchor - timedelta(days=history.days) + step * number
                    ),
                    "Id": self._id("history", key, number),
                    **self._user_columns(key),
                    "AppId": KNOWN_APPS.get(app, self._id("app", app)),
                    "AppDisplayName": app,
                    "ResourceDisplayName": "Microsoft Graph",
                    "AuthenticationProtocol": "deviceCode" if device_code else "none",
                    "IsInteractive": True,
                    "ResultType": "0",
                    "ResultSignature": "SUCCESS",
                    "IPAddress": history.ip,
                    "Location": history.country.upper(),
                    "LocationDetails": {
                        "countryOrRegion": history.country.upper(),
                        "city": history.city,
                    },
                    "DeviceDetail": {
                        "operatingSystem": "Windows10",
                        "isCompliant": True,
                        "isManaged": True,
                    },
                    "RiskLevelDuringSignIn": "none",
                    "RiskLevelAggregated": "none",
                    "UserAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Edge/120.0",
                    "CorrelationId": self._id("history-correlation", key, number),
                    "SessionId": self._id("history-session", key, number),
                }
            )
        return rows

    def _email_row(self, email: ScenarioEmail) -> dict[str, Any]:
        user = self.users[email.user]
        return {
            "Timestamp": isoformat_z(self.anchor + email.at),
            "NetworkMessageId": self._id("email", email.id),
            "InternetMessageId": f"<{email.id}@{email.sender.split('@')[-1]}>",
            "SenderFromAddress": email.sender,
            "SenderMailFromAddress": email.sender,
            "SenderFromDomain": email.sender.split("@")[-1],
            "SenderMailFromDomain": email.sender.split("@")[-1],
            "SenderDisplayName": email.sender_name,
            "RecipientEmailAddress": email.recipient or user.upn,
            "RecipientObjectId": self.user_id(email.user),
            "Subject": email.subject,
            "EmailDirection": email.direction,
            "DeliveryAction": email.delivery_action,
            "DeliveryLocation": email.delivery_location,
            "ThreatTypes": email.threat_types,
            "UrlCount": email.urls,
            "ReportId": self._id("email-report", email.id),
        }

    def _click_row(self, index: int, click: ScenarioClick) -> dict[str, Any]:
        user = self.users[click.user]
        chain = list(click.chain) or [click.url]
        return {
            "Timestamp": isoformat_z(self.anchor + click.at),
            "Url": click.url,
            "UrlChain": json.dumps(chain),
            "ActionType": click.action,
            "AccountUpn": user.upn,
            "Workload": click.workload,
            "NetworkMessageId": self._id("email", click.email) if click.email else "",
            "IPAddress": click.ip,
            "IsClickedThrough": click.clicked_through,
            "ReportId": click.report_id or self._id("click", index),
        }


def load_scenario(path: Path) -> Scenario:
    """Read and check a scenario file; errors name the file, line and key."""
    document = read_yaml(path, error=ScenarioError)
    if not isinstance(document.data, dict):
        raise ScenarioError("a scenario is a mapping of keys", source=document.location(()))
    scenario = document.validate(Scenario, ScenarioError)
    _check_consistency(document, scenario)
    return scenario


def _check_consistency(document: YamlDocument, scenario: Scenario) -> None:
    users = set(scenario.users)
    emails = {email.id for email in scenario.emails}

    def refuse(loc: tuple[str | int, ...], message: str) -> None:
        raise ScenarioError(message, source=document.location(loc))

    def known_user(loc: tuple[str | int, ...], key: str) -> None:
        if key not in users:
            refuse(loc, f"unknown user {key!r} (users: {', '.join(sorted(users))})")

    for section, items in _event_sections(scenario):
        for index, item in enumerate(items):
            known_user((section, index, "user"), item.user)
    for index, click in enumerate(scenario.clicks):
        if click.email and click.email not in emails:
            refuse(("clicks", index, "email"), f"unknown email {click.email!r}")
    for index, expected in enumerate(scenario.expected.findings):
        known_user(("expected", "findings", index, "user"), expected.user)
    for index, action in enumerate(scenario.expected.actions):
        known_user(("expected", "actions", index, "user"), action.user)
    for index, finding in enumerate(scenario.expected.findings):
        for key in ("reasons", "absent_reasons"):
            for position, signal in enumerate(getattr(finding, key)):
                if signal not in SIGNALS:
                    refuse(
                        ("expected", "findings", index, key, position),
                        f"unknown signal {signal!r} (known: {', '.join(sorted(SIGNALS))})",
                    )
    if len(emails) != len(scenario.emails):
        refuse(("emails",), "two emails share an id")

    # Rows the run could not see would make the exercise quietly wrong.
    for section, items in _event_sections(scenario):
        for index, item in enumerate(items):
            if item.at > scenario.now:
                refuse(
                    (section, index, "at"),
                    f"{_signed(item.at)} is after the exercise's clock (now: "
                    f"{_signed(scenario.now)}), so the run would not see it; move it or "
                    "raise now",
                )
    for index, sign_in in enumerate(scenario.sign_ins):
        if sign_in.at < scenario.now - scenario.since:
            refuse(
                ("sign_ins", index, "at"),
                f"{_signed(sign_in.at)} is before the hunt window, which starts "
                f"{_signed(scenario.now - scenario.since)} (now minus since); "
                "move it or lengthen since",
            )
    for index, country in enumerate(scenario.settings.allowed_countries):
        if not re.fullmatch(r"[A-Za-z]{2}", country):
            refuse(
                ("settings", "allowed_countries", index),
                f"{country!r} is not a two-letter country code",
            )
    for index, account in enumerate(scenario.settings.protected_accounts):
        if not (is_upn(account) or is_guid(account)):
            refuse(
                ("settings", "protected_accounts", index),
                f"{account!r} is neither a UPN nor an object id",
            )


Event = ScenarioSignIn | ScenarioEmail | ScenarioClick


def _event_sections(scenario: Scenario) -> list[tuple[str, Sequence[Event]]]:
    return [
        ("sign_ins", scenario.sign_ins),
        ("emails", scenario.emails),
        ("clicks", scenario.clicks),
    ]


def _signed(offset: timedelta) -> str:
    """A relative time as a scenario writes it: ``-9m``, ``+1h30m``, ``0``."""
    seconds = int(offset.total_seconds())
    if seconds == 0:
        return "0"
    sign, rest = ("-" if seconds < 0 else "+"), abs(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, rest = divmod(rest, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return sign + "".join(parts)


def bundled_scenarios() -> list[Path]:
    return sorted(BUNDLED_DIR.glob("*.yaml"))


def find_scenario(name: str) -> Path:
    for path in bundled_scenarios():
        if path.stem == name:
            return path
    known = ", ".join(path.stem for path in bundled_scenarios())
    raise ScenarioError(f"no bundled scenario {name!r} (bundled: {known})")


def check_expected(scenario: Scenario, report: RunReport) -> list[str]:
    """How the run's outcome differs from what the scenario expects; empty if met."""
    problems: list[str] = []
    by_user: dict[str, list[Any]] = {}
    for finding in report.findings:
        by_user.setdefault(finding.user_principal_name.lower(), []).append(finding)

    for expected in scenario.expected.findings:
        upn = scenario.user(expected.user).upn.lower()
        found = by_user.get(upn, [])
        if not found:
            problems.append(f"{upn}: expected a {expected.tier} finding, found none")
            continue
        finding = max(found, key=lambda item: (item.tier.rank, item.score))
        fired = {reason.signal for reason in finding.reasons}
        if finding.tier is not expected.tier:
            problems.append(
                f"{upn}: expected tier {expected.tier}, got {finding.tier} ({finding.score})"
            )
        if expected.score is not None and finding.score != expected.score:
            problems.append(f"{upn}: expected score {expected.score}, got {finding.score}")
        if expected.min_score is not None and finding.score < expected.min_score:
            problems.append(
                f"{upn}: expected a score of at least {expected.min_score}, got {finding.score}"
            )
        if expected.max_score is not None and finding.score > expected.max_score:
            problems.append(
                f"{upn}: expected a score of at most {expected.max_score}, got {finding.score}"
            )
        for signal in sorted(set(expected.reasons) - fired):
            problems.append(f"{upn}: expected reason {signal!r} did not fire")
        for signal in sorted(set(expected.absent_reasons) & fired):
            problems.append(f"{upn}: reason {signal!r} fired but should not")
    expected_users = {scenario.user(e.user).upn.lower() for e in scenario.expected.findings}
    for upn in sorted(set(by_user) - expected_users):
        problems.append(f"{upn}: a finding the scenario does not expect")

    actual = sorted(
        (item.action.value, target.user_principal_name.lower(), item.status.value)
        for item in report.actions
        for target in item.targets
    )
    wanted = sorted(
        (a.action.value, scenario.user(a.user).upn.lower(), a.status.value)
        for a in scenario.expected.actions
    )
    if actual != wanted:
        problems.append(f"expected actions {_show(wanted)}, got {_show(actual)}")
    return problems


def _show(items: Sequence[tuple[str, str, str]]) -> str:
    return "[" + "; ".join(" ".join(item) for item in items) + "]" if items else "none"
