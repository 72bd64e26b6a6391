"""Signals to an explainable score: each signal that fires adds its weight and a
sentence a person can read. Pure: no I/O, no clock.

Every signal is registered by name in :data:`SIGNALS` with the settings it
takes; a playbook names the signals it uses and their weights, and a name not
in the registry is refused when the playbook is loaded.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from playbooks.models import (
    Baseline,
    Evidence,
    FlowEvidence,
    Reason,
    SignIn,
    SignInOutcome,
    Tier,
    TriState,
)
from playbooks.settings import Network, SanctionedUse


@dataclass(frozen=True)
class ScoringContext:
    """What scoring knows beyond the rows: the tenant's lists."""

    threat_networks: tuple[Network, ...] = ()
    # Addresses the workspace's threat-intelligence table lists.
    threat_ips: frozenset[str] = frozenset()
    allowed_countries: tuple[str, ...] = ()
    sanctioned_use: tuple[SanctionedUse, ...] = ()


@dataclass(frozen=True)
class SignalInput:
    sign_in: SignIn
    flow: tuple[SignIn, ...]
    evidence: Evidence
    baseline: Baseline | None
    context: ScoringContext = field(default_factory=ScoringContext)


class SignalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: int = Field(ge=-100, le=100)
    description: str = ""


Evaluate = Callable[[Any, SignalInput], Reason | None]


@dataclass(frozen=True)
class Signal:
    name: str
    config: type[SignalConfig]
    evaluate: Evaluate
    summary: str


SIGNALS: dict[str, Signal] = {}


def signal(name: str, config: type[SignalConfig], summary: str) -> Callable[[Evaluate], Evaluate]:
    def register(evaluate: Evaluate) -> Evaluate:
        SIGNALS[name] = Signal(name=name, config=config, evaluate=evaluate, summary=summary)
        return evaluate

    return register


def _reason(name: str, config: SignalConfig, detail: str, weight: int | None = None) -> Reason:
    return Reason(signal=name, weight=config.weight if weight is None else weight, detail=detail)


# -- the application and the device -------------------------------------------


class HighValueAppConfig(SignalConfig):
    # App id to the name shown in reasons.
    apps: dict[str, str]


@signal("high_value_app", HighValueAppConfig, "a high-value application asked for the code")
def _high_value_app(config: HighValueAppConfig, given: SignalInput) -> Reason | None:
    sign_in = given.sign_in
    apps = {app_id.lower(): name for app_id, name in config.apps.items()}
    names = {name.lower() for name in apps.values()}
    if sign_in.app_id in apps:
        name = sign_in.app_display_name or apps[sign_in.app_id]
    elif sign_in.app_display_name.lower() in names:
        name = sign_in.app_display_name
    else:
        return None
    resource = f" for {sign_in.resource_display_name}" if sign_in.resource_display_name else ""
    return _reason(
        "high_value_app",
        config,
        f"{name} ({sign_in.app_id or 'app id unknown'}) asked for the code{resource}: "
        "its tokens reach mail, files or the directory, which attack kits go for",
    )


class DeviceStateConfig(SignalConfig):
    # Added when the sign-in does not say; device code sign-ins often do not.
    unknown_weight: int = Field(default=0, ge=0, le=100)


@signal("unmanaged_device", DeviceStateConfig, "the device is not managed")
def _unmanaged_device(config: DeviceStateConfig, given: SignalInput) -> Reason | None:
    state = given.sign_in.is_managed
    if state is TriState.FALSE:
        return _reason(
            "unmanaged_device", config, "the device that redeemed the code is not managed"
        )
    if state is TriState.UNKNOWN and config.unknown_weight:
        return _reason(
            "unmanaged_device",
            config,
            "the sign-in does not say whether the device is managed",
            config.unknown_weight,
        )
    return None


@signal("non_compliant_device", DeviceStateConfig, "the device is not compliant")
def _non_compliant_device(config: DeviceStateConfig, given: SignalInput) -> Reason | None:
    # A compliant flag lowers nothing: device code sign-ins have been seen to
    # report the victim's compliant device while the attacker holds the token.
    state = given.sign_in.is_compliant
    if state is TriState.FALSE:
        return _reason(
            "non_compliant_device", config, "the device that redeemed the code is not compliant"
        )
    if state is TriState.UNKNOWN and config.unknown_weight:
        return _reason(
            "non_compliant_device",
            config,
            "the sign-in does not say whether the device is compliant",
            config.unknown_weight,
        )
    return None


# -- risk ------------------------------------------------------------------


class RiskConfig(SignalConfig):
    weight: int = Field(default=0, ge=-100, le=100)
    # Weight per risk level; levels not listed add nothing.
    levels: dict[str, int]


def _risk(name: str, level: str, config: RiskConfig, what: str) -> Reason | None:
    weight = {key.lower(): value for key, value in config.levels.items()}.get(level)
    if not weight:
        return None
    return _reason(name, config, f"Entra ID rated the {what} {level}", weight)


@signal("sign_in_risk", RiskConfig, "Entra ID rated the sign-in risky")
def _sign_in_risk(config: RiskConfig, given: SignalInput) -> Reason | None:
    return _risk("sign_in_risk", given.sign_in.risk_level_during_sign_in, config, "sign-in risk")


@signal("aggregated_risk", RiskConfig, "Entra ID rated the user risky")
def _aggregated_risk(config: RiskConfig, given: SignalInput) -> Reason | None:
    return _risk("aggregated_risk", given.sign_in.risk_level_aggregated, config, "aggregated risk")


class RiskEventConfig(SignalConfig):
    events: list[str]


@signal("anonymous_ip_risk", RiskEventConfig, "Entra ID saw an anonymising network")
def _anonymous_ip_risk(config: RiskEventConfig, given: SignalInput) -> Reason | None:
    wanted = {event.lower() for event in config.events}
    seen = sorted(event for event in given.sign_in.risk_event_types if event.lower() in wanted)
    if not seen:
        return None
    return _reason(
        "anonymous_ip_risk", config, f"Entra ID flagged the sign-in with {', '.join(seen)}"
    )


# -- where it came from --------------------------------------------------------


class BaselineConfig(SignalConfig):
    # A baseline of fewer sign-ins than this is too thin to call anything unusual.
    min_sign_ins: int = Field(default=3, ge=1)


@signal("unusual_country", BaselineConfig, "the country is not in the user's baseline")
def _unusual_country(config: BaselineConfig, given: SignalInput) -> Reason | None:
    country, baseline = given.sign_in.country, given.baseline
    if not country or baseline is None or baseline.sign_ins < config.min_sign_ins:
        return None
    if country in baseline.countries:
        return None
    usual = ", ".join(baseline.countries) or "none recorded"
    return _reason(
        "unusual_country",
        config,
        f"{country} is not among the countries of the user's {baseline.sign_ins} sign-ins "
        f"in the previous {baseline.days} days ({usual})",
    )


@signal("country_not_allowed", SignalConfig, "the country is not in the allowed list")
def _country_not_allowed(config: SignalConfig, given: SignalInput) -> Reason | None:
    allowed = given.context.allowed_countries
    country = given.sign_in.country
    if not allowed or not country or country in allowed:
        return None
    return _reason(
        "country_not_allowed",
        config,
        f"{country} is not among the allowed countries ({', '.join(allowed)})",
    )


@signal("threat_intel_ip", SignalConfig, "the address is on a threat-intelligence list")
def _threat_intel_ip(config: SignalConfig, given: SignalInput) -> Reason | None:
    address = given.sign_in.ip_address
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    if str(parsed) in given.context.threat_ips:
        return _reason(
            "threat_intel_ip", config, f"{address} is in the workspace's threat-intelligence table"
        )
    for network in given.context.threat_networks:
        if parsed.version == network.version and parsed in network:
            return _reason(
                "threat_intel_ip",
                config,
                f"{address} is in {network}, a configured threat-intelligence range "
                "(such as Tor exit nodes)",
            )
    return None


class UserAgentConfig(SignalConfig):
    # Case-insensitive regular expressions.
    patterns: list[str]

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern, flags=re.IGNORECASE)
            except re.error as failure:
                raise ValueError(f"not a regular expression: {pattern!r} ({failure})") from None
        return patterns


@signal("scripted_user_agent", UserAgentConfig, "a script, not a browser, redeemed the code")
def _scripted_user_agent(config: UserAgentConfig, given: SignalInput) -> Reason | None:
    agent = given.sign_in.user_agent
    for pattern in config.patterns:
        if re.search(pattern, agent, flags=re.IGNORECASE):
            return _reason(
                "scripted_user_agent",
                config,
                f"the user agent {agent!r} is a scripting client, not a browser",
            )
    return None


# -- the lure: clicks and mail -------------------------------------------------


@signal("url_click_before", SignalConfig, "the user clicked a link shortly before")
def _url_click_before(config: SignalConfig, given: SignalInput) -> Reason | None:
    reached = [click for click in given.evidence.url_clicks if click.reached]
    if not reached:
        return None
    click = min(reached, key=lambda item: abs(item.minutes_before_sign_in))
    return _reason(
        "url_click_before",
        config,
        f"the user opened {click.url} {_relative(click.minutes_before_sign_in)} the sign-in"
        f" (Safe Links: {', '.join(click.action_types) or 'no action recorded'},"
        f" via {click.workload or 'unknown workload'})",
    )


class UrlPatternConfig(SignalConfig):
    urls: list[str]


@signal(
    "click_to_device_login", UrlPatternConfig, "the clicked link leads to the device login page"
)
def _click_to_device_login(config: UrlPatternConfig, given: SignalInput) -> Reason | None:
    patterns = [_normal_url(url) for url in config.urls]
    for click in given.evidence.url_clicks:
        for url in (click.url, *click.url_chain):
            normal = _normal_url(url)
            if any(normal == pattern or normal.startswith(pattern) for pattern in patterns):
                return _reason(
                    "click_to_device_login",
                    config,
                    f"the clicked link {'is' if url == click.url else 'redirects to'} {url}, "
                    "where a device code is entered",
                )
    return None


class LureHostConfig(SignalConfig):
    hosts: list[str]


@signal("click_lure_host", LureHostConfig, "the clicked link is on a host phishing kits use")
def _click_lure_host(config: LureHostConfig, given: SignalInput) -> Reason | None:
    suffixes = [host.lower().lstrip(".") for host in config.hosts]
    for click in given.evidence.url_clicks:
        for url in (click.url, *click.url_chain):
            host = _host(url)
            for suffix in suffixes:
                if host == suffix or host.endswith("." + suffix):
                    return _reason(
                        "click_lure_host",
                        config,
                        f"the clicked link is on {host}, a {suffix} host that "
                        "device code phishing kits use for lure pages",
                    )
    return None


@signal("clicked_through_warning", SignalConfig, "the user clicked through a Safe Links warning")
def _clicked_through_warning(config: SignalConfig, given: SignalInput) -> Reason | None:
    for click in given.evidence.url_clicks:
        if click.is_clicked_through:
            return _reason(
                "clicked_through_warning",
                config,
                f"the user clicked through a Safe Links warning on {click.url}",
            )
    return None


class EmailThreatConfig(SignalConfig):
    threat_types: list[str]


@signal("phishing_email", EmailThreatConfig, "a mail Defender flagged as phishing arrived")
def _phishing_email(config: EmailThreatConfig, given: SignalInput) -> Reason | None:
    wanted = [threat.lower() for threat in config.threat_types]
    for email in given.evidence.emails:
        flagged = email.threat_types.lower()
        if any(threat in flagged for threat in wanted):
            return _reason(
                "phishing_email",
                config,
                f"Defender flagged {_mail(email.subject, email.sender_from_address)} as "
                f"{email.threat_types}; it was {_delivered(email.delivery_action)} "
                f"{_relative(email.minutes_before_sign_in)} the sign-in",
            )
    return None


@signal("lure_email", SignalConfig, "the clicked link came in a mail")
def _lure_email(config: SignalConfig, given: SignalInput) -> Reason | None:
    clicked = {
        click.network_message_id
        for click in given.evidence.url_clicks
        if click.reached and click.network_message_id
    }
    for email in given.evidence.emails:
        if email.network_message_id in clicked:
            return _reason(
                "lure_email",
                config,
                f"the clicked link came in {_mail(email.subject, email.sender_from_address)}, "
                f"delivered {_relative(email.minutes_before_sign_in)} the sign-in",
            )
    return None


@signal("suspicious_email", SignalConfig, "an outside mail with links arrived just before")
def _suspicious_email(config: SignalConfig, given: SignalInput) -> Reason | None:
    for email in given.evidence.emails:
        inbound = email.email_direction.lower() == "inbound"
        has_links = (email.url_count or 0) > 0
        if inbound and has_links and email.minutes_before_sign_in >= 0:
            return _reason(
                "suspicious_email",
                config,
                f"{_mail(email.subject, email.sender_from_address)} from outside the "
                f"organisation, with links, arrived {_relative(email.minutes_before_sign_in)} "
                "the sign-in",
            )
    return None


@signal("ip_differs_from_click", SignalConfig, "the code was redeemed from another address")
def _ip_differs_from_click(config: SignalConfig, given: SignalInput) -> Reason | None:
    # A bonus only: the victim's browser and the attacker's client often share
    # an address in the logs, so a difference is never required.
    sign_in_ip = given.sign_in.ip_address
    for click in given.evidence.url_clicks:
        if click.reached and click.ip_address and sign_in_ip and click.ip_address != sign_in_ip:
            return _reason(
                "ip_differs_from_click",
                config,
                f"the code was redeemed from {sign_in_ip}, the link was opened from "
                f"{click.ip_address}",
            )
    return None


# -- history and the token's use -----------------------------------------------


@signal("first_device_code_use", SignalConfig, "the user has not used device code before")
def _first_device_code_use(config: SignalConfig, given: SignalInput) -> Reason | None:
    baseline = given.baseline
    if baseline is not None and baseline.device_code_sign_ins:
        return None
    days = baseline.days if baseline is not None else 30
    return _reason(
        "first_device_code_use",
        config,
        f"the user has no device code sign-in in the previous {days} days",
    )


class BurstConfig(SignalConfig):
    min_resources: int = Field(default=2, ge=1)
    within_minutes: int = Field(default=30, ge=1)


@signal("token_burst", BurstConfig, "the token was used for several resources within minutes")
def _token_burst(config: BurstConfig, given: SignalInput) -> Reason | None:
    start = given.sign_in.time
    later = [
        row
        for row in given.flow
        if row.flow_evidence is FlowEvidence.TRANSFER_METHOD
        and row.outcome is SignInOutcome.SUCCESS
        and 0 <= (row.time - start).total_seconds() <= config.within_minutes * 60
    ]
    resources = sorted({row.resource_display_name or row.app_id for row in later} - {""})
    if len(resources) < config.min_resources:
        return None
    return _reason(
        "token_burst",
        config,
        f"the token from this flow was used {len(later)} times within "
        f"{config.within_minutes} minutes for {', '.join(resources)}",
    )


class OutcomeConfig(SignalConfig):
    interrupted_weight: int = Field(default=0, ge=-100, le=100)


@signal("sign_in_not_successful", OutcomeConfig, "no token was issued")
def _sign_in_not_successful(config: OutcomeConfig, given: SignalInput) -> Reason | None:
    if any(row.outcome is SignInOutcome.SUCCESS for row in given.flow):
        return None
    sign_in = given.sign_in
    description = f" ({sign_in.result_description})" if sign_in.result_description else ""
    if sign_in.outcome is SignInOutcome.INTERRUPTED:
        return _reason(
            "sign_in_not_successful",
            config,
            f"the flow stopped at error {sign_in.result_type}{description} and no token was issued",
            config.interrupted_weight,
        )
    return _reason(
        "sign_in_not_successful",
        config,
        f"the sign-in failed with error {sign_in.result_type}{description}: no token was issued",
    )


@signal("sanctioned_use", SignalConfig, "the device code use is on the sanctioned list")
def _sanctioned_use(config: SignalConfig, given: SignalInput) -> Reason | None:
    entry = matching_sanctioned_use(given.sign_in, given.context.sanctioned_use)
    if entry is None:
        return None
    return _reason(
        "sanctioned_use", config, f"this device code use matches the sanctioned use {entry.name!r}"
    )


def matching_sanctioned_use(
    sign_in: SignIn, entries: Sequence[SanctionedUse]
) -> SanctionedUse | None:
    """The first entry whose users, apps and ranges all match the sign-in."""
    for entry in entries:
        if entry.users and not _names_user(entry.users, sign_in):
            continue
        if entry.apps and not _names_app(entry.apps, sign_in):
            continue
        if entry.ip_ranges and not _in_ranges(sign_in.ip_address, entry.ip_ranges):
            continue
        return entry
    return None


# -- the score -------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    value: int
    tier: Tier
    reasons: tuple[Reason, ...]


def score(
    given: SignalInput,
    signals: dict[str, SignalConfig],
    *,
    high: int,
    medium: int,
) -> Score:
    """Add up every signal that fires; clamp to 0..100; pick the tier."""
    reasons = []
    for name, config in signals.items():
        reason = SIGNALS[name].evaluate(config, given)
        if reason is not None and reason.weight:
            reasons.append(reason)
    total = max(0, min(100, sum(reason.weight for reason in reasons)))
    tier = Tier.HIGH if total >= high else Tier.MEDIUM if total >= medium else Tier.LOW
    ordered = sorted(reasons, key=lambda reason: (-reason.weight, reason.signal))
    return Score(value=total, tier=tier, reasons=tuple(ordered))


def _names_user(users: Sequence[str], sign_in: SignIn) -> bool:
    wanted = {user.lower() for user in users}
    return sign_in.user_key in wanted or sign_in.user_id.lower() in wanted


def _names_app(apps: Sequence[str], sign_in: SignIn) -> bool:
    wanted = {app.lower() for app in apps}
    return sign_in.app_id in wanted or sign_in.app_display_name.lower() in wanted


def _in_ranges(address: str, ranges: Sequence[Network]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed.version == net.version and parsed in net for net in ranges)


def _normal_url(url: str) -> str:
    lowered = url.strip().lower()
    lowered = re.sub(r"^[a-z][a-z0-9+.-]*://", "", lowered)
    lowered = lowered.removeprefix("www.")
    return lowered.rstrip("/")


def _host(url: str) -> str:
    candidate = url.strip()
    if "://" not in candidate:
        candidate = "https://" + candidate
    try:
        return (urlsplit(candidate).hostname or "").lower()
    except ValueError:
        return ""


def _relative(minutes_before: float) -> str:
    if minutes_before >= 0:
        return f"{_amount(minutes_before)} before"
    return f"{_amount(-minutes_before)} after"


def _amount(minutes: float) -> str:
    if minutes < 1:
        return f"{round(minutes * 60)} seconds"
    rounded = round(minutes, 1)
    shown = int(rounded) if rounded == int(rounded) else rounded
    return f"{shown} minute{'' if shown == 1 else 's'}"


def _mail(subject: str, sender: str) -> str:
    quoted = f"the mail {subject!r}" if subject else "a mail"
    return f"{quoted} from {sender}" if sender else quoted


def _delivered(action: str) -> str:
    return action.lower() if action else "delivered"
