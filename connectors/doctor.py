"""``tokenward doctor``: can tokenward sign in, and does the workspace answer?

Each check says what it tried, what came back and what to change. Tokens are
decoded (never verified, never shown) to list the application roles the
identity holds; what those roles must include is the business of
:data:`ROLE_CHECKS`, where each connector that needs a permission adds a check.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from connectors.clients import Clients
from connectors.credentials import SigningIn
from connectors.live import LiveMode, live_source
from playbooks.errors import ConnectorError
from playbooks.models import RunStatus, Window
from playbooks.ports import RenderedQuery
from playbooks.settings import Settings, SourceKind
from playbooks.times import utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""


@dataclass(frozen=True)
class TokenClaims:
    """What a token says about the identity, read without verifying it."""

    service: str
    audience: str
    app_id: str
    tenant_id: str
    roles: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


#: Checks of what a token's roles allow: (service, claims) -> checks. The Graph
#: responder adds the permissions its actions need here (User.RevokeSessions.All
#: for revoke, ...), so doctor refuses an identity that could hunt but not act.
RoleCheck = Callable[[TokenClaims], Sequence[Check]]
ROLE_CHECKS: list[RoleCheck] = []


def decode_claims(service: str, token: str) -> TokenClaims:
    """The claims of a JWT access token; empty claims for an opaque token."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        claims = {}
    if not isinstance(claims, dict):
        claims = {}
    return TokenClaims(
        service=service,
        audience=str(claims.get("aud", "")),
        app_id=str(claims.get("appid") or claims.get("azp") or ""),
        tenant_id=str(claims.get("tid", "")),
        roles=tuple(str(role) for role in claims.get("roles") or ()),
        raw=claims,
    )


async def run_doctor(
    settings: Settings,
    clients: Clients,
    *,
    tables: Mapping[SourceKind, Sequence[str]],
    role_checks: Sequence[RoleCheck] | None = None,
) -> list[Check]:
    """Every check, in order; a failed token check skips that service's query check.

    *tables* are the tables the playbook reads, by the source each is read from.
    """
    checks: list[Check] = []
    endpoints = clients.endpoints
    services = {
        SourceKind.LOG_ANALYTICS: ("Log Analytics", endpoints.log_analytics_scope),
        # Graph is needed for Defender hunting and for every containment action.
        SourceKind.DEFENDER: ("Microsoft Graph", endpoints.graph_scope),
    }
    wanted = [SourceKind.DEFENDER]
    if tables.get(SourceKind.LOG_ANALYTICS) or settings.log_analytics.workspace_id:
        wanted.insert(0, SourceKind.LOG_ANALYTICS)

    for kind in wanted:
        title, scope = services[kind]
        claims = await _token(clients.credential, title, scope, checks)
        if claims is None:
            continue
        for check in role_checks if role_checks is not None else ROLE_CHECKS:
            checks.extend(check(claims))
        if tables.get(kind):
            checks.extend(await _tables_answer(settings, clients, kind, tables[kind]))
    return checks


async def _token(
    credential: Any, title: str, scope: str, checks: list[Check]
) -> TokenClaims | None:
    identity = (
        getattr(credential, "identity", "the configured identity")
        if isinstance(credential, SigningIn)
        else "the configured identity"
    )
    try:
        token = await credential.get_token(scope)
    except ConnectorError as failure:
        checks.append(
            Check(
                f"{title} token",
                False,
                str(failure),
                "check [azure.credential], azure.tenant_id and azure.authority_host",
            )
        )
        return None
    claims = decode_claims(title, token.token)
    roles = ", ".join(claims.roles) if claims.roles else "none"
    checks.append(
        Check(
            f"{title} token",
            True,
            f"{identity} got a token for {claims.audience or scope} "
            f"(app {claims.app_id or '?'}, tenant {claims.tenant_id or '?'}); roles: {roles}",
        )
    )
    return claims


async def _tables_answer(
    settings: Settings, clients: Clients, kind: SourceKind, tables: Sequence[str]
) -> list[Check]:
    mode: LiveMode = "log_analytics" if kind is SourceKind.LOG_ANALYTICS else "defender"
    title = (
        "Log Analytics workspace"
        if kind is SourceKind.LOG_ANALYTICS
        else "Defender advanced hunting"
    )
    try:
        source = live_source(settings, clients, mode=mode)
    except Exception as failure:  # a SettingsError: no workspace id
        return [Check(title, False, str(failure))]
    now = utcnow()
    window = Window(start=now - timedelta(days=1), end=now)
    queries = [
        RenderedQuery(
            name=table,
            tables=(table,),
            text=f"{table}\n| take 1\n| count",
            window=window,
        )
        for table in tables
    ]
    try:
        outcomes = await source.run_queries(queries)
    except ConnectorError as failure:
        return [Check(title, False, str(failure))]
    checks = []
    for outcome in outcomes:
        if outcome.status is RunStatus.FAILED:
            missing = (
                "resolve" in (outcome.error or "").lower()
                or "unknown table" in (outcome.error or "").lower()
            )
            checks.append(
                Check(
                    f"{title}: {outcome.name}",
                    False,
                    outcome.error or "failed",
                    f"{outcome.name} is not readable there: connect its data source or route "
                    f"it to the other source in [sources.tables]"
                    if missing
                    else "",
                )
            )
        else:
            checks.append(
                Check(
                    f"{title}: {outcome.name}",
                    True,
                    f"{source.description} answers for {outcome.name}",
                )
            )
    return checks
