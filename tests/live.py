"""Helpers for live-source tests: a run against the emulator through the real SDKs."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from connectors.clients import Clients
from connectors.credentials import build_credential
from connectors.live import live_source
from playbooks.audit import AuditLog
from playbooks.engine import Runner, RunRequest
from playbooks.exercises import find_scenario, load_scenario
from playbooks.models import Mode, RunReport, Window
from playbooks.playbook import Playbook, load_playbook
from playbooks.settings import Settings, settings_from_dict
from tests.emulator import ENVIRON, settings_data

NOW = datetime.fromisoformat("2026-01-15T12:00:00+00:00")


@dataclass
class LiveRun:
    report: RunReport
    audit: AuditLog

    def records(self, kind: str | None = None) -> list[Any]:
        return [r for r in self.audit.records() if kind is None or r.kind == kind]


def live_settings(emu: Any, **sections: Any) -> Settings:
    return settings_from_dict(settings_data(emu, **sections), environ=ENVIRON)


def run_live(
    emu: Any,
    audit: AuditLog,
    *,
    mode: str = "log_analytics",
    settings: Settings | None = None,
    playbook: Playbook | None = None,
    users: tuple[str, ...] = (),
    start: datetime | None = None,
    end: datetime | None = None,
) -> LiveRun:
    """One dry-run hunt with every table from *mode* (or ``live``: per settings)."""
    chosen = settings or live_settings(emu)
    book = playbook or load_playbook()
    window = Window(start=start or NOW - timedelta(hours=12), end=end or NOW)

    async def run() -> RunReport:
        async with Clients(chosen.azure, build_credential(chosen.azure)) as clients:
            source = live_source(chosen, clients, mode=mode)
            request = RunRequest(
                trigger="test", mode=Mode.DRY_RUN, window=window, now=NOW, users=users
            )
            return await Runner(book, chosen, source, audit).run(request)

    return LiveRun(asyncio.run(run()), audit)


# -- a tenant of N phished users ------------------------------------------------

SEED_USER = "target.user@contoso.com"
TOR_EXIT = "185.220.101.47"


def _id(*parts: object) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(str(p) for p in parts)))


def phished_tenant(users: int, *, history: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """The seed's true positive, happening to *users* people, with the follow-on
    activity of the first one's stolen token and the Tor exit in threat intel.

    *history* keeps only that many of each user's earlier sign-ins (the
    baseline), to keep a tenant of hundreds quick to load and query.
    """
    seed = load_scenario(find_scenario("seed-true-positive")).tables()
    if history is not None:
        earlier = [r for r in seed["SigninLogs"] if r.get("AuthenticationProtocol") != "deviceCode"]
        seed["SigninLogs"] = earlier[-history:] + [
            r for r in seed["SigninLogs"] if r.get("AuthenticationProtocol") == "deviceCode"
        ]
    tables: dict[str, list[dict[str, Any]]] = {name: [] for name in seed}
    for number in range(users):
        upn = f"user{number:03d}@contoso.com"
        user_id = _id("user", number)
        for name, rows in seed.items():
            for row in rows:
                item = copy.deepcopy(row)
                for key, value in list(item.items()):
                    if value == SEED_USER:
                        item[key] = upn
                    elif key in ("UserId", "RecipientObjectId") and value:
                        item[key] = user_id
                    elif (
                        key in ("Id", "CorrelationId", "NetworkMessageId", "ReportId", "SessionId")
                        and value
                    ):
                        item[key] = _id(key, number, value)
                if name == "SigninLogs" and item.get("AuthenticationProtocol") == "deviceCode":
                    item["UniqueTokenIdentifier"] = _id("uti", number)
                tables[name].append(item)

    phish = next(
        r
        for r in tables["SigninLogs"]
        if r["UserPrincipalName"] == "user000@contoso.com"
        and r.get("AuthenticationProtocol") == "deviceCode"
    )
    tables["MicrosoftGraphActivityLogs"] = [
        {
            "TimeGenerated": f"2026-01-15T09:31:0{second}Z",
            "RequestId": _id("graph", second),
            "RequestMethod": method,
            "RequestUri": uri,
            "ResponseStatusCode": 200,
            "IPAddress": TOR_EXIT,
            "UserAgent": "python-requests/2.28.0",
            "SignInActivityId": phish["UniqueTokenIdentifier"],
            "AppId": "04b07795-8ddb-461a-bbee-02f9e1bf7b46",
            "UserId": phish["UserId"],
        }
        for second, (method, uri) in enumerate(
            [
                ("GET", "https://graph.microsoft.com/v1.0/me/messages?$top=50"),
                ("GET", "https://graph.microsoft.com/v1.0/me/mailFolders/inbox/messages"),
                ("GET", "https://graph.microsoft.com/v1.0/me/drive/root/children"),
                ("GET", "https://graph.microsoft.com/v1.0/users?$select=mail"),
            ]
        )
    ]
    tables["AADNonInteractiveUserSignInLogs"] = [
        {
            "TimeGenerated": "2026-01-15T09:40:00Z",
            "Id": _id("ni", 1),
            "UserPrincipalName": phish["UserPrincipalName"],
            "UserId": phish["UserId"],
            "AppDisplayName": "Microsoft Azure CLI",
            "ResourceDisplayName": "Microsoft Graph",
            "AuthenticationProtocol": "none",
            "IsInteractive": False,
            "ResultType": "0",
            "IPAddress": TOR_EXIT,
            "LocationDetails": '{"countryOrRegion": "NL"}',
            "SessionId": phish["SessionId"],
        }
    ]
    tables["ThreatIntelligenceIndicator"] = [
        {
            "TimeGenerated": "2026-01-10T00:00:00Z",
            "IndicatorId": "tor-exit-1",
            "NetworkIP": TOR_EXIT,
            "ThreatType": "anonymization",
            "Description": "Tor exit node",
            "ConfidenceScore": 90,
            "Active": True,
            "ExpirationDateTime": "2026-03-01T00:00:00Z",
        }
    ]
    return tables


def toml_text(data: dict[str, Any]) -> str:
    """Settings as a TOML file (strings, numbers, booleans, nested tables)."""
    lines: list[str] = []

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | float):
            return repr(item)
        if isinstance(item, dict):
            return "{ " + ", ".join(f"{k} = {value(v)}" for k, v in item.items()) + " }"
        if isinstance(item, list | tuple):
            return "[" + ", ".join(value(v) for v in item) + "]"
        return json.dumps(str(item))

    def table(name: str, values: dict[str, Any]) -> None:
        plain = {k: v for k, v in values.items() if not (isinstance(v, dict) and k != "tables")}
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {value(v)}" for k, v in plain.items() if v is not None)
        for key, nested in values.items():
            if isinstance(nested, dict) and key != "tables":
                table(f"{name}.{key}", nested)

    for name, values in data.items():
        table(name, values)
    return "\n".join(lines) + "\n"
